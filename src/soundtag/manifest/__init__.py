"""Dataset manifests: one record type for every source, and readers for the common layouts."""

from soundtag.manifest.core import Clip, Manifest, ManifestError, Problem
from soundtag.manifest.readers import (
    FSDKAGGLE2018_LABELS,
    detect_layout,
    get_layout,
    list_layouts,
    open_dataset,
    read_manifest,
    register_layout,
)

__all__ = [
    "Clip",
    "Manifest",
    "ManifestError",
    "Problem",
    "FSDKAGGLE2018_LABELS",
    "detect_layout",
    "get_layout",
    "list_layouts",
    "open_dataset",
    "read_manifest",
    "register_layout",
]
