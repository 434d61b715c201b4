"""The compact CPU backbone: any input side, the width multiplier, its size."""

from __future__ import annotations

import pytest
import torch

from cleanface.models import create_backbone


@pytest.mark.parametrize(("size", "stride", "pooled"), [(32, 1, 4), (64, 2, 4), (112, 2, 4), (48, 1, 4), (16, 1, 2)])
def test_final_maps_are_pooled_to_at_most_four(size: int, stride: int, pooled: int) -> None:
    model = create_backbone("compact", embedding_size=24, input_size=size).eval()
    assert model.stem[0][0].stride == (stride, stride)
    assert model.pool_size == pooled
    assert model.fc.in_features == 128 * pooled * pooled
    with torch.no_grad():
        assert model(torch.randn(2, 3, size, size)).shape == (2, 24)


def test_stem_stride_can_be_forced() -> None:
    model = create_backbone("compact", embedding_size=24, input_size=32, stem_stride=2)
    assert model.pool_size == 2 and model.fc.in_features == 128 * 4


def test_a_model_built_for_64_accepts_other_sides() -> None:
    model = create_backbone("compact", embedding_size=24, input_size=64).eval()
    with torch.no_grad():
        for side in (64, 80, 112):
            assert model(torch.randn(1, 3, side, side)).shape == (1, 24)


def test_width_scales_channels_and_parameters() -> None:
    def count(width: float) -> int:
        model = create_backbone("compact", embedding_size=128, input_size=64, width=width)
        return sum(p.numel() for p in model.parameters())

    small, base, wide = count(0.5), count(1.0), count(2.0)
    assert small < base < wide
    assert 0.5e6 < base < 2e6  # a few million parameters or less
    model = create_backbone("compact", embedding_size=128, input_size=64, width=2.0)
    assert model.fc.in_features == 256 * 16


def test_mobilefacenet_has_about_one_million_parameters() -> None:
    model = create_backbone("mobilefacenet", embedding_size=128, input_size=112)
    assert 0.95e6 < sum(p.numel() for p in model.parameters()) < 1.1e6
    assert model.gdc[0].kernel_size == (7, 7)
    assert create_backbone("mobilefacenet", embedding_size=128, input_size=64).gdc[0].kernel_size == (4, 4)
