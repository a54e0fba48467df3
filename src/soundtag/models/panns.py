"""PANNs' CNN14 (Kong et al., 2020), written with timm's surface.

Every ``state_dict`` key and shape is that of the released AudioSet checkpoints
(``Cnn14_mAP=0.431.pth``, ``Cnn14_16k_mAP=0.438.pth``, ``Cnn14_DecisionLevelMax_mAP=0.385.pth``),
so their ``"model"`` state dict loads without renaming, less the torchlibrosa front-end
(``spectrogram_extractor.*``, ``logmel_extractor.*``): soundtag computes that input itself, from
the recipe (:mod:`soundtag.models.pretrained` checks the checkpoint's front-end against it).

Takes our layout ``(batch, 1, n_mels, frames)`` (64 mels) and runs the reference's maths on
``(batch, 1, frames, n_mels)``: BatchNorm over the mel bins (``bn0``), six blocks of two 3x3
conv-BN-ReLU with 2x2 average pooling after the first five, dropout 0.2 between blocks, mean
over mels, max + mean over time, ``fc1`` + ReLU, ``fc_audioset``. BatchNorm has PyTorch's
defaults (eps 1e-5, momentum 0.1), as in the reference.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from soundtag.models.base import TaggerNet
from soundtag.models.registry import register_model

WIDTHS = (64, 128, 256, 512, 1024, 2048)
#: Frames per output frame of the decision-level model (five 2x poolings), as the reference's
#: ``interpolate_ratio``.
TIME_RATIO = 32


class _ConvBlock(nn.Module):
    """Two 3x3 conv-BN-ReLU; keys ``conv1``, ``bn1``, ``conv2``, ``bn2`` as the reference."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.bn2 = nn.BatchNorm2d(cout)
        for conv in (self.conv1, self.conv2):
            nn.init.xavier_uniform_(conv.weight)

    def forward(self, x: torch.Tensor, pool: bool) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.avg_pool2d(x, 2) if pool else x


class Cnn14(TaggerNet):
    """CNN14 with a clip-level head (``decision="clip"``) or DecisionLevelMax (``"max"``).

    Parameters
    ----------
    num_classes : outputs (527 for AudioSet)
    in_chans : must be 1 for the released weights
    n_mels : mel bins (64 in every released model): the size of ``bn0``
    decision : ``clip`` pools the last map, then classifies (``Cnn14``); ``max`` classifies
        every output frame and takes the maximum logit over time (``Cnn14_DecisionLevelMax``,
        whose framewise output :meth:`framewise_logits` gives)
    """

    def __init__(self, num_classes: int, in_chans: int = 1, *, n_mels: int = 64, decision: str = "clip"):
        super().__init__()
        if decision not in ("clip", "max"):
            from soundtag.errors import ParameterError

            raise ParameterError(f"decision={decision!r} must be 'clip' or 'max'")
        self.decision = decision
        self.segment_frames = TIME_RATIO if decision == "max" else None
        self.bn0 = nn.BatchNorm2d(n_mels)
        cin = in_chans
        for i, width in enumerate(WIDTHS, start=1):
            setattr(self, f"conv_block{i}", _ConvBlock(cin, width))
            cin = width
        self.fc1 = nn.Linear(cin, cin)
        self.fc_audioset = nn.Linear(cin, num_classes)
        self.num_features = cin
        for fc in (self.fc1, self.fc_audioset):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)

    @property
    def classifier(self) -> nn.Linear:  # timm's name for the last layer
        return self.fc_audioset

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, 1, n_mels, frames)`` -> the last map ``(batch, 2048, frames / 32, n_mels / 32)``."""
        x = x.transpose(2, 3)  # the reference's (batch, 1, frames, mels)
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)
        for i in range(1, len(WIDTHS) + 1):
            x = getattr(self, f"conv_block{i}")(x, pool=i < len(WIDTHS))
            x = F.dropout(x, 0.2, self.training)
        return x

    def _frame_features(self, x: torch.Tensor) -> torch.Tensor:
        """The decision-level model's ``relu(fc1)`` per output frame, ``(batch, frames', 2048)``."""
        x = x.mean(dim=3)
        # The reference's max_pool1d(3, 1, 1) + avg_pool1d(3, 1, 1), as shifted slices: the
        # ONNX exporter fixed the time axis of the pooling calls, and tagging needs it dynamic.
        lo, hi = F.pad(x, (1, 1), value=float("-inf")), F.pad(x, (1, 1))
        x = (
            torch.maximum(torch.maximum(lo[..., :-2], lo[..., 1:-1]), lo[..., 2:])
            + (hi[..., :-2] + hi[..., 1:-1] + hi[..., 2:]) / 3
        )
        x = F.dropout(x, 0.5, self.training).transpose(1, 2)
        return F.relu(self.fc1(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Clip logits (or, with ``pre_logits``, the 2048-d embedding after ``fc1``)."""
        if self.decision == "max":
            frames = self._frame_features(x)
            if pre_logits:
                return frames.amax(dim=1)
            # sigmoid is monotonic: the maximum logit is the reference's maximum probability.
            return self.fc_audioset(F.dropout(frames, 0.5, self.training)).amax(dim=1)
        x = x.mean(dim=3)
        x = x.amax(dim=2) + x.mean(dim=2)
        x = F.relu(self.fc1(F.dropout(x, 0.5, self.training)))
        if pre_logits:
            return x
        return self.fc_audioset(x)

    def framewise_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits per input frame ``(batch, frames, classes)`` of the decision-level model.

        As the reference: each output frame repeated ``TIME_RATIO`` times, then the last one
        repeated up to the input's frame count.
        """
        frames = x.shape[-1]
        logits = self.segment_logits(x).repeat_interleave(TIME_RATIO, dim=1)[:, :frames]
        pad = frames - logits.shape[1]
        return torch.cat([logits, logits[:, -1:].expand(-1, pad, -1)], dim=1) if pad > 0 else logits

    def segment_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits per output segment ``(batch, frames // TIME_RATIO, classes)`` of the
        decision-level model: :meth:`framewise_logits` before the repetition."""
        if self.decision != "max":
            from soundtag.errors import ParameterError

            raise ParameterError("segment output needs the decision-level model (panns-cnn14-dlm)")
        return self.fc_audioset(F.dropout(self._frame_features(self.forward_features(x)), 0.5, self.training))

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh ``fc_audioset`` for ``num_classes`` outputs (the backbone and ``fc1`` are kept)."""
        self.fc_audioset = nn.Linear(self.num_features, num_classes)
        nn.init.xavier_uniform_(self.fc_audioset.weight)
        nn.init.zeros_(self.fc_audioset.bias)


@register_model("panns-cnn14")
def panns_cnn14(num_classes: int, in_chans: int = 1, n_mels: int = 64) -> nn.Module:
    """PANNs' ``Cnn14`` (32 kHz front-end; see the ``panns-cnn14-ft`` recipe)."""
    return Cnn14(num_classes, in_chans, n_mels=n_mels)


@register_model("panns-cnn14-16k")
def panns_cnn14_16k(num_classes: int, in_chans: int = 1, n_mels: int = 64) -> nn.Module:
    """PANNs' ``Cnn14_16k``: the same network on a 16 kHz front-end (``panns-cnn14-16k-ft``)."""
    return Cnn14(num_classes, in_chans, n_mels=n_mels)


@register_model("panns-cnn14-dlm")
def panns_cnn14_dlm(num_classes: int, in_chans: int = 1, n_mels: int = 64) -> nn.Module:
    """PANNs' ``Cnn14_DecisionLevelMax``: framewise decisions, their maximum for the clip."""
    return Cnn14(num_classes, in_chans, n_mels=n_mels, decision="max")
