"""The plain baseline CNN that every other recipe is measured against, written with timm's surface.

Five 3x3 conv-BN-ReLU blocks (32-64-128-128-256 channels by default), a 2x2 max-pooling after
each of the first four, global average pooling over mels and frames (or, with
``time_pooling="mean+max"``, the mean over mels then the max plus the mean over frames, as PANNs
pool), dropout and one linear head: about 0.55M parameters for 50 classes. No large strides,
so a 0.3 s event in a 5 s window (15 frames at hop 320 / 16 kHz) still spans a frame of the
last map.

Takes ``(batch, in_chans, n_mels, frames)`` of any size and returns ``(batch, num_classes)``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from soundtag.errors import ParameterError
from soundtag.models.base import TaggerNet
from soundtag.models.kernels import _conv_bn
from soundtag.models.registry import register_model


class PlainCNN(TaggerNet):
    """Conv-BN-ReLU blocks with max-pooling between them, global average pooling, one head.

    Parameters
    ----------
    num_classes : outputs of the classifier
    in_chans : input channels (1 for a log-mel spectrogram)
    channels : widths of the blocks; a 2x2 max-pooling follows every block but the last
    dropout : dropout before the classifier
    pool_before_norm : max-pool each block's convolution output before its BatchNorm and ReLU
        instead of after them. Where a channel's BatchNorm scale is positive, BatchNorm + ReLU
        is increasing, so pooling first gives the same map, made from a quarter of the
        normalised values (the batch statistics then come from the pooled map). In a profile of
        one bf16 training step on 2 CPU cores, BatchNorm and ReLU (forward and backward, memory-
        bound over the full-size maps of the first blocks) took over a third of it; pooling first
        trained ESC-10 in 1.2-1.3x less time (docs/benchmarks.md).
    time_pooling : how the last map becomes one vector: ``"mean"`` over mels and frames, or
        ``"mean+max"``: the mean over mels, then the max over frames plus the mean over frames
        (PANNs' head), so that a short event in a long window is not averaged away. In the
        data-shape benchmark, against the mean at equal wall time, it gained 1.25 points on ESC-10
        and lost 1.0 on ESC-50 fold 1 (worked out from the rows of docs/benchmarks.md), so the
        mean stays the default
    """

    TIME_POOLINGS = ("mean", "mean+max")

    def __init__(
        self,
        num_classes: int,
        in_chans: int = 1,
        *,
        channels: Sequence[int] = (32, 64, 128, 128, 256),
        dropout: float = 0.3,
        pool_before_norm: bool = False,
        time_pooling: str = "mean",
    ):
        super().__init__()
        if time_pooling not in self.TIME_POOLINGS:
            raise ParameterError(f"time_pooling={time_pooling!r} must be one of {', '.join(self.TIME_POOLINGS)}")
        self.time_pooling = time_pooling
        channels = tuple(int(c) for c in channels)
        if not channels or min(channels) <= 0:
            raise ParameterError(f"channels={list(channels)} must be a non-empty list of positive widths")
        if not 0 <= dropout < 1:
            raise ParameterError(f"dropout={dropout} must be in [0, 1)")
        layers: list[nn.Module] = []
        cin = in_chans
        for i, width in enumerate(channels):
            conv, norm, relu = _conv_bn(cin, width)
            if i == len(channels) - 1:
                layers += [conv, norm, relu]
            elif pool_before_norm:
                layers += [conv, nn.MaxPool2d(2), norm, relu]
            else:
                layers += [conv, norm, relu, nn.MaxPool2d(2)]
            cin = width
        self.features = nn.Sequential(*layers)
        self.drop_rate = dropout
        self.num_features = cin
        self.classifier = nn.Linear(self.num_features, num_classes)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global pooling (:attr:`time_pooling`), then (unless ``pre_logits``) dropout and the classifier."""
        if self.time_pooling == "mean+max":
            per_frame = x.mean(dim=2)
            x = per_frame.amax(dim=2) + per_frame.mean(dim=2)
        else:
            x = x.mean(dim=(2, 3))
        if pre_logits:
            return x
        return self.classifier(nn.functional.dropout(x, self.drop_rate, self.training))


@register_model("plain-cnn")
def plain_cnn(
    num_classes: int,
    in_chans: int = 1,
    channels: Sequence[int] = (32, 64, 128, 128, 256),
    dropout: float = 0.3,
    pool_before_norm: bool = False,
    time_pooling: str = "mean",
) -> nn.Module:
    """The plain 0.55M-parameter baseline CNN (see :class:`PlainCNN`)."""
    return PlainCNN(
        num_classes,
        in_chans,
        channels=channels,
        dropout=dropout,
        pool_before_norm=pool_before_norm,
        time_pooling=time_pooling,
    )
