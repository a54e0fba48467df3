"""The LightningModule: a registered model, the recipe's batch augmentations and its loss.

Single-label data: softmax with cross-entropy on soft targets (mixup makes them soft).
Multi-label data: sigmoid with binary cross-entropy. Validation averages each clip's chunk
probabilities and logs ``val_loss`` and ``val_map3`` at clip level.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.plugins import TorchCheckpointIO

from soundtag import evaluation
from soundtag._heap import release_freed_memory
from soundtag.checkpoints import read_checkpoint, read_soundtag_checkpoint
from soundtag.inference.clips import clip_probabilities
from soundtag.models import create_model
from soundtag.models.pretrained import head_keys, load_checkpoint
from soundtag.recipe import Recipe
from soundtag.training import augment, noise


def _gather(array: np.ndarray) -> np.ndarray:
    """Concatenate an array's rows from every rank (shards may differ in length)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return array
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, array)
    return np.concatenate(parts)


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O with its reads through :func:`~soundtag.checkpoints.read_checkpoint`.

    ``Trainer.fit(ckpt_path=...)`` (``soundtag train --resume``) reads ``last.ckpt`` here, so a
    run directory from someone else cannot run code through it; writes stay Lightning's, which
    are atomic.
    """

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        return read_checkpoint(path)


class TaggerModule(L.LightningModule):
    """Trains one fold. Everything needed to tag a file later is in ``hparams``: the recipe,
    the label names, and the normaliser's statistics."""

    def __init__(
        self,
        recipe: dict,
        labels: list[str],
        multilabel: bool,
        normalizer: dict,
        fold: int = 0,
        init_weights: bool = True,
    ):
        super().__init__()
        # init_weights=False: a trained fold being loaded back needs no starting weights (whose
        # file may be gone by then).
        self.save_hyperparameters(ignore=["init_weights"])
        self.recipe = Recipe.model_validate(recipe)
        t = self.recipe.training
        net = create_model(t.model, num_classes=len(labels), in_chans=1, **t.model_args)
        if t.checkpoint and init_weights:
            load_checkpoint(net, t.checkpoint, recipe=self.recipe, new_head=True)
        # With EMA, `model` holds the averaged weights (what validation, prediction and export
        # use: every reader of a checkpoint's `model.*` keys gets them) and `training_model` the
        # weights the optimiser steps. Hand-written rather than torch's AveragedModel, whose
        # wrapper would rename the keys to `model.module.*`.
        self.ema_decay = t.ema.decay if t.ema.enabled else None
        if self.ema_decay is not None:
            self.training_model = net
            self.model = copy.deepcopy(net).requires_grad_(False)
        else:
            self.model = net
        self.multilabel = multilabel
        # NHWC: oneDNN's and cuDNN's faster convolutions (measured in benchmarks/train.py throughput).
        self.channels_last = t.channels_last != "off"
        if self.channels_last:
            self.to(memory_format=torch.channels_last)
        #: The augmentations' random stream, on the batches' device (made at the first batch).
        self.generator: torch.Generator | None = None
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []

    @classmethod
    def from_checkpoint(cls, path) -> "TaggerModule":
        """A trained fold back from its checkpoint, read without running code (Lightning's own
        loader leaves that to ``torch.load``'s defaults)."""
        ckpt = read_soundtag_checkpoint(path)
        arguments = ("recipe", "labels", "multilabel", "normalizer", "fold")
        module = cls(**{k: v for k, v in ckpt.hyper_parameters.items() if k in arguments}, init_weights=False)
        module.load_state_dict(ckpt.state_dict)
        return module

    def on_fit_start(self) -> None:
        self.generator = None  # made again on this process's device, seeded by its rank
        if self.recipe.training.compile:
            self.net.compile()  # in place: the state dict keeps its keys

    def backbone_parameters(self) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
        """The trained net's ``(backbone, classifier)`` parameters."""
        head = head_keys(self.net)
        named = dict(self.net.named_parameters())
        return [p for k, p in named.items() if k not in head], [p for k, p in named.items() if k in head]

    def on_train_epoch_start(self) -> None:
        # training.freeze_epochs: the new head learns alone first, so its random gradients do not
        # wreck pretrained features; the optimiser skips parameters without gradients.
        frozen = self.current_epoch < self.recipe.training.freeze_epochs
        for p in self.backbone_parameters()[0]:
            p.requires_grad_(not frozen)

    @property
    def net(self) -> torch.nn.Module:
        """The weights the optimiser trains (``model`` itself unless EMA is on)."""
        return self.training_model if self.ema_decay is not None else self.model

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.ema_decay is not None:
            self._update_ema()

    @torch.no_grad()
    def _update_ema(self) -> None:
        # timm's warm-up of the decay: early averages follow the fast-moving weights closely.
        step = self.global_step
        decay = min(self.ema_decay, (1 + step) / (10 + step))
        ema = [*self.model.parameters(), *self.model.buffers()]
        live = [*self.training_model.parameters(), *self.training_model.buffers()]
        floats = [(e, v) for e, v in zip(ema, live) if e.is_floating_point()]
        torch._foreach_lerp_([e for e, _ in floats], [v.detach() for _, v in floats], 1 - decay)
        for e, v in zip(ema, live):
            if not e.is_floating_point():
                e.copy_(v)  # BatchNorm's step counter

    def _generator_on(self, device: torch.device) -> torch.Generator:
        if self.generator is None or self.generator.device.type != device.type:
            t = self.recipe.training
            # Each rank augments its own batches differently; the same seed, fold and rank
            # always give the same stream.
            seed = int(np.random.SeedSequence([t.seed, self.hparams.fold, self.global_rank]).generate_state(1)[0])
            self.generator = torch.Generator(device=device).manual_seed(seed)
        return self.generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return (self.net if self.training else self.model)(x)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, trusted: torch.Tensor | None = None) -> torch.Tensor:
        """The batch's mean loss; ``training.noise`` decides it for the samples not ``trusted``."""
        return noise.noisy_label_loss(
            logits, targets, trusted, self.recipe.training.noise, multilabel=self.multilabel, epoch=self.current_epoch
        )

    def augment(
        self, x: torch.Tensor, y: torch.Tensor, extents: torch.Tensor | None = None, trusted: torch.Tensor | None = None
    ):
        """The recipe's augmentations of a batch: ``(x, y, trusted)``, mixup's mixed samples
        trusted in their label only where both sources are (``trusted`` None stays None).
        ``extents`` (``(batch, 2)`` sound frames) serve the augmentations whose ``relative_to`` is
        ``sound``.

        The kernel's order is kept (shift, reversal, masks, erasing, mixup) unless an
        augmentation is sized to the sound: then masks and erasing come first, while the
        extents still say where the sound is, and the shift and reversal move it afterwards.
        The mel shift follows; mixup is always last. Every random draw comes from the module's
        generator on the batch's device (see :mod:`soundtag.training.augment`).
        """
        a = self.recipe.training.augment
        g = self._generator_on(x.device)
        sound = {name for name in ("shift", "specaugment", "erasing") if getattr(a, name).relative_to == "sound"}

        def shift(x):
            if a.shift.enabled:
                x = augment.time_shift(
                    x, max_fraction=a.shift.max_fraction, generator=g, extents=extents if "shift" in sound else None
                )
            if a.reverse.enabled:
                x = augment.time_reverse(x, p=a.reverse.p, generator=g)
            return x

        def mask(x):
            s = a.specaugment
            if s.enabled:
                x = augment.spec_augment(
                    x,
                    time_masks=s.time_masks,
                    time_width=s.time_width,
                    freq_masks=s.freq_masks,
                    freq_width=s.freq_width,
                    generator=g,
                    extents=extents if "specaugment" in sound else None,
                )
            if a.erasing.enabled:
                x = augment.random_erasing(
                    x,
                    p=a.erasing.p,
                    area=a.erasing.area,
                    aspect=a.erasing.aspect,
                    generator=g,
                    extents=extents if "erasing" in sound else None,
                )
            return x

        x = shift(mask(x)) if sound else mask(shift(x))
        if a.freq_shift.enabled and a.freq_shift.max_bins:
            x = augment.freq_shift(x, max_bins=a.freq_shift.max_bins, generator=g)
        if a.mixup.enabled:
            x, y, perm = augment.mixup(x, y, alpha=a.mixup.alpha, generator=g, return_perm=True)
            if trusted is not None:
                trusted = noise.mixed_trust(trusted, perm)
        return x, y, trusted

    def training_step(self, batch, batch_idx):
        x, y, extents, trusted = batch
        x, y, trusted = self.augment(x, y, extents, trusted)
        loss = self.loss(self(x), y, trusted)
        self.log(
            "train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(x), sync_dist=True
        )  # equal shards: the mean of the ranks' means is the mean
        return loss

    def validation_step(self, batch, batch_idx):
        x, owner, y = batch
        probs = clip_probabilities(self(x), owner, len(y), self.multilabel)
        self._val.append((probs.float().cpu(), y.cpu()))

    def on_validation_batch_end(self, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.device.type == "cpu":  # the host heap is the one that grew (_heap.py)
            release_freed_memory()

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        probs = torch.cat([p for p, _ in self._val]).numpy()
        targets = torch.cat([t for _, t in self._val]).numpy()
        self._val.clear()
        probs, targets = _gather(probs), _gather(targets)
        loss = evaluation.binary_log_loss if self.multilabel else evaluation.log_loss
        # Computed over every validation clip on every rank (gathered above), so each rank logs
        # the same number: averaging per-rank losses would weight uneven shards wrongly and
        # MAP@3 does not average at all.
        self.log("val_loss", loss(targets, probs), prog_bar=True)
        self.log("val_map3", evaluation.map_at_k(targets, probs, 3), prog_bar=True)

    def predict_step(self, batch, batch_idx):
        x, owner, y = batch
        return clip_probabilities(self(x), owner, len(y), self.multilabel).float().cpu()

    def configure_optimizers(self) -> Any:
        t = self.recipe.training
        opt_cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
        if t.backbone_lr == 1.0:  # one group, as before the option existed (logs keep their names)
            groups = [{"params": list(self.net.parameters()), "lr": t.lr}]
        else:
            backbone, head = self.backbone_parameters()
            groups = [{"params": backbone, "lr": t.lr * t.backbone_lr}, {"params": head, "lr": t.lr}]
            groups = [g for g in groups if g["params"]]
        opt = opt_cls(groups, lr=t.lr, weight_decay=t.weight_decay)
        if t.scheduler == "none":
            return opt
        if t.scheduler == "warmup_cosine":
            total = int(self.trainer.estimated_stepping_batches)
            warm = min(total - 1, int(round(t.warmup_epochs * total / t.epochs)))
            sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(warm, total))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        if t.scheduler == "onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=[g["lr"] for g in groups], total_steps=int(self.trainer.estimated_stepping_batches)
            )
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t.epochs)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    def stretch_schedule(self, epochs: int) -> None:
        """Give the learning-rate schedule ``epochs`` epochs in all instead of the trainer's
        ``max_epochs``, going on from the step it is at: what keeping a time budget does once the
        first fold's real epochs say how many fit (:class:`soundtag.planning.Pace`)."""
        for config in self.trainer.lr_scheduler_configs:
            stretch_schedule(config.scheduler, epochs / self.trainer.max_epochs)


def stretch_schedule(sched: torch.optim.lr_scheduler.LRScheduler, ratio: float) -> None:
    """Make ``sched`` (one of the schedules a recipe names) ``ratio`` times as long, going on from
    the step it is at; a one-cycle or warm-up cosine schedule then gives the same rates from there
    on as one made that long from the start.
    """
    if isinstance(sched, torch.optim.lr_scheduler.OneCycleLR):
        # torch keeps each phase's end as a step; both of a two-phase cycle are fractions of the
        # total (pct_start x total - 1, total - 1), so they scale with it
        for phase in sched._schedule_phases:
            phase["end_step"] = (phase["end_step"] + 1) * ratio - 1
        sched.total_steps = round(sched.total_steps * ratio)
    elif isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR):
        sched.T_max = round(sched.T_max * ratio)
    elif isinstance(sched, torch.optim.lr_scheduler.LambdaLR) and all(
        isinstance(f, WarmupCosine) for f in sched.lr_lambdas
    ):
        for f in sched.lr_lambdas:
            f.total = round(f.total * ratio)
    else:
        raise TypeError(f"no way to stretch a {type(sched).__name__} schedule")


class WarmupCosine:
    """The ``warmup_cosine`` schedule's factor of the learning rate at a step: linear up to 1 over
    ``warm`` steps, then a cosine down to 0 at step ``total``. An object rather than a closure so
    that its ``total`` can be stretched and is saved in the scheduler's state.

    >>> f = WarmupCosine(warm=10, total=110)
    >>> f(0), f(9), round(f(60), 6), f(110)
    (0.1, 1.0, 0.5, 0.0)
    """

    def __init__(self, warm: int, total: int):
        self.warm, self.total = warm, total

    def __call__(self, step: int) -> float:
        if step < self.warm:
            return (step + 1) / self.warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - self.warm) / max(1, self.total - self.warm))))
