"""Single-process Partial FC: which classes a step keeps, and the logits over them."""

from __future__ import annotations

import math

import pytest
import torch

from cleanface.losses import create_head, sample_classes

D, C = 12, 50


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("rate", [0.1, 0.3, 0.7])
def test_positives_are_always_kept_and_the_count_is_right(seed: int, rate: float) -> None:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, C, (8,), generator=g)
    classes, remapped = sample_classes(labels, C, rate, generator=g)
    positives = set(labels.tolist())
    assert positives <= set(classes.tolist())
    assert len(classes) == max(len(positives), math.ceil(rate * C))
    assert torch.equal(classes, torch.unique(classes))  # sorted, no repeats
    assert torch.equal(classes[remapped], labels)


def test_many_positives_override_the_rate() -> None:
    labels = torch.arange(30)
    classes, remapped = sample_classes(labels, C, 0.1)
    assert len(classes) == 30 and torch.equal(remapped, labels)


def test_negatives_vary_between_steps() -> None:
    labels = torch.tensor([3, 3, 7])
    seen = {tuple(sample_classes(labels, C, 0.2)[0].tolist()) for _ in range(10)}
    assert len(seen) > 1


@pytest.mark.parametrize("name", ["arcface", "subcenter-arcface", "elastic-cos"])
def test_rate_one_equals_the_plain_head(name: str) -> None:
    torch.manual_seed(0)
    kwargs = {"sigma": 0.0} if name.startswith("elastic") else {}
    plain = create_head(name, D, C, **kwargs)
    sampled = create_head(name, D, C, sample_rate=1.0, **kwargs)
    sampled.load_state_dict(plain.state_dict())
    x, y = torch.randn(8, D), torch.randint(0, C, (8,))
    logits, labels = sampled.forward_train(x, y)
    assert torch.equal(labels, y) and sampled.last_classes is None
    assert torch.equal(sampled.loss(x, y), plain.loss(x, y))


@pytest.mark.parametrize("name", ["arcface", "subcenter-arcface"])
def test_sampled_logits_are_columns_of_the_full_logits(name: str) -> None:
    torch.manual_seed(0)
    head = create_head(name, D, C, sample_rate=0.2).train()
    x, y = torch.randn(8, D), torch.randint(0, C, (8,))
    logits, labels = head.forward_train(x, y)
    classes = head.last_classes
    assert logits.shape == (8, max(len(set(y.tolist())), 10))
    assert torch.equal(classes[labels], y)
    torch.testing.assert_close(logits, head(x, y)[:, classes])


def test_gradient_reaches_only_the_sampled_classes() -> None:
    torch.manual_seed(0)
    head = create_head("subcenter-arcface", D, C, k=2, sample_rate=0.2).train()
    x, y = torch.randn(8, D), torch.randint(0, C, (8,))
    logits, labels = head.forward_train(x, y)
    torch.nn.functional.cross_entropy(logits, labels).backward()
    touched = head.weight.grad.view(C, 2, D).abs().sum(dim=(1, 2)) > 0
    kept = torch.zeros(C, dtype=torch.bool)
    kept[head.last_classes] = True
    assert not touched[~kept].any()
    assert touched[y].all()


def test_eval_mode_uses_every_class() -> None:
    head = create_head("arcface", D, C, sample_rate=0.1).eval()
    x, y = torch.randn(4, D), torch.randint(0, C, (4,))
    logits, labels = head.forward_train(x, y)
    assert logits.shape == (4, C) and torch.equal(labels, y)
