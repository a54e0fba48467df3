"""How long a fold takes on this machine, measured: a few real training and validation steps of
the run's own model, through its own loaders, in Lightning's own loop.

The time budget of ``soundtag train`` (:mod:`soundtag.planning`) turns these measurements into
epochs. They are measured rather than derived from a constant because machines differ by 2x
and more for the same model (a CPU with native bf16 or without, the core count, a GPU).
"""

from __future__ import annotations

import statistics
import tempfile
import time
import warnings

from soundtag.hardware import accelerator
from soundtag.planning import FoldTiming
from soundtag.training.fit import lightning_quiet
from soundtag.training.folds import FoldSet

__all__ = ["time_fold"]


def time_fold(plan: FoldSet, k: int = 0, *, train_steps: int = 12, val_steps: int = 4) -> FoldTiming:
    """Time fold ``k`` of ``plan``: two short epochs of ``train_steps`` training batches and
    ``val_steps`` validation batches, with the fold's own checkpoints and logs; the second epoch
    is the one measured (the first pays for warming up).

    Returns
    -------
    :class:`~soundtag.planning.FoldTiming` with the batches of a whole epoch of this fold
    """
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from soundtag.training.module import TaggerModule

    if train_steps < 1 or val_steps < 1:
        raise ValueError(f"train_steps={train_steps} and val_steps={val_steps} must be at least 1")
    recipe, manifest, t = plan.recipe, plan.manifest, plan.recipe.training
    start = time.perf_counter()
    L.seed_everything(t.seed + k, workers=True, verbose=False)
    data = plan.loaders(k)
    module = TaggerModule(
        recipe.model_dump(), list(manifest.labels), manifest.multilabel, data.normalizer.to_dict(), fold=k
    )
    setup_s = time.perf_counter() - start
    marks: dict[str, list[float]] = {"train": [], "val": [], "val_start": [], "epoch_start": [], "epoch_end": []}
    cuda = torch.cuda.is_available()

    def now() -> float:
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    class Clock(L.Callback):
        def on_train_epoch_start(self, *args):
            marks["epoch_start"].append(now())

        def on_train_batch_end(self, *args):
            marks["train"].append(now())

        def on_validation_epoch_start(self, *args):
            marks["val_start"].append(now())

        def on_validation_batch_end(self, *args):
            marks["val"].append(now())

        def on_train_epoch_end(self, *args):
            marks["epoch_end"].append(now())

    device_kind, auto_precision = accelerator()
    n_train = min(train_steps, len(data.train))
    n_val = min(val_steps, len(data.val))
    with tempfile.TemporaryDirectory() as tmp, lightning_quiet(), warnings.catch_warnings():
        # the short run logs as the real one does (every 50 steps), which Lightning questions
        warnings.filterwarnings("ignore", message="The number of training batches")
        built = time.perf_counter()
        trainer = L.Trainer(
            max_epochs=2,
            limit_train_batches=n_train,
            limit_val_batches=n_val,
            accelerator=device_kind,
            devices=1,
            precision=auto_precision if t.precision == "auto" else t.precision,
            # the fold's own per-epoch writes: its best and its latest checkpoint, and its log
            callbacks=[
                Clock(),
                ModelCheckpoint(dirpath=tmp, filename="best", monitor=t.monitor, enable_version_counter=False),
                ModelCheckpoint(dirpath=tmp, filename="last", monitor=None, enable_version_counter=False),
            ],
            logger=[CSVLogger(tmp, name="logs", version=""), TensorBoardLogger(tmp, name="tb", version="")],
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            log_every_n_steps=max(1, min(50, len(data.train))),
        )
        data.place(trainer.strategy.root_device)
        trainer.fit(module, data.train, data.val)
    if len(marks["epoch_end"]) < 2:
        raise RuntimeError("the timing run ended before its second epoch")
    # The second epoch's batches; where there are too few to time between batch ends, the first
    # is timed from the start of its loop (a little dearer: it starts the loader).
    train_ends = marks["train"][n_train:]
    val_ends = marks["val"][n_val:]
    if len(train_ends) < 3:
        train_ends = [marks["epoch_start"][1], *train_ends]
    if len(val_ends) < 3:
        val_ends = [marks["val_start"][1], *val_ends]
    # means, not medians: an epoch's time is the sum of its batches, slow ones included
    step_s = statistics.fmean(b - a for a, b in zip(train_ends, train_ends[1:]))
    val_s = statistics.fmean(b - a for a, b in zip(val_ends, val_ends[1:]))
    first_s, epoch_s = (end - start for start, end in zip(marks["epoch_start"], marks["epoch_end"]))
    overhead_s = max(0.0, epoch_s - n_train * step_s - n_val * val_s)
    # A fold pays once for building its trainer and for its first epoch's warm-up (workers
    # starting, first allocations): the first epoch's excess over the second.
    setup_s += (marks["epoch_start"][0] - built) + max(0.0, first_s - epoch_s)
    return FoldTiming(
        train_step_s=step_s,
        val_batch_s=val_s,
        epoch_overhead_s=overhead_s,
        fold_setup_s=setup_s,
        train_batches=len(data.train),
        val_batches=len(data.val),
        oof_batches=len(data.oof),
        tta=t.tta,
        probe_s=time.perf_counter() - start,
    )
