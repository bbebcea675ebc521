"""gradsift: find the training samples that hurt a model from its per-sample gradients."""

__version__ = "0.1.0"
