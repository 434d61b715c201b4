"""Every registered backbone: shapes, gradients, eval determinism, channels_last, the factory."""

from __future__ import annotations

import functools

import pytest
import torch

from cleanface.errors import ConfigError
from cleanface.models import create_backbone, list_backbones

DIM = 32
# two input sides per family, small enough for CPU tests (iResNet needs multiples of 16)
SIZES = {"mobilefacenet": (64, 112), "compact": (32, 64)}
DEFAULT_SIZES = (32, 48)


def _sizes(name: str) -> tuple[int, int]:
    return SIZES.get(name, DEFAULT_SIZES)


@functools.cache
def _model(name: str, size: int) -> torch.nn.Module:
    """One model per (name, size) for the whole module: building iResNet-100 is the slow part."""
    torch.manual_seed(0)
    return create_backbone(name, embedding_size=DIM, input_size=size)


CASES = [(name, size) for name in list_backbones() for size in _sizes(name)]


def test_registry_holds_the_documented_names() -> None:
    assert set(list_backbones()) == {"iresnet18", "iresnet34", "iresnet50", "iresnet100", "mobilefacenet", "compact"}


@pytest.mark.parametrize(("name", "size"), CASES)
def test_output_shape_and_attributes(name: str, size: int) -> None:
    model = _model(name, size).eval()
    assert (model.embedding_size, model.input_size) == (DIM, size)
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, DIM)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    # un-normalised: the head ends in BatchNorm1d, not an L2 normalisation
    assert not torch.allclose(out.norm(dim=1), torch.ones(2))


@pytest.mark.parametrize("name", list_backbones())
def test_backward_reaches_every_trainable_parameter(name: str) -> None:
    torch.manual_seed(0)
    size = _sizes(name)[0]
    model = _model(name, size).train()
    model.zero_grad(set_to_none=True)
    out = model(torch.randn(2, 3, size, size))
    (out * torch.randn_like(out)).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(torch.isfinite(g).all() for g in grads)
    first = next(p for p in model.parameters() if p.dim() == 4)
    assert first.grad.abs().sum() > 0


@pytest.mark.parametrize("name", list_backbones())
def test_eval_is_deterministic_and_per_sample(name: str) -> None:
    torch.manual_seed(0)
    size = _sizes(name)[0]
    model = _model(name, size).train()
    with torch.no_grad():  # move the BN running statistics away from their initial values
        model(torch.randn(8, 3, size, size) * 2 + 0.5)
    model.eval()
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        a, b = model(x), model(x)
        alone = model(x[1:2])
    assert torch.equal(a, b)
    torch.testing.assert_close(alone[0], a[1], rtol=1e-3, atol=1e-3 * a.abs().max().item())


@pytest.mark.parametrize("name", list_backbones())
def test_channels_last_input_gives_the_same_embedding(name: str) -> None:
    torch.manual_seed(0)
    size = _sizes(name)[0]
    model = _model(name, size).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        ref = model(x)
        try:
            out = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
        finally:
            model.to(memory_format=torch.contiguous_format)
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3 * ref.abs().max().item())


def test_unknown_name_lists_the_valid_names() -> None:
    with pytest.raises(ConfigError, match="unknown backbone 'resnet9'.*compact.*iresnet50.*mobilefacenet"):
        create_backbone("resnet9")


def test_none_options_are_dropped_and_unknown_options_named() -> None:
    model = create_backbone("compact", embedding_size=16, input_size=32, width=None, dropout=None)
    assert model.fc.out_features == 16
    with pytest.raises(ConfigError, match="no option depth; its options are: depths, dropout, pool, stem_stride, width"):
        create_backbone("compact", embedding_size=16, input_size=32, depth=3)


@pytest.mark.parametrize("bad", [0, -3, 1.5, True])
def test_bad_embedding_size_is_rejected(bad: object) -> None:
    with pytest.raises(ConfigError, match="embedding_size must be a positive integer"):
        create_backbone("compact", embedding_size=bad)  # type: ignore[arg-type]


def test_input_size_must_suit_the_family() -> None:
    with pytest.raises(ConfigError, match="multiple of 16, got 40"):
        create_backbone("iresnet18", input_size=40)
    with pytest.raises(ConfigError, match="multiple of 16, got 100"):
        create_backbone("mobilefacenet", input_size=100)
    model = create_backbone("mobilefacenet", embedding_size=DIM, input_size=64).eval()
    with pytest.raises(ConfigError, match="built for 64x64 input, got \\(32, 32\\)"):
        model(torch.randn(1, 3, 32, 32))
