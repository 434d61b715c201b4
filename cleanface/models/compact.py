"""A compact residual face backbone sized for a laptop or a 2-core CPU.

A stride-2 stem and three residual stages (each halving the maps) reduce a 64x64 face
to 4x4 maps (below 64 pixels the stem keeps stride 1, so 32x32 faces also end at 4x4);
the head then follows the iResNet recipe (BN -> flatten -> FC -> BN1d)
but pools the final maps adaptively to at most ``pool`` x ``pool`` first, so one model
accepts 32x32, 64x64 or 112x112 input. Convolutions carry the stride on the first 3x3
conv of a block, so most work runs on the smaller maps. ``width`` scales all channels.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from cleanface.errors import ConfigError
from cleanface.models._registry import register_backbone

_BASE_WIDTHS = (16, 32, 64, 128)  # stem, stage 1, stage 2, stage 3 at width 1.0


def _conv_bn(cin: int, cout: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """conv3x3 (stride) -> BN -> PReLU -> conv3x3 -> BN, plus a (projected) shortcut, then PReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv_bn(cin, cout, 3, stride)
        self.prelu1 = nn.PReLU(cout)
        self.conv2 = _conv_bn(cout, cout, 3, 1)
        self.shortcut = _conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()
        self.prelu2 = nn.PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prelu2(self.conv2(self.prelu1(self.conv1(x))) + self.shortcut(x))


class CompactNet(nn.Module):
    """Compact residual backbone: ``forward(x (B, 3, H, W)) -> (B, D)`` un-normalised embeddings.

    Parameters
    ----------
    embedding_size
        D.
    input_size
        Side of the square input the model is built for; it fixes the pooled head size
        (``min(pool, ceil(input_size / 16))``). Other sizes still run: the final maps are
        pooled adaptively to the same size.
    width
        Channel multiplier (1.0: 16-32-64-128 channels; 2.0 doubles them).
    depths
        Residual blocks in each of the three stages.
    pool
        Largest side of the pooled final maps fed to the FC layer.
    stem_stride
        Stride of the stem conv (1 or 2); None: 2 for ``input_size`` >= 64, else 1.
    dropout
        Dropout probability before the FC layer.
    """

    def __init__(
        self,
        embedding_size: int = 512,
        input_size: int = 112,
        width: float = 1.0,
        depths: tuple[int, int, int] = (1, 2, 2),
        pool: int = 4,
        dropout: float = 0.0,
        stem_stride: int | None = None,
    ) -> None:
        super().__init__()
        if input_size < 16:
            raise ConfigError(f"compact input_size must be at least 16, got {input_size}")
        if not width > 0:
            raise ConfigError(f"compact width must be positive, got {width}")
        if len(depths) != 3 or min(depths) < 1:
            raise ConfigError(f"compact depths must be three positive block counts, got {depths}")
        if pool < 1:
            raise ConfigError(f"compact pool must be at least 1, got {pool}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"compact dropout must be in [0, 1), got {dropout}")
        if stem_stride is None:
            stem_stride = 2 if input_size >= 64 else 1
        if stem_stride not in (1, 2):
            raise ConfigError(f"compact stem_stride must be 1 or 2, got {stem_stride}")
        self.embedding_size = embedding_size
        self.input_size = input_size
        widths = [max(8, int(round(w * width / 8)) * 8) for w in _BASE_WIDTHS]
        self.stem = nn.Sequential(_conv_bn(3, widths[0], 3, stem_stride), nn.PReLU(widths[0]))
        stages = []
        cin = widths[0]
        for cout, depth in zip(widths[1:], depths):
            stages.append(nn.Sequential(BasicBlock(cin, cout, 2), *[BasicBlock(cout, cout) for _ in range(depth - 1)]))
            cin = cout
        self.stages = nn.Sequential(*stages)
        side = math.ceil(input_size / stem_stride)
        for _ in range(3):
            side = math.ceil(side / 2)
        self.pool_size = min(pool, side)
        self.bn = nn.BatchNorm2d(cin)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(cin * self.pool_size**2, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed a batch: ``x (B, 3, H, W)`` -> ``(B, D)``."""
        x = self.bn(self.stages(self.stem(x)))
        if x.shape[-1] != self.pool_size or x.shape[-2] != self.pool_size:
            x = F.adaptive_avg_pool2d(x, self.pool_size)
        return self.features(self.fc(self.dropout(torch.flatten(x, 1))))


@register_backbone
def compact(
    embedding_size: int = 512,
    input_size: int = 112,
    width: float = 1.0,
    depths: tuple[int, int, int] = (1, 2, 2),
    pool: int = 4,
    dropout: float = 0.0,
    stem_stride: int | None = None,
) -> CompactNet:
    """Compact residual network (about 0.94M parameters at width 1, 128-d, 64x64 input)."""
    return CompactNet(embedding_size, input_size, width, tuple(depths), pool, dropout, stem_stride)  # type: ignore[arg-type]
