"""Our heads against pytorch-metric-learning and against few-line recomputations.

pytorch-metric-learning stores W as (D, C * K), class-major (column c * K + k is
sub-center k of class c, as it views cosines as (B, C, K)), takes the margin in
DEGREES and averages the per-sample losses.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cleanface.losses import create_head

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")

D, C, B = 16, 11, 24
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-10)}


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, D, generator=g), torch.randint(0, C, (B,), generator=g)


def _ref_loss(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, *, k: int, scale: float, m2: float = 0.0, m3: float = 0.0) -> torch.Tensor:
    """Sub-center / ArcFace / CosFace loss in a few lines (no fallback: callers keep theta + m < pi)."""
    cos = F.normalize(x, dim=1) @ F.normalize(weight, dim=1).T
    cos = cos.view(len(x), -1, k).max(dim=2).values
    rows = torch.arange(len(x))
    theta = torch.acos(cos[rows, y])
    assert (theta + m2 < math.pi).all()
    logits = cos.clone()
    logits[rows, y] = torch.cos(theta + m2) - m3
    return F.cross_entropy(scale * logits, y)


@pytest.mark.parametrize("margin", [0.5, 0.3])
def test_arcface_matches_pytorch_metric_learning(margin: float) -> None:
    torch.manual_seed(0)
    ours = create_head("arcface", D, C, margin=margin, scale=30.0)
    peer = pml_losses.ArcFaceLoss(num_classes=C, embedding_size=D, margin=math.degrees(margin), scale=30.0)
    with torch.no_grad():
        peer.W.copy_(ours.weight.T)
    x, y = _data()
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    la, lb = ours.loss(xa, y), peer(xb, y)
    torch.testing.assert_close(la, lb, **TOL[torch.float32])
    la.backward()
    lb.backward()
    torch.testing.assert_close(xa.grad, xb.grad, **TOL[torch.float32])
    torch.testing.assert_close(ours.weight.grad, peer.W.grad.T, **TOL[torch.float32])


@pytest.mark.parametrize("k", [1, 3])
def test_subcenter_arcface_matches_pytorch_metric_learning(k: int) -> None:
    torch.manual_seed(0)
    ours = create_head("subcenter-arcface", D, C, k=k, margin=0.5, scale=64.0)
    peer = pml_losses.SubCenterArcFaceLoss(num_classes=C, embedding_size=D, margin=math.degrees(0.5), scale=64.0, sub_centers=k)
    with torch.no_grad():
        peer.W.copy_(ours.weight.T)  # both class-major: row / column c * K + k
    x, y = _data(1)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    la, lb = ours.loss(xa, y), peer(xb, y)
    torch.testing.assert_close(la, lb, **TOL[torch.float32])
    la.backward()
    lb.backward()
    torch.testing.assert_close(xa.grad, xb.grad, **TOL[torch.float32])


def test_subcenter_order_is_class_major() -> None:
    """A sub-center of class c sits at row c * K + k: pointing one row at x makes its class win."""
    head = create_head("subcenter-arcface", D, C, k=3)
    x = torch.randn(1, D)
    with torch.no_grad():
        head.weight[4 * 3 + 2] = x[0]
    assert head.cosine(x).argmax().item() == 4
    assert head.class_centers()[4, 2].allclose(F.normalize(x[0], dim=0))


def test_subcenter_with_one_center_equals_arcface() -> None:
    torch.manual_seed(0)
    sub = create_head("subcenter-arcface", D, C, k=1)
    arc = create_head("arcface", D, C)
    arc.load_state_dict(sub.state_dict())
    x, y = _data(2)
    assert torch.equal(sub(x, y), arc(x, y))


@pytest.mark.parametrize(("name", "kwargs", "ref"), [
    ("arcface", {}, dict(k=1, scale=64.0, m2=0.5)),
    ("cosface", {}, dict(k=1, scale=64.0, m3=0.35)),
    ("subcenter-arcface", {}, dict(k=3, scale=64.0, m2=0.5)),
    ("subcenter-arcface", {"k": 2, "margin": 0.2, "scale": 16.0}, dict(k=2, scale=16.0, m2=0.2)),
    ("elastic-arc", {"sigma": 0.0}, dict(k=1, scale=64.0, m2=0.5)),
    ("elastic-cos+", {"sigma": 0.0}, dict(k=1, scale=64.0, m3=0.35)),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_losses_match_a_few_line_recomputation(name: str, kwargs: dict, ref: dict, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    head = create_head(name, D, C, **kwargs)
    x, y = _data(3)
    x = x.to(dtype)
    expected = _ref_loss(x.double(), y, head.weight.detach().double(), **ref)
    loss = head.loss(x, y)
    assert loss.dtype == dtype
    torch.testing.assert_close(loss.double(), expected, **TOL[dtype])
