"""Inversion of embeddings under the BN prior: reaching the targets, the prior's effect, determinism, safety."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cleanface.errors import ConfigError
from cleanface.inversion import bn_distance, embed_images, invert
from cleanface.inversion.invert import COS_RAMP
from tests.inversion.conftest import SIZE


def class_means(trained) -> np.ndarray:
    """Normalised mean embedding of each class's training images: (C, D)."""
    emb = embed_images(trained.backbone, trained.images)
    means = np.stack([emb[trained.labels == c].mean(axis=0) for c in range(len(trained.names))])
    return means / np.linalg.norm(means, axis=1, keepdims=True)


def pixel_stat_distance(images: np.ndarray, reference: np.ndarray) -> float:
    """L1 distance between the per-channel pixel means and standard deviations of two uint8 image sets."""
    def stats(x: np.ndarray) -> np.ndarray:
        flat = x.reshape(-1, 3).astype(np.float64)
        return np.concatenate([flat.mean(axis=0), flat.std(axis=0)])

    return float(np.abs(stats(images) - stats(reference)).sum())


@pytest.fixture(scope="module")
def targets(trained) -> np.ndarray:
    return class_means(trained)


@pytest.fixture(scope="module")
def with_prior(trained, targets):
    """The default weights (BN prior on)."""
    return invert(trained.backbone, targets, size=SIZE, steps=300, seed=0)


@pytest.fixture(scope="module")
def without_prior(trained, targets):
    return invert(trained.backbone, targets, size=SIZE, steps=300, bn_weight=0.0, seed=0)


def test_images_reach_their_targets(with_prior, targets):
    r = with_prior
    assert r.images.shape == (len(targets), SIZE, SIZE, 3) and r.images.dtype == np.uint8
    assert r.final_cos.shape == (len(targets),)
    assert r.final_cos.min() >= 0.9, r.final_cos
    for key in ("loss", "cos", "bn", "tv", "l2"):
        assert len(r.history[key]) == 300
    assert r.history["cos"][-1] > r.history["cos"][0] + 0.5


def test_each_image_matches_its_own_target_best(trained, with_prior, targets):
    emb = embed_images(trained.backbone, with_prior.images)
    sims = emb @ targets.T
    assert (sims.argmax(axis=1) == np.arange(len(targets))).all()
    # the final cosines are those of the written uint8 images
    np.testing.assert_allclose(np.diag(sims), with_prior.final_cos, atol=1e-5)


def test_real_embeddings_are_reached_too(trained):
    rows = np.arange(0, len(trained.images), 24)[:4] + 3
    emb = embed_images(trained.backbone, trained.images[rows])
    r = invert(trained.backbone, emb, size=SIZE, steps=250, seed=1)
    assert r.final_cos.min() >= 0.9, r.final_cos


def test_bn_prior_term_falls(with_prior):
    bn = np.asarray(with_prior.history["bn"])
    assert bn[-10:].mean() < 0.3 * bn[:10].mean()
    assert with_prior.bn_distance == pytest.approx(bn[-1], rel=0.25)


def test_without_the_prior_images_stray_from_training_statistics(trained, with_prior, without_prior):
    # the cosine term alone is met as well or better ...
    assert without_prior.final_cos.mean() >= with_prior.final_cos.mean() - 0.01
    # ... but the BatchNorm statistics of its images are far from the running ones,
    assert without_prior.bn_distance > 2 * with_prior.bn_distance
    assert bn_distance(trained.backbone, without_prior.images) > 2 * bn_distance(trained.backbone, with_prior.images)
    # and so are their pixel statistics from the training images'
    on = pixel_stat_distance(with_prior.images, trained.images)
    off = pixel_stat_distance(without_prior.images, trained.images)
    assert off > 1.5 * on, (on, off)
    # the recorded bn term still fell less without the prior
    assert without_prior.history["bn"][-1] > 2 * with_prior.history["bn"][-1]


def test_loss_history_follows_the_documented_weights(trained, targets):
    w = {"cos_weight": 2.0, "bn_weight": 0.01, "tv_weight": 0.3, "l2_weight": 0.05}
    r = invert(trained.backbone, targets[:2], size=SIZE, steps=5, seed=0, **w)
    h = {k: np.asarray(v) for k, v in r.history.items()}
    ramp = 1 + (COS_RAMP - 1) * np.arange(5) / 4  # the embedding weight rises from cos_weight to COS_RAMP * cos_weight
    expected = w["cos_weight"] * ramp * (1 - h["cos"]) + w["bn_weight"] * h["bn"] + w["tv_weight"] * h["tv"] + w["l2_weight"] * h["l2"]
    np.testing.assert_allclose(h["loss"], expected, rtol=1e-5)


def test_same_seed_same_images_on_cpu(trained, targets):
    a = invert(trained.backbone, targets[:3], size=SIZE, steps=15, seed=7, flip=True, jitter=2)
    b = invert(trained.backbone, targets[:3], size=SIZE, steps=15, seed=7, flip=True, jitter=2)
    c = invert(trained.backbone, targets[:3], size=SIZE, steps=15, seed=8, flip=True, jitter=2)
    np.testing.assert_array_equal(a.images, b.images)
    assert a.history == b.history
    assert not np.array_equal(a.images, c.images)


def test_backbone_left_as_it_was(trained, targets):
    net = trained.backbone
    net.train()
    for p in net.parameters():
        p.grad = None
    flags = [p.requires_grad for p in net.parameters()]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    try:
        invert(net, targets[:2], size=SIZE, steps=5, seed=0)
        assert net.training
        assert [p.requires_grad for p in net.parameters()] == flags
        for key, value in net.state_dict().items():  # weights and BN running statistics untouched
            assert torch.equal(value, before[key]), key
        assert all(p.grad is None for p in net.parameters())
    finally:
        net.eval()


def test_settings_are_recorded(trained, targets):
    r = invert(trained.backbone, targets[:2], size=SIZE, steps=3, lr=0.05, bn_weight=0.5, seed=3)
    assert r.settings["lr"] == 0.05 and r.settings["bn_weight"] == 0.5 and r.settings["steps"] == 3
    assert r.settings["seed"] == 3 and r.settings["jitter"] == max(1, SIZE // 16) and r.settings["device"] == "cpu"
    assert r.seconds > 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"steps": 0}, "steps must be at least 1"),
        ({"lr": -1.0}, "lr must be a positive number"),
        ({"bn_weight": -0.1}, "bn_weight must be 0 or more"),
        ({"cos_weight": 0.0}, "cos_weight must be positive"),
        ({"jitter": 16}, "jitter must be between 0 and 15"),
        ({"size": 4}, "size must be at least 8"),
    ],
)
def test_bad_settings_are_refused(trained, targets, kwargs, message):
    args = {"size": SIZE, **kwargs}
    with pytest.raises(ConfigError, match=message):
        invert(trained.backbone, targets[:1], **args)


def test_bad_targets_are_refused(trained, targets):
    with pytest.raises(ConfigError, match=r"targets must have shape \(M, D\)"):
        invert(trained.backbone, targets[0], size=SIZE)
    with pytest.raises(ConfigError, match="zero vectors"):
        invert(trained.backbone, np.zeros((2, targets.shape[1])), size=SIZE)
    with pytest.raises(ConfigError, match="NaN"):
        invert(trained.backbone, np.full((1, targets.shape[1]), np.nan), size=SIZE)
    with pytest.raises(ConfigError, match="but the targets have D=7"):
        invert(trained.backbone, np.ones((1, 7)), size=SIZE, steps=1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_refused_without_cuda(trained, targets):
    with pytest.raises(ConfigError, match="CUDA is not available"):
        invert(trained.backbone, targets[:1], size=SIZE, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda_and_returns_the_backbone_to_cpu(trained, targets):
    r = invert(trained.backbone, targets, size=SIZE, steps=300, seed=0, device="cuda")
    assert r.settings["device"].startswith("cuda")
    assert r.final_cos.min() >= 0.9
    assert next(trained.backbone.parameters()).device.type == "cpu"
