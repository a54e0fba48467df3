"""An ensemble directory read as a run: what ``soundtag train`` leaves when it trains the LH and
the X view, and what ``soundtag ensemble`` writes.

:class:`BlendedRun` answers what evaluation, cleaning and prediction ask of a run (its clips,
its recipe, its out-of-fold predictions, where its reports go) from its member runs: the
out-of-fold probabilities are the weighted geometric mean of theirs, the same combination
tagging and prediction use. :func:`open_run` gives a :class:`~soundtag.runs.RunDir` or a
:class:`BlendedRun`, whichever the folder is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from soundtag.errors import DataError
from soundtag.inference.combine import geometric_mean
from soundtag.runs import EnsembleDir, OutOfFold, RunDir

__all__ = ["BlendedRun", "open_run"]


class BlendedRun:
    """The runs of an ensemble directory, blended, with the read side of :class:`RunDir`.

    Parameters
    ----------
    path : an ensemble directory (``ensemble.json``)
    """

    def __init__(self, path: str | Path):
        self.ensemble = EnsembleDir(path)
        self.path = self.ensemble.path

    def __repr__(self) -> str:
        return f"BlendedRun({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    def members(self) -> list[tuple[RunDir, float]]:
        """Every run of the blend and its weight."""
        return [(RunDir(path), weight) for path, weight in self.ensemble.members()]

    def runs(self) -> list[RunDir]:
        return [run for run, _ in self.members()]

    def require(self) -> "BlendedRun":
        for run in self.runs():
            run.require()
        return self

    def require_complete(self) -> "BlendedRun":
        for run in self.runs():
            run.require_complete()
        return self

    def recipe(self):
        """The first run's recipe (the LH view's, in a run ``soundtag train`` blended)."""
        return self.runs()[0].recipe()

    def recipes(self) -> list:
        return [run.recipe() for run in self.runs()]

    def manifest(self):
        return self.runs()[0].manifest()

    def info(self) -> dict:
        return self.ensemble.info()

    def dataset_name(self) -> str:
        return self.runs()[0].dataset_name()

    def data_source(self) -> str | None:
        return self.runs()[0].data_source()

    def cache_dir(self) -> Path:
        return self.runs()[0].cache_dir()

    def finished_folds(self) -> list[int]:
        done = [set(run.finished_folds()) for run in self.runs()]
        return sorted(set.intersection(*done))

    def unfinished_folds(self) -> list[int]:
        return sorted({k for run in self.runs() for k in run.unfinished_folds()})

    def fold_metric_logs(self) -> dict:
        """None at this level: each run keeps its own folds' logs and learning curves."""
        return {}

    def out_of_fold(self, *, partial: bool = False) -> OutOfFold:
        """The weighted geometric mean of the runs' out-of-fold probabilities, in the first run's
        clip order; a clip blacklisted in any run counts as blacklisted."""
        members = self.members()
        oofs = [run.out_of_fold(partial=partial) for run, _ in members]
        base = oofs[0]
        ids = base.manifest.ids
        stack, in_training = [base.probs], base.in_training.copy()
        for (run, _), oof in zip(members[1:], oofs[1:]):
            if sorted(oof.manifest.ids) != sorted(ids) or list(oof.manifest.labels) != list(base.manifest.labels):
                raise DataError(
                    f"{self.path}: {run.path} predicts other clips or labels than {members[0][0].path}; "
                    "the runs of a blend must be runs of the same dataset with the same finished folds"
                )
            row = {c: i for i, c in enumerate(oof.manifest.ids)}
            order = [row[c] for c in ids]
            stack.append(oof.probs[order])
            in_training &= oof.in_training[order]
        weights = np.array([w for _, w in members], dtype=float)
        probs = geometric_mean(np.stack(stack), weights=weights, multilabel=base.manifest.multilabel)
        return OutOfFold(
            base.manifest,
            probs.astype(np.float32),
            base.folds,
            in_training,
            sorted(set.intersection(*(set(o.finished) for o in oofs))),
            all(o.complete for o in oofs),
        )

    oof_csv = RunDir.oof_csv
    metrics_file = RunDir.metrics_file
    confusion_png = RunDir.confusion_png
    learning_curves_png = RunDir.learning_curves_png
    suspects_csv = RunDir.suspects_csv
    predictions_dir = RunDir.predictions_dir
    predictions_file = RunDir.predictions_file
    prediction_files = RunDir.prediction_files


def open_run(path: str | Path) -> RunDir | BlendedRun:
    """A :class:`BlendedRun` for an ensemble directory, else a :class:`~soundtag.runs.RunDir`."""
    if isinstance(path, (RunDir, BlendedRun)):
        return path
    if EnsembleDir(path).is_ensemble():
        return BlendedRun(path)
    return RunDir(path)
