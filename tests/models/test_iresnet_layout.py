"""iResNet state_dict layout against the published arcface_torch checkpoints (hand-written table)."""

from __future__ import annotations

import pytest
import torch

from cleanface.models import create_backbone

BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
DEPTHS = {"iresnet18": (2, 2, 2, 2), "iresnet34": (3, 4, 6, 3), "iresnet50": (3, 4, 14, 3), "iresnet100": (3, 13, 30, 3)}


def _meta(name: str, **kwargs) -> torch.nn.Module:
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        return create_backbone(name, **kwargs)


def _shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# Published iResNet-50 (512-d, 112x112): selected entries of its state_dict.
PUBLISHED_R50 = {
    "conv1.weight": (64, 3, 3, 3),
    "bn1.weight": (64,),
    "bn1.running_var": (64,),
    "prelu.weight": (64,),
    "layer1.0.bn1.weight": (64,),
    "layer1.0.conv1.weight": (64, 64, 3, 3),
    "layer1.0.prelu.weight": (64,),
    "layer1.0.conv2.weight": (64, 64, 3, 3),
    "layer1.0.bn3.running_mean": (64,),
    "layer1.0.downsample.0.weight": (64, 64, 1, 1),
    "layer1.0.downsample.1.weight": (64,),
    "layer2.0.bn1.weight": (64,),
    "layer2.0.conv1.weight": (128, 64, 3, 3),
    "layer2.0.downsample.0.weight": (128, 64, 1, 1),
    "layer2.3.conv2.weight": (128, 128, 3, 3),
    "layer3.0.conv1.weight": (256, 128, 3, 3),
    "layer3.13.conv2.weight": (256, 256, 3, 3),
    "layer3.13.prelu.weight": (256,),
    "layer4.0.downsample.0.weight": (512, 256, 1, 1),
    "layer4.2.bn3.num_batches_tracked": (),
    "bn2.weight": (512,),
    "bn2.running_mean": (512,),
    "fc.weight": (512, 25088),
    "fc.bias": (512,),
    "features.weight": (512,),
    "features.bias": (512,),
    "features.running_var": (512,),
}


def _expected_keys(depths: tuple[int, ...]) -> set[str]:
    keys = {"conv1.weight", "prelu.weight", "fc.weight", "fc.bias"}
    keys |= {f"{m}.{k}" for m in ("bn1", "bn2", "features") for k in BN_KEYS}
    for layer, depth in enumerate(depths, start=1):
        for b in range(depth):
            p = f"layer{layer}.{b}"
            keys |= {f"{p}.conv1.weight", f"{p}.conv2.weight", f"{p}.prelu.weight"}
            keys |= {f"{p}.{m}.{k}" for m in ("bn1", "bn2", "bn3") for k in BN_KEYS}
            if b == 0:
                keys |= {f"{p}.downsample.0.weight"} | {f"{p}.downsample.1.{k}" for k in BN_KEYS}
    return keys


def test_iresnet50_matches_the_published_table() -> None:
    shapes = _shapes(_meta("iresnet50"))
    # stem 7 + 24 blocks x 18 + 4 downsamples x 6 + head 12
    assert len(shapes) == 7 + 24 * 18 + 4 * 6 + 12 == 475
    for key, shape in PUBLISHED_R50.items():
        assert shapes[key] == shape, key
    assert "layer3.14.conv1.weight" not in shapes and "layer1.1.downsample.0.weight" not in shapes


@pytest.mark.parametrize("name", sorted(DEPTHS))
def test_key_names_follow_the_published_layout(name: str) -> None:
    assert set(_shapes(_meta(name))) == _expected_keys(DEPTHS[name])


def _published_count(depths: tuple[int, ...], dim: int, side: int) -> int:
    """Parameters of the published iResNet, counted from its description."""
    total = 3 * 64 * 9 + 2 * 64 + 64  # stem conv, bn1, prelu
    cin = 64
    for width, depth in zip((64, 128, 256, 512), depths):
        for b in range(depth):
            c = cin if b == 0 else width
            total += 2 * c + 9 * c * width + 2 * width + width + 9 * width * width + 2 * width
            if b == 0:
                total += c * width + 2 * width
        cin = width
    return total + 2 * 512 + 512 * side * side * dim + dim + 2 * dim  # bn2, fc, features


def test_iresnet100_parameter_count() -> None:
    count = sum(p.numel() for p in _meta("iresnet100").parameters())
    assert count == _published_count(DEPTHS["iresnet100"], 512, 7)
    assert 65.0e6 < count < 65.3e6


def test_other_input_sizes_change_only_the_fc_input() -> None:
    ref, small = _shapes(_meta("iresnet18")), _shapes(_meta("iresnet18", embedding_size=128, input_size=64))
    assert small["fc.weight"] == (128, 512 * 4 * 4)
    assert {k for k in ref if ref[k] != small[k]} == {"fc.weight", "fc.bias"} | {f"features.{k}" for k in BN_KEYS[:4]}


def test_a_checkpoint_in_the_published_layout_loads_strictly() -> None:
    torch.manual_seed(0)
    src = create_backbone("iresnet18", embedding_size=64, input_size=32)
    # a checkpoint as the reference recipe writes it: plain tensors under the published names
    state = {k: torch.randn_like(v) if v.is_floating_point() else v.clone() for k, v in src.state_dict().items()}
    state["features.weight"] = torch.ones(64)
    state = {k: state[k] for k in sorted(_expected_keys(DEPTHS["iresnet18"]))}
    dst = create_backbone("iresnet18", embedding_size=64, input_size=32)
    dst.load_state_dict(state, strict=True)
    assert torch.equal(dst.layer2[1].conv2.weight, state["layer2.1.conv2.weight"])


def test_embedding_scale_is_fixed_at_one() -> None:
    model = create_backbone("iresnet18", embedding_size=16, input_size=32)
    assert not model.features.weight.requires_grad
    assert torch.equal(model.features.weight, torch.ones(16))
    assert model.features.eps == 1e-5 and model.bn2.eps == 1e-5
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    assert torch.equal(model.features.weight, torch.ones(16))
