"""The CNNs of the FSDKaggle2018 recipe, written with timm's surface.

All take ``(batch, in_chans, n_mels, frames)`` of any size (global pooling before the head) and
return logits ``(batch, num_classes)``.
"""

from __future__ import annotations

import torch
from torch import nn

from soundtag.models.base import TaggerNet
from soundtag.models.registry import register_model


class _Tagger(TaggerNet):
    """Shared surface: ``features`` make a map, ``forward_head`` pools and classifies."""

    def __init__(
        self, features: nn.Module, channels: int, num_classes: int, *, hidden: int | None = None, drop_rate: float = 0.5
    ):
        super().__init__()
        self.features = features
        self.drop_rate = drop_rate
        # Mean over frequency then max and mean over time: a sound event may be short, so the
        # strongest moment matters as much as the average one.
        self.pre_logits = (
            nn.Sequential(nn.Linear(2 * channels, hidden), nn.ReLU(inplace=True)) if hidden else nn.Identity()
        )
        self.num_features = hidden or 2 * channels
        self.classifier = nn.Linear(self.num_features, num_classes)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=2)
        x = torch.cat([x.amax(dim=2), x.mean(dim=2)], dim=1)
        x = nn.functional.dropout(x, self.drop_rate, self.training)
        x = self.pre_logits(x)
        if pre_logits:
            return x
        return self.classifier(nn.functional.dropout(x, self.drop_rate, self.training))


def _conv_bn(cin: int, cout: int, kernel=3, stride=1) -> list[nn.Module]:
    pad = tuple(k // 2 for k in kernel) if isinstance(kernel, tuple) else kernel // 2
    return [nn.Conv2d(cin, cout, kernel, stride, pad, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


@register_model("alexnet-kernel")
def alexnet_kernel(num_classes: int, in_chans: int = 1, drop_rate: float = 0.5) -> nn.Module:
    """The kernel's default AlexNet-like net: large strided first filters, five conv layers."""
    features = nn.Sequential(
        *_conv_bn(in_chans, 48, 11, (2, 3)),
        nn.MaxPool2d(3, (1, 2), 1),
        *_conv_bn(48, 128, 5, (2, 3)),
        nn.MaxPool2d(3, 2, 1),
        *_conv_bn(128, 192),
        *_conv_bn(192, 192),
        *_conv_bn(192, 128),
        nn.MaxPool2d(3, (1, 2), 1),
    )
    return _Tagger(features, 128, num_classes, hidden=256, drop_rate=drop_rate)


@register_model("vgg")
def vgg(num_classes: int, in_chans: int = 1, widths=(64, 128, 256, 512), drop_rate: float = 0.3) -> nn.Module:
    """VGG-like: blocks of two 3x3 conv-BN-ReLU and 2x2 average pooling, global pooling."""
    layers, cin = [], in_chans
    for i, width in enumerate(widths):
        layers += _conv_bn(cin, width) + _conv_bn(width, width)
        if i < len(widths) - 1:
            layers.append(nn.AvgPool2d(2))
        cin = width
    return _Tagger(nn.Sequential(*layers), cin, num_classes, drop_rate=drop_rate)


class _SEBottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int, reduction: int = 16):
        super().__init__()
        cout = width * self.expansion
        self.body = nn.Sequential(
            *_conv_bn(cin, width, 1),
            *_conv_bn(width, width, 3, stride),
            nn.Conv2d(width, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.se = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(cout, max(cout // reduction, 8), 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(max(cout // reduction, 8), cout, 1),
            nn.Sigmoid(),
        )
        self.shortcut = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return torch.relu(y * self.se(y) + self.shortcut(x))


@register_model("seresnet-kernel")
def seresnet_kernel(
    num_classes: int, in_chans: int = 1, depths=(3, 4, 4, 3), widths=(32, 64, 128, 256), drop_rate: float = 0.3
) -> nn.Module:
    """SE-ResNet with bottleneck blocks: a half-width ResNet-50 with squeeze-excitation."""
    layers: list[nn.Module] = [*_conv_bn(in_chans, widths[0], 7, 2), nn.MaxPool2d(3, 2, 1)]
    cin = widths[0]
    for stage, (depth, width) in enumerate(zip(depths, widths)):
        for block in range(depth):
            stride = 2 if block == 0 and stage > 0 else 1
            layers.append(_SEBottleneck(cin, width, stride))
            cin = width * _SEBottleneck.expansion
    return _Tagger(nn.Sequential(*layers), cin, num_classes, drop_rate=drop_rate)
