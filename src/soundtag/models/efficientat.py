"""EfficientAT's MobileNetV3 audio taggers (Schmid et al., 2023), written with timm's surface.

The layout and every ``state_dict`` key and shape follow the released AudioSet checkpoints
(``mn04_as_mAP_432.pt``, ``mn10_as_mAP_471.pt``, ``mn40_as_mAP_484.pt``, ...: flat state dicts,
527 classes, one input channel), so ``model.load_state_dict`` takes them as they are, with no key
renamed (read through :func:`soundtag.checkpoints.read_state_dict`). Only the released defaults are
built: channel-wise squeeze-excitation, strides (2, 2, 2, 2), no dilation, full tail and the
``mlp`` head. DyMN is not included.

Takes a log-mel spectrogram ``(batch, in_chans, n_mels, frames)`` of any size (128 mels at hop
320 / 32 kHz for the released weights; the net downsamples both axes 32 times) and returns logits
``(batch, num_classes)``; the reference returns ``(logits, features)`` instead.
"""

from __future__ import annotations

import torch
from torch import nn

from soundtag.errors import ParameterError
from soundtag.models.base import TaggerNet
from soundtag.models.registry import register_model

# MobileNetV3-Large's bottlenecks: kernel, expanded width, output width, squeeze-excitation,
# hard-swish (else ReLU), stride. Widths are for width_mult 1; the stem makes 16 channels.
_BLOCKS = (
    (3, 16, 16, False, False, 1),
    (3, 64, 24, False, False, 2),
    (3, 72, 24, False, False, 1),
    (5, 72, 40, True, False, 2),
    (5, 120, 40, True, False, 1),
    (5, 120, 40, True, False, 1),
    (3, 240, 80, False, True, 2),
    (3, 200, 80, False, True, 1),
    (3, 184, 80, False, True, 1),
    (3, 184, 80, False, True, 1),
    (3, 480, 112, True, True, 1),
    (3, 672, 112, True, True, 1),
    (5, 672, 160, True, True, 2),
    (5, 960, 160, True, True, 1),
    (5, 960, 160, True, True, 1),
)
_STEM_WIDTH = 16
_HEAD_WIDTH = 1280


def _round_width(width: float, divisor: int = 8) -> int:
    """``width`` rounded to the nearest multiple of ``divisor`` (at least ``divisor``), never
    more than 10% below it: MobileNet's channel rule, so the released shapes come out."""
    rounded = max(divisor, int(width + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * width else rounded


def _conv_bn_act(
    cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: type[nn.Module] | None = None
) -> nn.Sequential:
    """Conv (no bias, padding ``(kernel - 1) // 2``), BatchNorm and an optional activation: keys ``0`` and ``1``."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        # The released weights were trained with TensorFlow's BatchNorm settings.
        nn.BatchNorm2d(cout, eps=0.001, momentum=0.01),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class _ChannelGate(nn.Module):
    """Squeeze-excitation over channels: mean over mels and frames, ``fc1``, ReLU, ``fc2``, sigmoid."""

    def __init__(self, channels: int, squeezed: int):
        super().__init__()
        self.fc1 = nn.Linear(channels, squeezed)
        self.fc2 = nn.Linear(squeezed, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc2(torch.relu(self.fc1(x.mean(dim=(2, 3)))))
        return x * torch.sigmoid(scale)[:, :, None, None]


class _SqueezeExcitation(nn.Module):
    """EfficientAT's "concurrent" squeeze-excitation with its released setting: one gate, over channels.

    The reference can run gates over channels, mels and frames side by side and take their
    maximum; with the channel gate alone that maximum is the gate itself. The ModuleList keeps
    the reference's key names (``conc_se_layers.0.fc1.weight``).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conc_se_layers = nn.ModuleList([_ChannelGate(channels, _round_width(channels // 4))])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conc_se_layers[0](x)


class _InvertedResidual(nn.Module):
    """A bottleneck: 1x1 expansion (left out when it would not widen), depthwise conv, optional
    squeeze-excitation, linear 1x1 projection; a shortcut when the shape is kept."""

    def __init__(self, cin: int, kernel: int, expanded: int, cout: int, se: bool, hardswish: bool, stride: int):
        super().__init__()
        act = nn.Hardswish if hardswish else nn.ReLU
        layers: list[nn.Module] = []
        if expanded != cin:
            layers.append(_conv_bn_act(cin, expanded, act=act))
        layers.append(_conv_bn_act(expanded, expanded, kernel, stride, groups=expanded, act=act))
        if se:
            layers.append(_SqueezeExcitation(expanded))
        layers.append(_conv_bn_act(expanded, cout))
        self.block = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_res_connect else out


class EfficientATMobileNet(TaggerNet):
    """EfficientAT's MobileNetV3 ("mn" models): a stem, 15 bottlenecks, a 1x1 conv, an MLP head.

    ``features`` ends in ``6 * round(160 * width_mult)`` channels (960 for mn10);
    ``classifier`` is the reference's ``mlp`` head: average pooling, flatten, a Linear to
    ``num_features`` (1280 for mn10), hard-swish, dropout and the last Linear
    (``classifier.5``).

    Parameters
    ----------
    num_classes : outputs of the classifier (527 for the released AudioSet weights)
    in_chans : input channels (1 for the released weights)
    width_mult : width multiplier of every layer (0.4 for mn04, 1.0 for mn10, 4.0 for mn40)
    dropout : dropout before the last Linear
    """

    def __init__(self, num_classes: int, in_chans: int = 1, *, width_mult: float = 1.0, dropout: float = 0.2):
        super().__init__()
        if num_classes <= 0 or in_chans <= 0:
            raise ParameterError(f"num_classes={num_classes} and in_chans={in_chans} must be positive integers")
        if not width_mult > 0:
            raise ParameterError(f"width_mult={width_mult} must be positive")
        if not 0 <= dropout < 1:
            raise ParameterError(f"dropout={dropout} must be in [0, 1)")
        cin = _round_width(_STEM_WIDTH * width_mult)
        layers: list[nn.Module] = [_conv_bn_act(in_chans, cin, 3, 2, act=nn.Hardswish)]
        for kernel, expanded, cout, se, hardswish, stride in _BLOCKS:
            cout = _round_width(cout * width_mult)
            layers.append(
                _InvertedResidual(cin, kernel, _round_width(expanded * width_mult), cout, se, hardswish, stride)
            )
            cin = cout
        layers.append(_conv_bn_act(cin, 6 * cin, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.num_features = _round_width(_HEAD_WIDTH * width_mult)
        self.drop_rate = dropout
        # Indices 2 and 5 are the keys of the released head (classifier.2.*, classifier.5.*).
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(1),
            nn.Linear(6 * cin, self.num_features),
            nn.Hardswish(),
            nn.Dropout(dropout),
            nn.Linear(self.num_features, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                _init_linear(m)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pooling, Linear and hard-swish (the ``num_features`` embedding if ``pre_logits``),
        then dropout and the last Linear."""
        for layer in self.classifier[:4]:
            x = layer(x)
        if pre_logits:
            return x
        return self.classifier[5](self.classifier[4](x))

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh last Linear for ``num_classes`` outputs; the rest of the head and its key names are kept."""
        if num_classes <= 0:
            raise ParameterError(f"num_classes={num_classes} must be a positive integer")
        self.classifier[5] = _init_linear(nn.Linear(self.num_features, num_classes))


def _init_linear(layer: nn.Linear) -> nn.Linear:
    """The reference's initialisation of a Linear: weights N(0, 0.01), zero bias."""
    nn.init.normal_(layer.weight, 0, 0.01)
    nn.init.zeros_(layer.bias)
    return layer


def _build(width_mult: float, num_classes: int, in_chans: int, options: dict) -> EfficientATMobileNet:
    unknown = sorted(set(options) - {"dropout"})
    if unknown:
        raise ParameterError(f"unknown option(s) {unknown} for an EfficientAT model: only 'dropout' can be set")
    return EfficientATMobileNet(num_classes, in_chans, width_mult=width_mult, **options)


@register_model("efficientat-mn04")
def efficientat_mn04(num_classes: int, in_chans: int = 1, **options) -> nn.Module:
    """EfficientAT's mn04 (width 0.4, 0.98M parameters at 527 classes; see :class:`EfficientATMobileNet`)."""
    return _build(0.4, num_classes, in_chans, options)


@register_model("efficientat-mn10")
def efficientat_mn10(num_classes: int, in_chans: int = 1, **options) -> nn.Module:
    """EfficientAT's mn10 (width 1.0, 4.88M parameters at 527 classes; see :class:`EfficientATMobileNet`)."""
    return _build(1.0, num_classes, in_chans, options)


@register_model("efficientat-mn40")
def efficientat_mn40(num_classes: int, in_chans: int = 1, **options) -> nn.Module:
    """EfficientAT's mn40 (width 4.0, 68.4M parameters at 527 classes; see :class:`EfficientATMobileNet`)."""
    return _build(4.0, num_classes, in_chans, options)
