"""A cross-validated training run: one model per fold, out-of-fold predictions for every clip.

The run directory's layout belongs to :class:`soundtag.runs.RunDir`. A fold counts as
finished only once its ``done.json`` is written (atomically, last); ``resume`` skips finished
folds and continues an interrupted one from its ``last.ckpt``.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from soundtag.checkpoints import read_soundtag_checkpoint
from soundtag.distributed import is_primary_process, launch_rank
from soundtag.errors import DataError, ParameterError
from soundtag.features.extract import extract_features
from soundtag.features.store import FeatureStore, clip_key
from soundtag.hardware import accelerator
from soundtag.inference.clips import predict_loader
from soundtag.manifest import Manifest
from soundtag.manifest.clip_lists import apply_relabel, read_clip_list
from soundtag.recipe import Recipe
from soundtag.runs import RunDir
from soundtag.stopping import Stopped
from soundtag.training.data import EpochSampler, EvalViews, Normalizer, ShardSampler, TrainViews, collate_chunks
from soundtag.training.device_data import (
    DeviceClips,
    DeviceEvalBatches,
    DeviceTrainBatches,
    features_bytes,
    wants_device_data,
)
from soundtag.training.splits import label_matrix, make_folds, validation_mask


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict
    folds_trained: list[int]
    folds_skipped: list[int]


@dataclass(frozen=True)
class Hardware:
    """Where a run trains: devices per node, nodes, and Lightning's strategy.

    ``devices=2`` on one machine starts the other process itself (Lightning's launcher);
    under ``torchrun`` or SLURM every process runs the same command and finds its rank in the
    environment. ``strategy="ddp"`` is DistributedDataParallel (gloo on CPUs, NCCL on GPUs).
    """

    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"

    def __post_init__(self):
        if isinstance(self.devices, str) and self.devices != "auto":
            try:
                object.__setattr__(self, "devices", int(self.devices))
            except ValueError:
                raise ParameterError(f"devices={self.devices!r} must be a whole number or 'auto'") from None
        if self.strategy not in ("auto", "ddp"):
            raise ParameterError(f"strategy={self.strategy!r} must be 'auto' or 'ddp'")
        if self.num_nodes < 1 or (isinstance(self.devices, int) and self.devices < 1):
            raise ParameterError(f"devices={self.devices} and num_nodes={self.num_nodes} must be at least 1")

    def lightning_strategy(self):
        if self.strategy == "ddp":
            import inspect

            from lightning.pytorch.strategies import DDPStrategy

            # No buffer broadcast in forward: evaluation shards differ by a clip, and a
            # broadcast in a forward that one rank skips would hang every rank. Newer torch
            # names the switch forward_sync_buffers and deprecates broadcast_buffers.
            ddp_args = inspect.signature(torch.nn.parallel.DistributedDataParallel).parameters
            name = "forward_sync_buffers" if "forward_sync_buffers" in ddp_args else "broadcast_buffers"
            return DDPStrategy(**{name: False})
        return "auto"


def default_run_dir(recipe: Recipe, *, root: str | Path = "runs", now: dt.datetime | None = None) -> Path:
    """``runs/<recipe>-<YYYYmmdd-HHMMSS>``; processes started together (torchrun, SLURM) cannot
    agree on a time, so they must be given the run directory."""
    if launch_rank()[1] > 1:
        raise ParameterError("give the run directory (--out RUN): processes started together must agree on it")
    return Path(root) / f"{recipe.name}-{(now or dt.datetime.now()):%Y%m%d-%H%M%S}"


def train(
    manifest: Manifest,
    recipe: Recipe,
    run_dir: str | Path,
    *,
    cache_dir: str | Path,
    folds: list[int] | None = None,
    progress: bool = True,
    resume: bool = False,
    data_source: str | None = None,
    hardware: Hardware = Hardware(),
) -> RunResult:
    """Train one model per fold and write out-of-fold predictions and metrics.

    Parameters
    ----------
    manifest : the training clips (every clip gets an out-of-fold prediction)
    recipe : features, view and ``training`` section
    run_dir : the run directory; must not exist unless ``resume``
    cache_dir : the feature store folder (features are computed once and reused)
    folds : train only these fold numbers (default: all)
    resume : continue a run: finished folds are skipped, an interrupted one continues
    hardware : devices, nodes and strategy (see :class:`Hardware`); with several processes,
        only global rank 0 writes files
    """
    run = RunDir(run_dir)
    run_dir = run.path
    t = recipe.training
    rank, launched = launch_rank()
    if rank == 0 and run_dir.exists() and any(run_dir.iterdir()) and not resume:
        raise ParameterError(
            f"run directory {run_dir} already exists; use --resume to continue it or give another --out"
        )
    run_dir.mkdir(parents=True, exist_ok=True)

    if t.relabel:
        manifest = apply_relabel(manifest, read_clip_list(t.relabel, manifest, what="relabel"), t.relabel)
    blacklist = set(read_clip_list(t.blacklist, manifest, what="blacklist")) if t.blacklist else set()
    if rank == 0:
        run.start(
            recipe,
            manifest,
            {
                "recipe": recipe.name,
                "data": data_source,
                "cache_dir": str(Path(cache_dir).absolute()),
                "created": dt.datetime.now().isoformat(timespec="seconds"),
                "torch": torch.__version__,
            },
        )

    if launched > 1:
        # Processes started together (torchrun, SLURM) must not compute the same features at
        # once: they read a store made beforehand (`soundtag features`, sharded if need be).
        store, failed = stored_features(manifest, recipe, cache_dir)
    else:
        store, summary = extract_features(manifest, recipe, cache_dir=cache_dir, progress=progress, shard="all")
        failed = {f.clip_id for f in summary.failures}
    if failed:
        manifest = manifest.filter(lambda c: c.id not in failed)
    plan = FoldSet.build(manifest, recipe, store, blacklist)
    if rank == 0:
        run.write_folds(manifest.ids, plan.fold_of, plan.in_training)

    n_folds = plan.n_folds
    wanted = list(range(n_folds)) if folds is None else folds
    trained, skipped = [], []
    for k in wanted:
        if not 0 <= k < n_folds:
            raise ParameterError(f"fold {k} does not exist: this run has folds 0..{n_folds - 1}")
        if run.is_finished(k):
            skipped.append(k)
            continue
        _train_fold(plan, k, run, progress, hardware)
        trained.append(k)

    if not is_primary_process():
        return RunResult(run_dir, {}, trained, skipped)  # rank 0 evaluates
    from soundtag.training.evaluate import evaluate_run

    # A run trained in part (--fold) is scored on its finished folds' clips, which it says.
    metrics = evaluate_run(run) if run.finished_folds() else {}
    return RunResult(run_dir, metrics, trained, skipped)


def stored_features(manifest: Manifest, recipe: Recipe, cache_dir: str | Path) -> tuple[FeatureStore, set[str]]:
    """The store of ``recipe`` holding every clip of ``manifest``, and the clips whose audio
    failed (listed in the store's failure reports); any other missing clip is an error."""
    store = FeatureStore.open(cache_dir, recipe)
    failed: set[str] = set()
    for report in store.path.glob("failures*.csv"):
        with open(report, newline="") as fh:
            failed |= {row["clip_id"] for row in csv.DictReader(fh)}
    missing = [c.id for c in manifest if c.id not in failed and clip_key(c.path) not in store]
    if missing:
        raise DataError(
            f"{len(missing)} clip(s) (e.g. {missing[:3]}) have no features in {store.path}; with "
            "several processes, compute them first: `soundtag features --data ... --recipe "
            f"{recipe.name} --cache {cache_dir}` (or in shards with --shard i/n)"
        )
    return store, failed


def resume(run_dir: str | Path, *, progress: bool = True, hardware: Hardware = Hardware()) -> RunResult:
    """Continue a run from what its directory holds (recipe, manifest, feature cache)."""
    run = RunDir(run_dir).require()
    info = run.info()
    return train(
        run.manifest(),
        run.recipe(),
        run.path,
        cache_dir=info["cache_dir"],
        progress=progress,
        resume=True,
        data_source=info.get("data"),
        hardware=hardware,
    )


@dataclass
class FoldLoaders:
    """A fold's batches: DataLoaders over the store (streaming), or
    :mod:`~soundtag.training.device_data` batches drawn on the device (``on_device``)."""

    train: Iterable
    val: Iterable
    oof: Iterable
    normalizer: Normalizer
    oof_ids: list[str]
    train_clips: int
    val_clips: int
    on_device: bool = False

    def place(self, device: torch.device) -> None:
        """Put device-resident features on ``device`` (nothing to do for streaming loaders)."""
        if self.on_device:
            for batches in (self.train, self.val, self.oof):
                batches.place(device)


@dataclass
class FoldSet:
    """The clips of a run, their folds, and which of them may be trained on."""

    manifest: Manifest
    recipe: Recipe
    store: FeatureStore
    keys: list[str]
    targets: np.ndarray
    fold_of: np.ndarray
    in_training: np.ndarray

    @classmethod
    def build(cls, manifest: Manifest, recipe: Recipe, store: FeatureStore, blacklist=frozenset()) -> "FoldSet":
        t = recipe.training
        return cls(
            manifest,
            recipe,
            store,
            [clip_key(c.path) for c in manifest],
            label_matrix(manifest),
            make_folds(manifest, t.folds, seed=t.seed, strategy=t.fold_strategy),
            np.array([c.id not in blacklist for c in manifest]),
        )

    @property
    def n_folds(self) -> int:
        return int(self.fold_of.max()) + 1

    @property
    def trusted(self) -> np.ndarray:
        """Clips whose label ``training.noise`` trusts: the manually verified ones when the manifest
        marks any clip, none otherwise (then every clip is treated as possibly noisy)."""
        flags = [c.manually_verified for c in self.manifest]
        if all(f is None for f in flags):
            return np.zeros(len(flags), bool)
        return np.array([f is True for f in flags])

    def loaders(self, k: int) -> FoldLoaders:
        """Training (balanced, augmented later on the batch), validation and out-of-fold loaders.

        Validation leaves out blacklisted clips (and unverified ones for ``verified_only``
        recipes); the out-of-fold loader covers every clip of the fold.
        """
        recipe, t = self.recipe, self.recipe.training
        train_idx = np.flatnonzero((self.fold_of != k) & self.in_training)
        verified_only = recipe.validation == "verified_only"
        val_idx = np.flatnonzero(
            validation_mask(self.manifest, self.fold_of, k, verified_only=verified_only) & self.in_training
        )
        oof_idx = np.flatnonzero(self.fold_of == k)
        if len(train_idx) == 0 or len(val_idx) == 0:
            raise DataError(
                f"fold {k}: {len(train_idx)} training and {len(val_idx)} validation clips; "
                "check the blacklist and the folds"
            )
        normalizer = Normalizer.fit(recipe, self.store, [self.keys[i] for i in train_idx])

        def subset(idx):
            return [self.keys[i] for i in idx], self.targets[idx]

        sampler = EpochSampler(self.targets[train_idx].argmax(axis=1), t.balance, seed=t.seed + k)
        # An epoch shorter than a batch is one smaller batch (not none: nothing would train).
        drop_last = len(sampler) >= t.batch_size
        needed = features_bytes(self.store, self.keys, recipe)  # every clip: training + its fold
        if wants_device_data(t.device_data, needed, accelerator()[0]):

            def clips(idx):
                return DeviceClips.load(self.store, [self.keys[i] for i in idx], recipe)

            train = DeviceTrainBatches(
                clips(train_idx),
                self.targets[train_idx],
                normalizer,
                sampler,
                batch_size=t.batch_size,
                drop_last=drop_last,
                seed=t.seed + k,
                trusted=self.trusted[train_idx],
            )
            # The validation clips are some of the fold's: one copy of the fold serves both.
            fold_clips = clips(oof_idx)
            val = DeviceEvalBatches(
                fold_clips,
                self.targets[oof_idx],
                normalizer,
                recipe,
                batch_size=t.batch_size,
                positions=np.searchsorted(oof_idx, val_idx),
                shard=True,
            )
            oof = DeviceEvalBatches(fold_clips, self.targets[oof_idx], normalizer, recipe, batch_size=t.batch_size)
            return FoldLoaders(
                train,
                val,
                oof,
                normalizer,
                [self.manifest[i].id for i in oof_idx],
                len(train_idx),
                len(val_idx),
                on_device=True,
            )
        common = {"num_workers": t.workers, "persistent_workers": t.workers > 0}
        train = torch.utils.data.DataLoader(
            TrainViews(
                self.store, *subset(train_idx), recipe, normalizer, seed=t.seed + k, trusted=self.trusted[train_idx]
            ),
            batch_size=t.batch_size,
            sampler=sampler,
            drop_last=drop_last,
            **common,
        )
        eval_args = {"batch_size": t.batch_size, "collate_fn": collate_chunks, **common}
        val = torch.utils.data.DataLoader(
            EvalViews(self.store, *subset(val_idx), recipe, normalizer), sampler=ShardSampler(len(val_idx)), **eval_args
        )
        oof = torch.utils.data.DataLoader(EvalViews(self.store, *subset(oof_idx), recipe, normalizer), **eval_args)
        return FoldLoaders(
            train, val, oof, normalizer, [self.manifest[i].id for i in oof_idx], len(train_idx), len(val_idx)
        )


def _train_fold(plan: FoldSet, k: int, run: RunDir, progress: bool, hardware: Hardware = Hardware()) -> None:
    # Lightning's warnings that do not apply here are silenced for this fold only, not for
    # the process that called us (a notebook keeps its own filters).
    with warnings.catch_warnings():
        # The fold folder holds logs (and, on resume, checkpoints) before the callback writes there.
        warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
        # val_loss and val_map3 are computed over clips gathered from every rank (module.py).
        warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('val_")
        # Lightning's own use of a torch API that torch deprecates: nothing a user can act on.
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
        with _without_lightning_tips():
            _fit_fold(plan, k, run, progress, hardware)


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


def _fit_fold(plan: FoldSet, k: int, run: RunDir, progress: bool, hardware: Hardware) -> None:
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
    last = run.checkpoint(k, "last")
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
