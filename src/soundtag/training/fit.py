"""Fitting one fold with Lightning: the module, the checkpoints (the best epoch and the last,
read back without running code), early stopping, logs, resume from ``last.ckpt``, then the
fold's out-of-fold predictions and its ``done.json``.
"""

from __future__ import annotations

import contextlib
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from soundtag.checkpoints import read_soundtag_checkpoint
from soundtag.hardware import Hardware, accelerator
from soundtag.inference.clips import predict_loader
from soundtag.planning import Pace
from soundtag.runs import RunDir
from soundtag.stopping import Stopped
from soundtag.training.folds import FoldSet

__all__ = ["PaceKept", "train_fold"]


@dataclass(frozen=True)
class PaceKept:
    """What a fold trained under a :class:`~soundtag.planning.Pace` found: the epochs that fit the
    budget (``planned`` if the timed steps were right), its real seconds an epoch, and the seconds
    the default budget moved by with them."""

    epochs: int
    planned: int
    real_epoch_s: float
    timed_epoch_s: float
    budget_change_s: float = 0.0


def train_fold(
    plan: FoldSet,
    k: int,
    run: RunDir,
    progress: bool,
    hardware: Hardware = Hardware(),
    pace: Pace | None = None,
    on_pace: Callable[[PaceKept], None] | None = None,
) -> None:
    """Fit fold ``k`` of ``plan`` into ``run`` (resuming from its ``last.ckpt`` when there is one)
    and write its out-of-fold predictions; on several processes, only rank 0 writes.

    With a ``pace`` (kept only by a fold trained from its first epoch), the fold's real epochs
    are timed at :meth:`Pace.checks <soundtag.planning.Pace.checks>`, and its epochs and
    learning-rate schedule set to what fits the budget; ``on_pace`` hears what each check found,
    before the next checkpoint is written, so that a resume trains the epochs the schedule was
    stretched to.
    """
    with lightning_quiet():
        _fit_fold(plan, k, run, progress, hardware, pace, on_pace)


def _keep_pace(pace: Pace, on_pace: Callable[[PaceKept], None] | None):
    """A Lightning callback that times the fold's epochs and re-plans them at the pace's checks."""
    import lightning as L

    class KeepPace(L.Callback):
        def __init__(self):
            self.starts: list[float] = []

        def on_train_epoch_start(self, trainer, module):
            now = time.perf_counter()
            self.starts.append(now)
            done = trainer.current_epoch
            if done not in pace.checks() or len(self.starts) < 3:
                return
            # the first epoch warms up (allocations, loader start): the real pace is the later ones'
            real_s = (self.starts[-1] - self.starts[1]) / (len(self.starts) - 2)
            epochs = pace.replanned(epochs_done=done, real_epoch_s=real_s, now=now)
            if on_pace is not None:
                on_pace(PaceKept(epochs, pace.epochs, real_s, pace.timing.epoch_s, pace.budget_change_s(real_s)))
            if epochs != trainer.max_epochs:
                module.stretch_schedule(epochs)
                trainer.fit_loop.max_epochs = epochs

    return KeepPace()


@contextlib.contextmanager
def lightning_quiet():
    """Lightning's warnings that do not apply here, and its tips, silenced inside the block only,
    not for the process that called us (a notebook keeps its own filters)."""
    with warnings.catch_warnings():
        # The fold folder holds logs (and, on resume, checkpoints) before the callback writes there.
        warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
        # val_loss and val_map3 are computed over clips gathered from every rank (module.py).
        warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('val_")
        # Lightning's own use of a torch API that torch deprecates: nothing a user can act on.
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
        with _without_lightning_tips():
            yield


@contextlib.contextmanager
def _without_lightning_tips():
    """Lightning advertises its cloud logger at every Trainer; a user of soundtag did not ask."""
    import logging

    tip = logging.Filter()
    tip.filter = lambda record: not str(record.msg).startswith("💡 Tip")
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch")]
    for logger in loggers:
        logger.addFilter(tip)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(tip)


def _fit_fold(
    plan: FoldSet,
    k: int,
    run: RunDir,
    progress: bool,
    hardware: Hardware,
    pace: Pace | None,
    on_pace: Callable[[PaceKept], None] | None,
) -> None:
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from soundtag.training.module import SafeCheckpointIO, TaggerModule

    recipe, manifest = plan.recipe, plan.manifest
    t = recipe.training
    fold_dir = run.fold_dir(k)
    fold_dir.mkdir(exist_ok=True)
    start = time.perf_counter()
    L.seed_everything(t.seed + k, workers=True, verbose=False)
    data = plan.loaders(k)
    module = TaggerModule(
        recipe.model_dump(), list(manifest.labels), manifest.multilabel, data.normalizer.to_dict(), fold=k
    )
    mode = "min" if t.monitor == "val_loss" else "max"
    checkpoint = ModelCheckpoint(
        dirpath=fold_dir,
        filename=run.checkpoint(k, "best").stem,
        monitor=t.monitor,
        mode=mode,
        enable_version_counter=False,
    )
    # The latest epoch, every epoch: Lightning's save_last writes last.ckpt only in an epoch that
    # also saved a best one, so a crash after epochs without improvement would redo them.
    latest = ModelCheckpoint(
        dirpath=fold_dir,
        filename=run.checkpoint(k, "last").stem,
        monitor=None,
        save_top_k=1,
        enable_version_counter=False,
    )
    callbacks = [checkpoint, latest]
    if t.early_stopping:
        callbacks.append(EarlyStopping(monitor=t.monitor, mode=mode, patience=t.early_stopping))
    last = run.checkpoint(k, "last")
    if pace is not None and not last.is_file():
        callbacks.append(_keep_pace(pace, on_pace))
    device_kind, auto_precision = accelerator()
    trainer = L.Trainer(
        max_epochs=t.epochs,
        accelerator=device_kind,
        devices=hardware.devices,
        num_nodes=hardware.num_nodes,
        strategy=hardware.lightning_strategy(),
        use_distributed_sampler=False,  # ours shard by rank
        precision=auto_precision if t.precision == "auto" else t.precision,
        callbacks=callbacks,
        plugins=[SafeCheckpointIO()],
        logger=[
            CSVLogger(fold_dir, name=run.LOGS, version=""),
            TensorBoardLogger(fold_dir, name=run.TENSORBOARD, version=""),
        ],
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=max(1, min(50, len(data.train))),
    )
    data.place(trainer.strategy.root_device)
    resumed_from = None
    if last.is_file():
        resumed_from = read_soundtag_checkpoint(last).epoch + 1
        print(f"fold {k}: resuming from {last} after epoch {resumed_from}")
        if trainer.is_global_zero:
            run.keep_logs_before_resume(k, resumed_from)
    try:
        trainer.fit(module, data.train, data.val, ckpt_path=str(last) if last.is_file() else None)
    except SIGTERMException:  # Lightning's own stop (a DDP rank told by rank 0) is a SystemExit of status 0
        raise Stopped(signal.SIGTERM) from None

    if not trainer.is_global_zero:
        trainer.strategy.barrier("oof")  # wait for rank 0's out-of-fold predictions
        return
    # The weights named before training: the best epoch by the monitor, or the last one.
    best = str(last) if t.keep == "last" else (checkpoint.best_model_path or str(last))
    best_module = TaggerModule.from_checkpoint(best)
    # One process predicts the whole fold, so every clip is predicted exactly once.
    probs = predict_loader(best_module, data.oof, trainer.strategy.root_device, tta=t.tta)
    run.finish_fold(
        k,
        probs,
        {
            "fold": k,
            "clips": data.oof_ids,
            "train_clips": data.train_clips,
            "val_clips": data.val_clips,
            "best_checkpoint": Path(best).name,
            "best_score": float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else None,
            "epochs": int(trainer.current_epoch),
            "resumed_after_epoch": resumed_from,
            "processes": trainer.world_size,
            "features_on_device": data.on_device,
            "seconds": time.perf_counter() - start,
        },
    )
    trainer.strategy.barrier("oof")
