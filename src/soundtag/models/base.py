"""timm's model surface, shared by every model of ours."""

from __future__ import annotations

import torch
from torch import nn


class TaggerNet(nn.Module):
    """``forward_features`` makes a map (``self.features``), ``forward_head`` pools and classifies.

    A subclass sets ``features``, ``num_features`` and ``classifier`` and defines
    ``forward_head(x, pre_logits=False)``; ``forward`` and ``reset_classifier`` come from here,
    so embeddings, ensembling and the review page need no special cases.
    """

    features: nn.Module
    classifier: nn.Module
    num_features: int

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
