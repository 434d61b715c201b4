"""The BN prior hooks: the value, the hooks' lifetime, networks without BatchNorm."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cleanface.errors import ConfigError
from cleanface.inversion import BNPrior, bn_distance, bn_layers, invert


def small_net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 3, stride=2, padding=1),
                        nn.BatchNorm2d(5), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 6))
    for bn in (net[1], net[4]):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    return net.eval()


@torch.no_grad()
def recompute(net: nn.Sequential, x: torch.Tensor) -> float:
    """The prior written out by hand for ``small_net``."""
    total = 0.0
    h = x
    for layer in net:
        if isinstance(layer, nn.BatchNorm2d):
            mean = h.mean(dim=(0, 2, 3))
            var = ((h - mean[None, :, None, None]) ** 2).mean(dim=(0, 2, 3))
            total += float((mean - layer.running_mean).norm() + (var - layer.running_var).norm())
        h = layer(h)
    return total


def test_loss_matches_a_hand_computation():
    net = small_net()
    x = torch.randn(5, 3, 12, 12)
    with BNPrior(net) as prior:
        net(x)
        assert len(prior.terms) == 2
        assert float(prior.loss().detach()) == pytest.approx(recompute(net, x), rel=1e-5)
    assert bn_distance(net, x) == pytest.approx(recompute(net, x), rel=1e-5)


def test_loss_is_zero_when_the_batch_has_the_running_statistics():
    net = nn.Sequential(nn.BatchNorm2d(3)).eval()
    x = torch.randn(8, 3, 6, 6)
    net[0].running_mean.copy_(x.mean(dim=(0, 2, 3)))
    net[0].running_var.copy_(x.var(dim=(0, 2, 3), unbiased=False))
    assert bn_distance(net, x) == pytest.approx(0.0, abs=1e-5)


def test_hooks_are_removed_and_reset_clears_terms():
    net = small_net()
    x = torch.randn(2, 3, 8, 8)
    prior = BNPrior(net)
    with prior:
        net(x)
        prior.reset()
        with pytest.raises(RuntimeError, match="no BatchNorm2d layer ran"):
            prior.loss()
    net(x)
    assert prior.terms == []
    assert all(not layer._forward_hooks for _, layer in bn_layers(net))


def test_gradient_reaches_the_input():
    net = small_net()
    x = torch.randn(3, 3, 8, 8, requires_grad=True)
    with BNPrior(net) as prior:
        net(x)
        prior.loss().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_layers_without_running_statistics_are_skipped():
    net = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3, track_running_stats=False), nn.BatchNorm2d(3))
    assert [name for name, _ in bn_layers(net)] == ["2"]


def test_network_without_batchnorm():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ConfigError, match="no BatchNorm2d layer"):
        BNPrior(net)
    with pytest.raises(ConfigError, match="no-bn-prior"):
        invert(net, np.ones((1, 4)), size=8, steps=2)
    r = invert(net, np.ones((1, 4)), size=8, steps=2, bn_weight=0.0)
    assert np.isnan(r.bn_distance) and r.images.shape == (1, 8, 8, 3)
