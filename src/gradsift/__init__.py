"""gradsift: find the training samples that hurt a model from its per-sample gradients."""

from gradsift.resolvers import register as _register_resolvers

__version__ = "0.1.0"

_register_resolvers()
