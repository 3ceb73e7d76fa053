"""kdistill: knowledge distillation of image classifiers in PyTorch."""

__version__ = "0.1.0"
