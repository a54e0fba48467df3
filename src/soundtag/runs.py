"""The run directory and the ensemble directory: the one place that knows their files.

Every stage after training (evaluation, prediction, cleaning, ensembling, tagging, export,
merging fold jobs) asks :class:`RunDir` or :class:`EnsembleDir` for what it needs; no other
module spells a file name of theirs.

Layout of a run directory::

    run.json            what made the run (recipe name, data, feature cache, versions)
    recipe.yaml         the fully resolved recipe
    manifest.jsonl      the clips, labels after relabelling
    folds.csv           clip_id, fold, in_training (false for blacklisted clips)
    fold-K/             best.ckpt, last.ckpt, logs/metrics.csv, tb/, oof.npy, done.json
    oof.csv             clip_id, fold, labels, verified, blacklisted, one probability per class
    metrics.json        evaluation of the out-of-fold predictions
    confusion.png, learning_curves.png
    suspects.csv        ``soundtag suspects``
    predictions/        ``soundtag predict``: one CSV per predicted dataset
    model.onnx          ``soundtag export`` (default place)
    plan.json           ``soundtag train``'s time plan and the recipes it trains (when it planned)

A fold counts as finished only once its ``done.json`` is written (atomically, last).

An ensemble directory holds ``ensemble.json`` (runs, weights, metrics), the blended
``oof.csv`` and ``predictions/<name>.csv``. The one ``soundtag train`` leaves when it trains
two views holds them as ``lh/`` and ``x/`` (each a run directory) beside its ``plan.json``,
with ``metrics.json``, ``confusion.png`` and ``suspects.csv`` of the blend.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from soundtag._io import atomic_path, atomic_write_json, atomic_write_text, load_array
from soundtag.errors import DataError
from soundtag.manifest import Manifest

FOLD_PREFIX = "fold-"


def _fold_number(folder: Path) -> int | None:
    """``3`` for a folder named ``fold-3``; None for anything else."""
    rest = folder.name.removeprefix(FOLD_PREFIX)
    return int(rest) if folder.name.startswith(FOLD_PREFIX) and rest.isdigit() else None


@dataclass
class OutOfFold:
    """Out-of-fold predictions of a run's finished folds, in manifest order.

    Attributes
    ----------
    manifest : the clips that have a prediction (all clips once every fold is finished)
    probs : np.ndarray [shape=(clips, labels)]
    folds : np.ndarray [shape=(clips,)], the fold each clip was held out in
    in_training : np.ndarray [shape=(clips,)], False for blacklisted clips
    finished : the finished folds these clips come from
    complete : whether every fold of the run is finished (every clip is predicted)
    """

    manifest: Manifest
    probs: np.ndarray
    folds: np.ndarray
    in_training: np.ndarray
    finished: list[int]
    complete: bool


class RunDir:
    """One training run directory (see the module docstring for its layout).

    Parameters
    ----------
    path : the run directory; it need not exist yet (training creates it)

    Examples
    --------
    >>> run = RunDir("runs/esc10")
    >>> run.fold_dir(2).as_posix(), run.checkpoint(2, "best").name
    ('runs/esc10/fold-2', 'best.ckpt')
    """

    INFO, RECIPE, MANIFEST, FOLDS = "run.json", "recipe.yaml", "manifest.jsonl", "folds.csv"
    #: Files that every fold job of one run shares (``soundtag merge-folds`` copies them once).
    SHARED = (INFO, RECIPE, MANIFEST, FOLDS)
    #: Of those, the files that must be byte-identical across the jobs of one run.
    MUST_AGREE = (RECIPE, MANIFEST, FOLDS)
    FOLD_DONE, FOLD_OOF, LOGS, TENSORBOARD = "done.json", "oof.npy", "logs", "tb"
    PLAN = "plan.json"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    # --- what kind of folder ----------------------------------------------------------------
    def is_run(self) -> bool:
        return (self.path / self.INFO).is_file()

    def require(self) -> "RunDir":
        """``self``, or a DataError when the folder is not a soundtag run."""
        if not self.path.is_dir():
            raise DataError(f"run directory {self.path} does not exist; give the --out folder of `soundtag train`")
        if not self.is_run():
            raise DataError(
                f"{self.path} is not a soundtag run (no {self.INFO}); give the --out folder of `soundtag train`"
            )
        return self

    def require_complete(self) -> "RunDir":
        """``self``, or a DataError when some fold is not finished yet."""
        self.require()
        missing = self.unfinished_folds()
        if missing:
            raise DataError(
                f"{self.path}: fold(s) {missing} are not finished, so not every clip has an "
                f"out-of-fold prediction yet; finish them with `soundtag train --resume {self.path}`"
            )
        return self

    # --- what made the run ------------------------------------------------------------------
    def info(self) -> dict:
        """``run.json``: recipe name, data source, feature cache folder, creation time, versions."""
        self.require()
        return json.loads((self.path / self.INFO).read_text())

    def data_source(self) -> str | None:
        """The ``--data`` the run was trained on, when it was given as text."""
        return self.info().get("data") if self.is_run() else None

    def cache_dir(self) -> Path:
        return Path(self.info()["cache_dir"])

    def recipe_file(self) -> Path:
        return self.path / self.RECIPE

    def write_recipe(self, recipe) -> None:
        """Write the recipe the run trains with (again when a time budget changed its epochs)."""
        atomic_write_text(self.recipe_file(), recipe.to_yaml())

    def recipe(self):
        from soundtag.recipe import load_recipe

        return load_recipe(self.recipe_file())

    def manifest(self) -> Manifest:
        return Manifest.from_jsonl(self.path / self.MANIFEST)

    def dataset_name(self) -> str:
        return self.manifest().name

    def start(self, recipe, manifest: Manifest, info: dict) -> None:
        """Write the run's shared files, unless an earlier start wrote them (resume)."""
        if self.is_run():
            return
        self.path.mkdir(parents=True, exist_ok=True)
        self.write_recipe(recipe)
        manifest.to_jsonl(self.path / self.MANIFEST)
        atomic_write_json(self.path / self.INFO, info)  # last: it marks the folder as a run

    # --- the fold plan ----------------------------------------------------------------------
    def write_folds(self, clip_ids: Iterable[str], fold_of: np.ndarray, in_training: np.ndarray) -> None:
        buf = io.StringIO()
        out = csv.writer(buf)
        out.writerow(["clip_id", "fold", "in_training"])
        out.writerows((c, int(f), bool(t)) for c, f, t in zip(clip_ids, fold_of, in_training))
        atomic_write_text(self.path / self.FOLDS, buf.getvalue())

    def fold_plan(self) -> dict[str, tuple[int, bool]]:
        """``{clip_id: (fold, in_training)}`` from ``folds.csv`` (clips whose audio failed have no row)."""
        path = self.path / self.FOLDS
        if not path.is_file():
            raise DataError(f"{self.path}: no {self.FOLDS} yet; the run has not started training")
        with open(path, newline="") as fh:
            return {r["clip_id"]: (int(r["fold"]), r["in_training"] == "True") for r in csv.DictReader(fh)}

    def n_folds(self) -> int:
        return 1 + max(f for f, _ in self.fold_plan().values())

    # --- folds ------------------------------------------------------------------------------
    def fold_dir(self, k: int) -> Path:
        return self.path / f"{FOLD_PREFIX}{k}"

    def checkpoint(self, k: int, which: str = "best") -> Path:
        """``fold-K/best.ckpt`` or ``fold-K/last.ckpt``."""
        return self.fold_dir(k) / f"{which}.ckpt"

    def logs_dir(self, k: int) -> Path:
        return self.fold_dir(k) / self.LOGS

    def is_finished(self, k: int) -> bool:
        return (self.fold_dir(k) / self.FOLD_DONE).is_file()

    def finished_folds(self) -> list[int]:
        """The finished folds, in order."""
        found = (_fold_number(p.parent) for p in self.path.glob(f"{FOLD_PREFIX}*/{self.FOLD_DONE}"))
        return sorted(k for k in found if k is not None)

    def unfinished_folds(self) -> list[int]:
        done = set(self.finished_folds())
        return [k for k in range(self.n_folds()) if k not in done]

    def fold_record(self, k: int) -> dict:
        """A finished fold's ``done.json``: its clips, counts, best checkpoint, epochs, time."""
        return json.loads((self.fold_dir(k) / self.FOLD_DONE).read_text())

    def finish_fold(self, k: int, probs: np.ndarray, record: dict) -> None:
        """Write fold ``k``'s out-of-fold probabilities, then its ``done.json`` (which finishes it)."""
        with atomic_path(self.fold_dir(k) / self.FOLD_OOF) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, np.asarray(probs, dtype=np.float32))
        atomic_write_json(self.fold_dir(k) / self.FOLD_DONE, record)

    def best_checkpoints(self) -> list[Path]:
        """The best checkpoint of every finished fold, in fold order."""
        done = self.require().finished_folds()
        if not done:
            raise DataError(
                f"{self.path}: no finished fold yet; train it first (`soundtag train --resume {self.path}`)"
            )
        return [self.fold_dir(k) / self.fold_record(k)["best_checkpoint"] for k in done]

    def fold_metric_logs(self) -> dict[str, list[Path]]:
        """Per fold folder name, its CSV logs: ``metrics.csv`` and the ``metrics-until-epoch-N.csv``
        kept from before each resume."""
        out = {}
        for logs in sorted(self.path.glob(f"{FOLD_PREFIX}*/{self.LOGS}")):
            files = sorted(logs.glob("metrics*.csv"))
            if files:
                out[logs.parent.name] = files
        return out

    def keep_logs_before_resume(self, k: int, epoch: int) -> None:
        """Lightning's CSV logger rewrites ``metrics.csv`` from what it logs itself: keep the
        epochs before a resume in a file of their own (:meth:`fold_metric_logs` reads them all)."""
        earlier = self.logs_dir(k) / "metrics.csv"
        if earlier.is_file():
            earlier.rename(earlier.with_name(f"metrics-until-epoch-{epoch}.csv"))

    # --- out-of-fold predictions ------------------------------------------------------------
    def out_of_fold(self, *, partial: bool = False) -> OutOfFold:
        """The out-of-fold probabilities of every clip, in manifest order.

        With ``partial``, only the clips of the finished folds (a run trained with ``--fold``);
        otherwise an unfinished fold is a DataError.
        """
        plan = self.fold_plan()
        finished = self.finished_folds()
        complete = not self.unfinished_folds()
        if not complete and not partial:
            self.require_complete()
        if not finished:
            raise DataError(
                f"{self.path}: no finished fold yet; train one first (`soundtag train --resume {self.path}`)"
            )
        wanted = set(finished)
        manifest = self.manifest().filter(lambda c: c.id in plan and plan[c.id][0] in wanted)
        row_of = {c.id: i for i, c in enumerate(manifest)}
        probs = np.full((len(manifest), len(manifest.labels)), np.nan, dtype=np.float32)
        for k in finished:
            clips = self.fold_record(k)["clips"]
            probs[[row_of[c] for c in clips]] = load_array(self.fold_dir(k) / self.FOLD_OOF)
        missing = int(np.isnan(probs[:, 0]).sum()) if len(manifest) else 0
        if missing:
            raise DataError(
                f"{self.path}: {missing} clip(s) of the finished folds have no out-of-fold prediction; "
                "the run directory is damaged: retrain those folds"
            )
        folds = np.array([plan[c.id][0] for c in manifest], dtype=int)
        in_training = np.array([plan[c.id][1] for c in manifest], dtype=bool)
        return OutOfFold(manifest, probs, folds, in_training, finished, complete)

    @property
    def oof_csv(self) -> Path:
        return self.path / "oof.csv"

    @property
    def plan_file(self) -> Path:
        """``soundtag train``'s time plan and recipes, where it planned the run."""
        return self.path / self.PLAN

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.json"

    @property
    def confusion_png(self) -> Path:
        return self.path / "confusion.png"

    @property
    def learning_curves_png(self) -> Path:
        return self.path / "learning_curves.png"

    @property
    def suspects_csv(self) -> Path:
        return self.path / "suspects.csv"

    @property
    def onnx_model(self) -> Path:
        """Where ``soundtag export RUN`` writes by default."""
        return self.path / "model.onnx"

    # --- predictions ------------------------------------------------------------------------
    @property
    def predictions_dir(self) -> Path:
        return self.path / "predictions"

    def predictions_file(self, dataset_name: str) -> Path:
        return self.predictions_dir / f"{dataset_name}.csv"

    def prediction_files(self) -> list[Path]:
        return sorted(self.predictions_dir.glob("*.csv"))


class EnsembleDir:
    """An ensemble directory (``soundtag ensemble``): ``ensemble.json``, the blended ``oof.csv``
    and ``predictions/<name>.csv``."""

    INFO = "ensemble.json"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def is_ensemble(self) -> bool:
        return (self.path / self.INFO).is_file()

    def info(self) -> dict:
        if not self.is_ensemble():
            raise DataError(f"{self.path} is not a soundtag ensemble (no {self.INFO})")
        return json.loads((self.path / self.INFO).read_text())

    def write_info(self, info: dict) -> None:
        atomic_write_json(self.path / self.INFO, info)

    def members(self) -> list[tuple[Path, float]]:
        """``(run directory, weight)`` of every run of the blend (a relative path is relative to
        the ensemble directory, so that a blend that holds its runs can be moved whole)."""
        return [(self.path / r["path"], float(r["weight"])) for r in self.info()["runs"]]

    def member_path(self, run: str | Path) -> str:
        """How ``ensemble.json`` names ``run``: relative when it lies inside this directory."""
        run = Path(run).absolute()
        try:
            return run.relative_to(self.path.absolute()).as_posix()
        except ValueError:
            return str(run)

    def view_dir(self, view: str) -> Path:
        """Where ``soundtag train`` trains ``view`` (``lh`` or ``x``) of a blended run."""
        return self.path / view

    @property
    def info_file(self) -> Path:
        return self.path / self.INFO

    oof_csv = RunDir.oof_csv
    plan_file = RunDir.plan_file
    PLAN = RunDir.PLAN
    predictions_dir = RunDir.predictions_dir
    predictions_file = RunDir.predictions_file
