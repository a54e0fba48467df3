"""Models: a registry, a factory, and the recipe's CNNs."""

from soundtag.models import efficientat as _efficientat  # noqa: F401  (registers efficientat-mn04, -mn10, -mn40)
from soundtag.models import kernels as _kernels  # noqa: F401  (registers the built-in models)
from soundtag.models import panns as _panns  # noqa: F401  (registers panns-cnn14, -16k, -dlm)
from soundtag.models import plain as _plain  # noqa: F401  (registers plain-cnn, the baseline)
from soundtag.models.registry import create_model, list_models, load_weights, register_model

__all__ = ["create_model", "list_models", "load_weights", "register_model"]
