"""Device-dependent defaults of a training run: the head on CPU, and what an explicit value keeps."""

from __future__ import annotations

import pytest

from cleanface.losses import create_head
from cleanface.training.config import CPU_ANGULAR_MARGIN, TrainConfig, config_from


@pytest.mark.parametrize("head", ["arcface", "subcenter-arcface", "elastic-arc", "elastic-arc+"])
def test_angular_heads_on_cpu_default_to_a_softer_head(head):
    c = TrainConfig(head=head, device="cpu").resolved()
    assert (c.scale, c.margin) == (32.0, CPU_ANGULAR_MARGIN)
    built = create_head(head, embedding_size=8, num_classes=3, **c.head_kwargs())
    assert built.scale == 32.0 and getattr(built, "margin", getattr(built, "m2", None)) == pytest.approx(0.3)


@pytest.mark.parametrize("head", ["cosface", "elastic-cos", "elastic-cos+"])
def test_additive_cosine_heads_keep_their_own_margin(head):
    c = TrainConfig(head=head, device="cpu").resolved()
    assert c.scale == 32.0 and c.margin is None  # an angular 0.3 rad is no cosine margin: the head's own default stays
    built = create_head(head, embedding_size=8, num_classes=3, **c.head_kwargs())
    assert getattr(built, "margin", getattr(built, "m3", None)) == pytest.approx(0.35)


def test_an_explicit_head_is_kept_and_recorded():
    c = config_from("subcenter-arcface", {"scale": 64.0, "margin": 0.5, "device": "cpu"}).resolved()
    assert (c.scale, c.margin) == (64.0, 0.5)
    assert c.k is None or c.k == 3
