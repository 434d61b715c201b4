"""Every registered margin head: shapes, target-only margin, gradients, autocast, the factory."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cleanface.errors import ConfigError, DataError
from cleanface.losses import create_head, list_heads

D, C = 16, 7


def _batch(b: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, D, generator=g), torch.randint(0, C, (b,), generator=g)


def _head(name: str, **kwargs):
    torch.manual_seed(0)
    return create_head(name, D, C, **kwargs)


def test_registry_holds_the_documented_names() -> None:
    assert set(list_heads()) == {"arcface", "cosface", "subcenter-arcface", "elastic-arc", "elastic-cos", "elastic-arc+", "elastic-cos+"}


def test_factory_errors_name_the_fix() -> None:
    with pytest.raises(ConfigError, match="unknown head 'sphereface'; choose one of: arcface, cosface"):
        create_head("sphereface", D, C)
    with pytest.raises(ConfigError, match="head 'arcface' has no option k; its options are: margin, sample_rate, scale"):
        create_head("arcface", D, C, k=3)
    with pytest.raises(ConfigError, match="num_classes must be a positive integer, got 0"):
        create_head("arcface", D, 0)
    with pytest.raises(ConfigError, match="sample_rate must be in \\(0, 1\\], got 1.5"):
        create_head("cosface", D, C, sample_rate=1.5)
    with pytest.raises(ConfigError, match="margin \\(radians\\) must be a number in \\[0, 1.57\\], got 28.6"):
        create_head("arcface", D, C, margin=28.6)  # degrees by mistake


def test_none_options_keep_the_defaults() -> None:
    head = create_head("subcenter-arcface", D, C, k=None, margin=None, scale=None)
    assert (head.k, head.m2, head.scale) == (3, 0.5, 64.0)
    elastic = create_head("elastic-cos+", D, C, sigma=None)
    assert (elastic.margin, elastic.sigma) == (0.35, 0.02)


@pytest.mark.parametrize("name", list_heads())
def test_logits_shape_and_target_only_margin(name: str) -> None:
    head = _head(name)
    x, y = _batch()
    logits = head(x, y)
    assert logits.shape == (6, C) and logits.dtype == torch.float32
    w = F.normalize(head.weight.detach(), dim=1).view(C, head.k, D)
    cos = torch.einsum("bd,ckd->bck", F.normalize(x, dim=1), w).amax(dim=2)
    target = F.one_hot(y, C).bool()
    torch.testing.assert_close(logits[~target], head.scale * cos[~target])
    # the margin lowers every target logit (targets here are far from the fallback region)
    assert (logits[target] < head.scale * cos[target] - 1.0).all()


@pytest.mark.parametrize("name", list_heads())
def test_loss_and_gradients(name: str) -> None:
    head = _head(name)
    x, y = _batch()
    x.requires_grad_(True)
    loss = head.loss(x, y)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert torch.isfinite(head.weight.grad).all() and head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", list_heads())
def test_class_centers_are_normalised(name: str) -> None:
    head = _head(name)
    centers = head.class_centers()
    assert centers.shape == (C, head.k, D) and head.num_classes == C
    torch.testing.assert_close(centers.norm(dim=2), torch.ones(C, head.k))
    assert not centers.requires_grad
    torch.testing.assert_close(centers[2, head.k - 1], F.normalize(head.weight[3 * head.k - 1].detach(), dim=0))


@pytest.mark.parametrize("name", list_heads())
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_gradient_is_finite_when_an_embedding_equals_its_class_weight(name: str, sign: float) -> None:
    head = _head(name)
    y = torch.tensor([1, 4])
    with torch.no_grad():  # all sub-centers of these classes on one direction, so the pooled cosine is +-1
        view = head.weight.view(C, head.k, D)
        view[y] = view[y, :1].clone()
    x = (sign * head.weight.detach().view(C, head.k, D)[y, 0] * 3.0).clone().requires_grad_(True)
    cos = head.cosine(x).gather(1, y[:, None])
    assert torch.allclose(cos, torch.full_like(cos, sign), atol=1e-6)
    head.loss(x, y).backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(head.weight.grad).all()


@pytest.mark.parametrize("name", list_heads())
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_gives_float32_finite_logits(name: str, dtype: torch.dtype) -> None:
    head = _head(name).eval()
    x, y = _batch()
    ref = head(x, y)
    with torch.autocast("cpu", dtype=dtype):
        logits = head(x.to(dtype), y)
        loss = head.loss(x.to(dtype), y)
    assert logits.dtype == torch.float32 and loss.dtype == torch.float32
    assert torch.isfinite(logits).all() and torch.isfinite(loss)
    torch.testing.assert_close(logits, ref, rtol=0.0, atol=head.scale * 0.02)


def _target_logit_over_angles(name: str, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Target logit of class 0 as its angle to the embedding sweeps [0, pi]."""
    head = create_head(name, 2, 1, **kwargs).eval()
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0]]).repeat(head.k, 1))
    theta = torch.linspace(0, math.pi, 4001)
    x = torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)
    return theta, head(x, torch.zeros(len(theta), dtype=torch.long))[:, 0] / head.scale


@pytest.mark.parametrize("name", list_heads())
def test_target_logit_decreases_with_the_angle_over_the_whole_range(name: str) -> None:
    theta, logit = _target_logit_over_angles(name)
    assert (logit.diff() <= 1e-6).all()  # never rises: no reward for moving away
    assert logit[0] - logit[-1] > 1.9


def test_arcface_fallback_past_pi_minus_m() -> None:
    theta, logit = _target_logit_over_angles("arcface", margin=0.5)
    inside = (theta <= math.pi - 0.5 - 1e-3) & (theta > 0.01)  # below 0.0014 rad the cosine clamp holds theta
    torch.testing.assert_close(logit[inside], torch.cos(theta[inside] + 0.5), atol=1e-5, rtol=0)
    beyond = theta >= math.pi - 0.5 + 1e-3
    torch.testing.assert_close(logit[beyond], torch.cos(theta[beyond]) - 0.5 * math.sin(0.5), atol=1e-5, rtol=0)


def test_labels_are_validated() -> None:
    head = _head("arcface")
    x, _ = _batch()
    with pytest.raises(DataError, match="labels must lie in \\[0, 7\\), got values from 0 to 7"):
        head(x, torch.tensor([0, 1, 2, 3, 4, 7]))
    with pytest.raises(DataError, match="labels of shape \\(6,\\), got \\(5,\\)"):
        head(x, torch.zeros(5, dtype=torch.long))
    with pytest.raises(DataError, match="embeddings of shape \\(B, 16\\), got \\(6, 8\\)"):
        head(x[:, :8], torch.zeros(6, dtype=torch.long))
    with pytest.raises(DataError, match="labels must be integers"):
        head(x, torch.zeros(6))
