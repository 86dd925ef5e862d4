"""mixmask: masked image modeling with free and mixed masking, and robustness evaluations."""

__version__ = "0.1.0"
