"""Analyses of what a network learnt, beyond its accuracy: multi-order interactions (``interactions``) and the
frequency and variance of its feature maps (``frequency``)."""
