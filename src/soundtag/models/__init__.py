"""Models: a registry, a factory, and the recipe's CNNs."""

from soundtag.models import kernels as _kernels  # noqa: F401  (registers the built-in models)
from soundtag.models import plain as _plain  # noqa: F401  (registers plain-cnn, the baseline)
from soundtag.models.registry import create_model, list_models, load_weights, register_model

__all__ = ["create_model", "list_models", "load_weights", "register_model"]
