"""Log-mel features, the LH and X views and the cached feature store (recipes: :mod:`soundtag.recipe`).

Names are imported on first use (PEP 562), so that the PyTorch-free parts (recipes, views,
the NumPy log-mel) load without PyTorch: the ONNX Runtime engine tags files without it.
"""

from importlib import import_module

_HOMES = {
    "ExtractionSummary": "extract",
    "Failure": "extract",
    "extract_features": "extract",
    "LogMel": "melspec",
    "log_mel": "melspec",
    "recipe_log_mel": "melspec",
    "n_frames": "numpy_melspec",
    "NumpyLogMel": "numpy_melspec",
    "mel_params": "numpy_melspec",
    "FeatureStore": "store",
    "clip_key": "store",
    "chunk_starts": "views",
    "decode_for_recipe": "views",
    "eval_chunks": "views",
    "feature_stats": "views",
    "x_chunks": "views",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'soundtag.features' has no attribute {name!r}")
    value = getattr(import_module(f"soundtag.features.{_HOMES[name]}"), name)
    globals()[name] = value
    return value
