"""iResNet-18/34/50/100: the improved residual networks used by ArcFace.

Duta et al., "Improved Residual Networks for Image and Video Recognition" (2020), as
adapted for face recognition by the insightface ``arcface_torch`` recipe. The module
names and parameter shapes follow that recipe's published checkpoints, so its weights
load here with ``load_state_dict(strict=True)``:

- stem ``conv1`` (64, 3, 3, 3), ``bn1``, ``prelu``;
- ``layer1..4`` with 64, 128, 256, 512 channels, each starting with stride 2; a block is
  ``bn1 -> conv1 (3x3) -> bn2 -> prelu -> conv2 (3x3, stride s) -> bn3`` plus the shortcut,
  ``downsample.0`` (1x1 conv, stride s) / ``downsample.1`` (BN) on each layer's first block;
- head ``bn2`` (BN over 512 maps) -> flatten -> ``dropout`` -> ``fc`` (512 (S/16)^2 -> D) ->
  ``features`` (BatchNorm1d D whose scale is fixed at 1 and not trained).

S is the input side (112 for the published models, giving 7x7 final maps).
"""

from __future__ import annotations

import torch
from torch import nn

from cleanface.errors import ConfigError
from cleanface.models._registry import register_backbone

_BN_EPS = 1e-5
_WIDTHS = (64, 128, 256, 512)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Pre-activation residual block: BN, conv, BN, PReLU, strided conv, BN, plus shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, eps=_BN_EPS)
        self.conv1 = _conv3x3(cin, cout)
        self.bn2 = nn.BatchNorm2d(cout, eps=_BN_EPS)
        self.prelu = nn.PReLU(cout)
        self.conv2 = _conv3x3(cout, cout, stride)
        self.bn3 = nn.BatchNorm2d(cout, eps=_BN_EPS)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(cout, eps=_BN_EPS),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


class IResNet(nn.Module):
    """iResNet backbone: ``forward(x (B, 3, S, S)) -> (B, D)`` un-normalised embeddings.

    Parameters
    ----------
    layers
        Blocks per stage, e.g. ``(3, 4, 14, 3)`` for iResNet-50.
    embedding_size
        D.
    input_size
        S, the input side in pixels; a multiple of 16 (112 for published weights).
    dropout
        Dropout probability before ``fc`` (0 in the published recipe).
    """

    def __init__(self, layers: tuple[int, int, int, int], embedding_size: int = 512, input_size: int = 112, dropout: float = 0.0) -> None:
        super().__init__()
        if input_size % 16:
            raise ConfigError(f"iresnet input_size must be a multiple of 16, got {input_size}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"iresnet dropout must be in [0, 1), got {dropout}")
        self.embedding_size = embedding_size
        self.input_size = input_size
        self.conv1 = _conv3x3(3, _WIDTHS[0])
        self.bn1 = nn.BatchNorm2d(_WIDTHS[0], eps=_BN_EPS)
        self.prelu = nn.PReLU(_WIDTHS[0])
        cin = _WIDTHS[0]
        for i, (width, depth) in enumerate(zip(_WIDTHS, layers), start=1):
            blocks = [IBasicBlock(cin, width, stride=2)] + [IBasicBlock(width, width) for _ in range(depth - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
            cin = width
        side = input_size // 16
        self.bn2 = nn.BatchNorm2d(cin, eps=_BN_EPS)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(cin * side * side, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=_BN_EPS)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self.features.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed a batch: ``x (B, 3, S, S)`` -> ``(B, D)``."""
        if x.shape[-2:] != (self.input_size, self.input_size):
            raise ConfigError(f"iresnet built for {self.input_size}x{self.input_size} input, got {tuple(x.shape[-2:])}")
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.bn2(x), 1)
        return self.features(self.fc(self.dropout(x)))


@register_backbone
def iresnet18(embedding_size: int = 512, input_size: int = 112, dropout: float = 0.0) -> IResNet:
    """iResNet-18: blocks (2, 2, 2, 2)."""
    return IResNet((2, 2, 2, 2), embedding_size, input_size, dropout)


@register_backbone
def iresnet34(embedding_size: int = 512, input_size: int = 112, dropout: float = 0.0) -> IResNet:
    """iResNet-34: blocks (3, 4, 6, 3)."""
    return IResNet((3, 4, 6, 3), embedding_size, input_size, dropout)


@register_backbone
def iresnet50(embedding_size: int = 512, input_size: int = 112, dropout: float = 0.0) -> IResNet:
    """iResNet-50: blocks (3, 4, 14, 3)."""
    return IResNet((3, 4, 14, 3), embedding_size, input_size, dropout)


@register_backbone
def iresnet100(embedding_size: int = 512, input_size: int = 112, dropout: float = 0.0) -> IResNet:
    """iResNet-100: blocks (3, 13, 30, 3)."""
    return IResNet((3, 13, 30, 3), embedding_size, input_size, dropout)
