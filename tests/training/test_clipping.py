import pytest
import torch
from torch import nn

from cleanface.training.trainer import clip_divisor


def _model_and_grads(scale: float) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.PReLU(), nn.Linear(5, 3))
    out = model(torch.randn(8, 6)).pow(2).sum() * scale
    out.backward()
    return model


@pytest.mark.parametrize("scale", [1e-3, 1.0, 50.0])
def test_fused_sgd_divided_by_the_clip_divisor_equals_clip_grad_norm_then_sgd(scale):
    settings = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}
    reference, fused = _model_and_grads(scale), _model_and_grads(scale)
    norm = float(nn.utils.get_total_norm([p.grad for p in reference.parameters()]))
    nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
    torch.optim.SGD(reference.parameters(), **settings, foreach=True).step()

    divisor = clip_divisor(fused.parameters(), 1.0)
    assert divisor.dim() == 0 and float(divisor) == pytest.approx(max(1.0, (norm + 1e-6) / 1.0), rel=1e-6)
    opt = torch.optim.SGD(fused.parameters(), **settings, fused=True)
    opt.grad_scale = divisor
    opt.step()
    moved = False
    for a, b, start in zip(reference.parameters(), fused.parameters(), _model_and_grads(scale).parameters()):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
        moved |= not torch.equal(a, start)
    assert moved


def test_the_divisor_is_one_within_the_limit_and_never_below():
    model = _model_and_grads(1e-3)
    assert float(clip_divisor(model.parameters(), 1e6)) == 1.0
    assert float(clip_divisor(model.parameters(), 1e-9)) > 1.0
