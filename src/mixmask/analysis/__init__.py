"""Analyses of what a network learnt, beyond its accuracy: multi-order interactions (``interactions``)."""
