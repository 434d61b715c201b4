"""MobileFaceNet: a one-million-parameter face backbone with a global depthwise head.

Chen et al., "MobileFaceNets: Efficient CNNs for Accurate Real-Time Face Verification
on Mobile Devices" (2018). Inverted-residual bottlenecks (1x1 expand, 3x3 depthwise,
1x1 linear projection) reduce a 112x112 face to 7x7 maps; the GDC head (a depthwise
conv whose kernel covers the whole 7x7 map) then weights each position separately
instead of averaging them, which matters for aligned faces.
"""

from __future__ import annotations

import torch
from torch import nn

from cleanface.errors import ConfigError
from cleanface.models._registry import register_backbone


def _conv_bn(cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    """Conv (no bias) -> BN -> optional PReLU."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.PReLU(cout))
    return nn.Sequential(*layers)


class Bottleneck(nn.Module):
    """Inverted residual: 1x1 expand to ``hidden`` -> 3x3 depthwise (stride) -> 1x1 linear projection."""

    def __init__(self, cin: int, cout: int, hidden: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_bn(cin, hidden),
            _conv_bn(hidden, hidden, kernel=3, stride=stride, groups=hidden),
            _conv_bn(hidden, cout, act=False),
        )
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return out + x if self.residual else out


# (out channels, expanded channels, repeats, stride of the first repeat)
_STAGES = ((64, 128, 5, 2), (128, 256, 1, 2), (128, 256, 6, 1), (128, 512, 1, 2), (128, 256, 2, 1))


class MobileFaceNet(nn.Module):
    """MobileFaceNet: ``forward(x (B, 3, S, S)) -> (B, D)`` un-normalised embeddings.

    Parameters
    ----------
    embedding_size
        D.
    input_size
        S, a multiple of 16 (the GDC kernel covers the final S/16 x S/16 maps).
    """

    def __init__(self, embedding_size: int = 512, input_size: int = 112) -> None:
        super().__init__()
        if input_size % 16:
            raise ConfigError(f"mobilefacenet input_size must be a multiple of 16, got {input_size}")
        self.embedding_size = embedding_size
        self.input_size = input_size
        layers: list[nn.Module] = [_conv_bn(3, 64, kernel=3, stride=2), _conv_bn(64, 64, kernel=3, groups=64)]
        cin = 64
        for cout, hidden, repeats, stride in _STAGES:
            for i in range(repeats):
                layers.append(Bottleneck(cin, cout, hidden, stride if i == 0 else 1))
                cin = cout
        layers.append(_conv_bn(cin, 512))
        self.body = nn.Sequential(*layers)
        side = input_size // 16
        self.gdc = _conv_bn(512, 512, kernel=side, groups=512, act=False)
        self.gdc[0].padding = (0, 0)
        self.fc = nn.Linear(512, embedding_size, bias=False)
        self.features = nn.BatchNorm1d(embedding_size)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed a batch: ``x (B, 3, S, S)`` -> ``(B, D)``."""
        if x.shape[-2:] != (self.input_size, self.input_size):
            raise ConfigError(f"mobilefacenet built for {self.input_size}x{self.input_size} input, got {tuple(x.shape[-2:])}")
        x = torch.flatten(self.gdc(self.body(x)), 1)
        return self.features(self.fc(x))


@register_backbone
def mobilefacenet(embedding_size: int = 512, input_size: int = 112) -> MobileFaceNet:
    """MobileFaceNet with a GDC head (about 1.0M parameters at 128-d, 1.2M at 512-d)."""
    return MobileFaceNet(embedding_size, input_size)
