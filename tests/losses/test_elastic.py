"""ElasticFace: drawn margins, the "+" assignment (hardest gets largest), eval behaviour."""

from __future__ import annotations

import pytest
import torch

from cleanface.losses import create_head
from cleanface.losses.elastic import hardest_get_largest

D, C = 16, 9


def _ranks(v: torch.Tensor) -> torch.Tensor:
    r = torch.empty_like(v)
    r[torch.argsort(v)] = torch.arange(len(v), dtype=v.dtype)
    return r


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = _ranks(a.double()), _ranks(b.double())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def test_hardest_get_largest_by_hand() -> None:
    margins = torch.tensor([0.1, 0.3, 0.2, 0.4])
    cos = torch.tensor([0.5, 0.9, 0.1, 0.7])  # hardest: index 2, then 0, 3, 1
    assert hardest_get_largest(margins, cos).tolist() == pytest.approx([0.3, 0.1, 0.4, 0.2])


@pytest.mark.parametrize("name", ["elastic-arc+", "elastic-cos+"])
def test_plus_margins_are_perfectly_anti_correlated_with_the_target_cosine(name: str) -> None:
    torch.manual_seed(1)
    head = create_head(name, D, C).train()
    x, y = torch.randn(64, D), torch.randint(0, C, (64,))
    head(x, y)
    target_cos = head.cosine(x).gather(1, y[:, None]).squeeze(1).detach()
    margins = head.last_margins
    assert margins.shape == (64,) and len(torch.unique(margins)) == 64
    assert _spearman(margins, target_cos) == pytest.approx(-1.0, abs=1e-12)


@pytest.mark.parametrize("name", ["elastic-arc", "elastic-cos"])
def test_plain_margins_are_not_sorted(name: str) -> None:
    torch.manual_seed(1)
    head = create_head(name, D, C).train()
    x, y = torch.randn(256, D), torch.randint(0, C, (256,))
    head(x, y)
    target_cos = head.cosine(x).gather(1, y[:, None]).squeeze(1).detach()
    assert abs(_spearman(head.last_margins, target_cos)) < 0.3


@pytest.mark.parametrize(
    ("name", "mean", "sigma"),
    [("elastic-arc", 0.5, 0.05), ("elastic-cos", 0.35, 0.05), ("elastic-arc+", 0.5, 0.0175), ("elastic-cos+", 0.35, 0.02)],
)
def test_margins_follow_the_published_normal_distribution(name: str, mean: float, sigma: float) -> None:
    torch.manual_seed(2)
    head = create_head(name, D, C).train()
    x, y = torch.randn(4000, D), torch.randint(0, C, (4000,))
    head(x, y)
    m = head.last_margins
    assert float(m.mean()) == pytest.approx(mean, abs=4 * sigma / 4000**0.5)
    assert float(m.std()) == pytest.approx(sigma, rel=0.1)
    head(x, y)
    assert not torch.equal(m, head.last_margins)  # drawn afresh each step


def test_eval_mode_uses_the_mean_margin() -> None:
    head = create_head("elastic-arc+", D, C).eval()
    x, y = torch.randn(8, D), torch.randint(0, C, (8,))
    a, b = head(x, y), head(x, y)
    assert torch.equal(a, b)
    assert torch.equal(head.last_margins, torch.full((8,), 0.5))


@pytest.mark.parametrize(("elastic", "fixed"), [("elastic-arc", "arcface"), ("elastic-cos", "cosface"), ("elastic-arc+", "arcface"), ("elastic-cos+", "cosface")])
def test_sigma_zero_equals_the_fixed_margin_head_exactly(elastic: str, fixed: str) -> None:
    margin = 0.45 if "arc" in elastic else 0.3
    torch.manual_seed(3)
    a = create_head(elastic, D, C, margin=margin, sigma=0.0, scale=32.0).train()
    b = create_head(fixed, D, C, margin=margin, scale=32.0).train()
    b.load_state_dict(a.state_dict())
    x, y = torch.randn(12, D), torch.randint(0, C, (12,))
    x[0] = -a.weight[y[0]].detach()  # one sample in the theta + m > pi fallback region
    assert torch.equal(a(x, y), b(x, y))
    assert torch.equal(a.loss(x, y), b.loss(x, y))


def test_elastic_arc_matches_a_direct_recomputation_with_its_drawn_margins() -> None:
    torch.manual_seed(4)
    head = create_head("elastic-arc", D, C).train()
    x, y = torch.randn(10, D), torch.randint(0, C, (10,))
    loss = head.loss(x, y)
    cos = torch.nn.functional.normalize(x, dim=1) @ torch.nn.functional.normalize(head.weight.detach(), dim=1).T
    rows = torch.arange(10)
    logits = cos.clone()
    logits[rows, y] = torch.cos(torch.acos(cos[rows, y]) + head.last_margins)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(64 * logits, y))
