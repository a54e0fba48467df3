"""Cross-validated training: splits, class balance, batch augmentation, the Lightning loop."""

from soundtag.hardware import Hardware
from soundtag.training.evaluate import evaluate_run
from soundtag.training.run import RunResult, resume, train
from soundtag.training.splits import label_matrix, make_folds, validation_mask

__all__ = ["Hardware", "RunResult", "evaluate_run", "label_matrix", "make_folds", "resume", "train", "validation_mask"]
