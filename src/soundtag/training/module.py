"""The LightningModule: a registered model, the recipe's batch augmentations and its loss.

Single-label data: softmax with cross-entropy on soft targets (mixup makes them soft).
Multi-label data: sigmoid with binary cross-entropy. Validation averages each clip's chunk
probabilities and logs ``val_loss`` and ``val_map3`` at clip level.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch

from soundtag import evaluation
from soundtag.recipe import Recipe
from soundtag.models import create_model
from soundtag.training import augment


def clip_probabilities(logits: torch.Tensor, owner: torch.Tensor, n_clips: int, multilabel: bool) -> torch.Tensor:
    """Mean of each clip's chunk probabilities, ``(n_clips, classes)``; rows of ``logits``
    past ``len(owner)`` (padding, see ``data.collate_chunks``) are dropped."""
    logits = logits[: len(owner)]
    probs = torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=1)
    total = torch.zeros(n_clips, probs.shape[1], dtype=probs.dtype, device=probs.device)
    total.index_add_(0, owner, probs)
    counts = torch.bincount(owner, minlength=n_clips).clamp(min=1).to(probs.dtype)
    return total / counts[:, None]


def _gather(array: np.ndarray) -> np.ndarray:
    """Concatenate an array's rows from every rank (shards may differ in length)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return array
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, array)
    return np.concatenate(parts)


class TaggerModule(L.LightningModule):
    """Trains one fold. Everything needed to tag a file later is in ``hparams``: the recipe,
    the label names, and the normaliser's statistics."""

    def __init__(self, recipe: dict, labels: list[str], multilabel: bool, normalizer: dict, fold: int = 0):
        super().__init__()
        self.save_hyperparameters()
        self.recipe = Recipe.model_validate(recipe)
        t = self.recipe.training
        self.model = create_model(t.model, num_classes=len(labels), in_chans=1, checkpoint=t.checkpoint,
                                  **t.model_args)
        self.multilabel = multilabel
        self.rng = np.random.default_rng([t.seed, fold])
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []

    def on_fit_start(self) -> None:
        # Each rank augments its own batches differently.
        t = self.recipe.training
        self.rng = np.random.default_rng([t.seed, self.hparams.fold, self.global_rank])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.multilabel:
            return torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
        return torch.nn.functional.cross_entropy(logits, targets)  # soft targets

    def augment(self, x: torch.Tensor, y: torch.Tensor,
                extents: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The recipe's augmentations of a batch. ``extents`` (``(batch, 2)`` sound frames)
        serve the augmentations whose ``relative_to`` is ``sound``.

        The kernel's order is kept (shift, reversal, masks, erasing, mixup) unless an
        augmentation is sized to the sound: then masks and erasing come first, while the
        extents still say where the sound is, and the shift and reversal move it afterwards.
        Mixup is always last.
        """
        a = self.recipe.training.augment
        sound = {name for name in ("shift", "specaugment", "erasing") if getattr(a, name).relative_to == "sound"}

        def shift(x):
            if a.shift.enabled:
                x = augment.time_shift(x, max_fraction=a.shift.max_fraction, rng=self.rng,
                                       extents=extents if "shift" in sound else None)
            if a.reverse.enabled:
                x = augment.time_reverse(x, p=a.reverse.p, rng=self.rng)
            return x

        def mask(x):
            s = a.specaugment
            if s.enabled:
                x = augment.spec_augment(x, time_masks=s.time_masks, time_width=s.time_width, freq_masks=s.freq_masks,
                                         freq_width=s.freq_width, rng=self.rng,
                                         extents=extents if "specaugment" in sound else None)
            if a.erasing.enabled:
                x = augment.random_erasing(x, p=a.erasing.p, area=a.erasing.area, aspect=a.erasing.aspect,
                                           rng=self.rng, extents=extents if "erasing" in sound else None)
            return x

        x = shift(mask(x)) if sound else mask(shift(x))
        if a.mixup.enabled:
            x, y = augment.mixup(x, y, alpha=a.mixup.alpha, rng=self.rng)
        return x, y

    def training_step(self, batch, batch_idx):
        x, y, extents = batch
        x, y = self.augment(x, y, extents)
        loss = self.loss(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(x),
                 sync_dist=True)  # equal shards: the mean of the ranks' means is the mean
        return loss

    def validation_step(self, batch, batch_idx):
        x, owner, y = batch
        probs = clip_probabilities(self(x), owner, len(y), self.multilabel)
        self._val.append((probs.float().cpu(), y.cpu()))

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
        opt = opt_cls(self.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        if t.scheduler == "none":
            return opt
        if t.scheduler == "onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=t.lr,
                                                        total_steps=int(self.trainer.estimated_stepping_batches))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t.epochs)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
