"""timm's model surface, shared by every model of ours."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TaggerNet", "segment_frames"]


class TaggerNet(nn.Module):
    """``forward_features`` makes a map (``self.features``), ``forward_head`` pools and classifies.

    A subclass sets ``features``, ``num_features`` and ``classifier`` and defines
    ``forward_head(x, pre_logits=False)``; ``forward`` and ``reset_classifier`` come from here,
    so embeddings, ensembling and the review page need no special cases.
    """

    features: nn.Module
    classifier: nn.Module
    num_features: int
    #: Input frames per segment of :meth:`segment_logits`, for a model that decides per segment of
    #: time (PANNs' DecisionLevelMax): its own segments make ``tag --timeline``. None for a model
    #: that decides per clip.
    segment_frames: int | None = None

    def segment_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits per segment of time ``(batch, frames // segment_frames, classes)``; only for a
        model whose :attr:`segment_frames` is set."""
        raise NotImplementedError(f"{type(self).__name__} decides per clip: it has no segment output")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, in_chans, mels, frames)`` -> the last map ``(batch, channels, m, f)``."""
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh classifier for ``num_classes`` outputs (the backbone is kept)."""
        self.classifier = nn.Linear(self.num_features, num_classes)


def segment_frames(model: nn.Module) -> int | None:
    """The input frames per segment of a model that decides per segment of time (declared by the
    model itself, :attr:`TaggerNet.segment_frames`); None for any other model, timm's included."""
    return getattr(model, "segment_frames", None)
