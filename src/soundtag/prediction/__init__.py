"""Use trained runs: predict datasets, blend runs, write submissions, tag files, export to ONNX.

Names are imported on first use, so that tagging with ONNX Runtime never loads PyTorch. The
models themselves are run by :mod:`soundtag.inference`, whose main names are offered here too.
"""

from importlib import import_module

_HOMES = {
    "geometric_mean": "soundtag.inference.combine",
    "combine_folds": "soundtag.inference.combine",
    "fit_blend_weights": "combine",
    "Predictions": "predictions",
    "read_predictions": "predictions",
    "predict_dataset": "predict",
    "PredictResult": "predict",
    "ensemble_runs": "ensemble",
    "EnsembleResult": "ensemble",
    "write_submission": "submit",
    "submission_format": "submit",
    "load_tagger": "tagger",
    "tag_files": "tagger",
    "ClipTags": "tagger",
    "TagFailure": "tagger",
    "export_onnx": "export",
    "embed_clips": "embed",
    "write_embeddings": "embed",
    "FoldEnsemble": "soundtag.inference.fold_models",
    "load_run": "soundtag.inference.fold_models",
    "load_pretrained": "soundtag.inference.fold_models",
    "render_tags": None,
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'soundtag.prediction' has no attribute {name!r}")
    home = _HOMES[name]
    value = (
        import_module(f"soundtag.prediction.{name}")
        if home is None
        else getattr(import_module(home if "." in home else f"soundtag.prediction.{home}"), name)
    )
    globals()[name] = value
    return value
