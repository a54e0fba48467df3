"""Log-mel features, the LH and X views, recipes and the cached feature store."""

from soundtag.features.extract import ExtractionSummary, Failure, decode_for_recipe, extract_features
from soundtag.features.melspec import LogMel, log_mel, n_frames
from soundtag.features.recipe import Recipe, list_recipes, load_recipe
from soundtag.features.store import FeatureStore, clip_key
from soundtag.features.views import (
    chunk_starts,
    feature_stats,
    normalize_per_feature,
    normalize_per_sample,
    x_chunks,
)

__all__ = [
    "ExtractionSummary", "Failure", "FeatureStore", "LogMel", "Recipe", "chunk_starts", "clip_key",
    "decode_for_recipe", "extract_features", "feature_stats", "list_recipes", "load_recipe", "log_mel",
    "n_frames", "normalize_per_feature", "normalize_per_sample", "x_chunks",
]
