"""Each regulariser of the inversion, on the tiny synthetic-face model: it lowers what it is meant to lower."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cleanface.data.images import to_tensor_batch
from cleanface.errors import ConfigError
from cleanface.inversion import BNPrior, embed_images, invert
from cleanface.inversion.invert import _best_start, _LossWeights, _optimise, _Plan, _random_plan
from tests.inversion.conftest import SIZE

STEPS = 120

#: everything off but the embedding term, so that each test turns one regulariser on
BARE = {"bn_weight": 0.0, "tv_weight": 0.0, "l2_weight": 0.0, "jitter": 0, "scale": 0.0, "pixel_weight": 0.0, "lr": 0.1, "steps": STEPS, "seed": 0}


@pytest.fixture(scope="module")
def targets(trained) -> np.ndarray:
    emb = embed_images(trained.backbone, trained.images)
    means = np.stack([emb[trained.labels == c].mean(axis=0) for c in range(4)])
    return means / np.linalg.norm(means, axis=1, keepdims=True)


def cos_of(backbone, images: torch.Tensor, targets: np.ndarray) -> np.ndarray:
    """Cosines (M,) of float images (M, 3, S, S) in [-1, 1] to their targets."""
    with torch.no_grad():
        emb = F.normalize(backbone.eval()(images), dim=1).numpy()
    return (emb * targets).sum(axis=1)


def tv_of(images: np.ndarray) -> float:
    x = to_tensor_batch(images)
    return float((x[:, :, 1:] - x[:, :, :-1]).pow(2).mean() + (x[..., 1:] - x[..., :-1]).pow(2).mean())


def high_frequency_share(images: np.ndarray) -> float:
    """Share of the (mean-removed) spectral energy above half the Nyquist frequency."""
    x = to_tensor_batch(images).numpy()
    x = x - x.mean(axis=(2, 3), keepdims=True)
    power = np.abs(np.fft.fft2(x)) ** 2
    f = np.abs(np.fft.fftfreq(x.shape[-1]))
    high = (f[:, None] > 0.25) | (f[None, :] > 0.25)
    return float(power[..., high].sum() / power.sum())


def test_tv_prior_lowers_total_variation(trained, targets):
    off = invert(trained.backbone, targets, size=SIZE, **BARE)
    on = invert(trained.backbone, targets, size=SIZE, **{**BARE, "tv_weight": 1.0})
    assert tv_of(on.images) < 0.5 * tv_of(off.images), (tv_of(on.images), tv_of(off.images))
    assert on.final_cos.min() > 0.8


def test_l2_prior_lowers_pixel_energy(trained, targets):
    off = invert(trained.backbone, targets, size=SIZE, **BARE)
    on = invert(trained.backbone, targets, size=SIZE, **{**BARE, "l2_weight": 1.0})
    energy = [float(to_tensor_batch(r.images).pow(2).mean()) for r in (on, off)]
    assert energy[0] < 0.7 * energy[1], energy


def test_first_layer_weight_lowers_the_first_layer_term(trained, targets):
    def first_term(images: np.ndarray) -> float:
        with BNPrior(trained.backbone) as prior, torch.no_grad():
            trained.backbone.eval()(to_tensor_batch(images))
            return float(prior.terms[0])

    plain = invert(trained.backbone, targets, size=SIZE, **{**BARE, "bn_weight": 0.002})
    first = invert(trained.backbone, targets, size=SIZE, **{**BARE, "bn_weight": 0.002, "bn_first": 20.0})
    assert first_term(first.images) < 0.85 * first_term(plain.images), (first_term(first.images), first_term(plain.images))


def test_bn_prior_loss_weights_only_the_first_layer():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 4, 3), torch.nn.BatchNorm2d(4)).eval()
    with BNPrior(net) as prior:
        net(torch.randn(2, 3, 8, 8))
        t0, t1 = (float(t) for t in prior.terms)
        assert float(prior.loss(first=5.0)) == pytest.approx(5 * t0 + t1, rel=1e-5)
        assert float(prior.loss()) == pytest.approx(t0 + t1, rel=1e-5)


def _shifted_cos(backbone, images: np.ndarray, targets: np.ndarray, shifts) -> float:
    x = to_tensor_batch(images)
    return float(np.mean([cos_of(backbone, torch.roll(x, s, (2, 3)), targets).mean() for s in shifts]))


def test_jitter_makes_the_images_hold_their_identity_when_shifted(trained, targets):
    shifts = [(dy, dx) for dy in (-3, 3) for dx in (-3, 3)]
    still = invert(trained.backbone, targets, size=SIZE, **BARE)
    jittered = invert(trained.backbone, targets, size=SIZE, **{**BARE, "jitter": 3})
    a, b = _shifted_cos(trained.backbone, jittered.images, targets, shifts), _shifted_cos(trained.backbone, still.images, targets, shifts)
    assert a > b + 0.02, (a, b)


def test_flip_makes_the_mirror_image_hold_its_identity(trained, targets):
    plain = invert(trained.backbone, targets, size=SIZE, **BARE)
    flipped = invert(trained.backbone, targets, size=SIZE, **{**BARE, "flip": True})
    a = cos_of(trained.backbone, to_tensor_batch(flipped.images).flip(3), targets).mean()
    b = cos_of(trained.backbone, to_tensor_batch(plain.images).flip(3), targets).mean()
    assert a > b + 0.02, (a, b)


def test_scale_makes_rescaled_images_hold_their_identity(trained, targets):
    def zoomed_cos(images: np.ndarray) -> float:
        x = to_tensor_batch(images)
        out = []
        for factor in (0.85, 1.15):
            theta = torch.tensor([[1 / factor, 0, 0], [0, 1 / factor, 0]], dtype=x.dtype).expand(len(x), 2, 3)
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            out.append(cos_of(trained.backbone, F.grid_sample(x, grid, padding_mode="reflection", align_corners=False), targets).mean())
        return float(np.mean(out))

    plain = invert(trained.backbone, targets, size=SIZE, **BARE)
    scaled = invert(trained.backbone, targets, size=SIZE, **{**BARE, "scale": 0.15})
    assert zoomed_cos(scaled.images) > zoomed_cos(plain.images) + 0.02, (zoomed_cos(scaled.images), zoomed_cos(plain.images))


def test_coarse_to_fine_lowers_high_frequencies(trained, targets):
    fine = invert(trained.backbone, targets, size=SIZE, **BARE)
    coarse = invert(trained.backbone, targets, size=SIZE, **{**BARE, "levels": 3})
    assert high_frequency_share(coarse.images) < 0.7 * high_frequency_share(fine.images)
    assert coarse.final_cos.min() > 0.8, coarse.final_cos
    assert len(coarse.history["cos"]) == STEPS


def test_restarts_keep_each_images_best_start(trained, targets):
    backbone = trained.backbone.eval()
    target = torch.as_tensor(targets, dtype=torch.float32)
    weights = _LossWeights(cos=1.0, bn=0.0, tv=0.05, l2=0.0)
    plan = _random_plan(0, len(targets), SIZE, 60, init_std=0.5, jitter=0, flip=False, scale=0.0, levels=1, restarts=3)

    def loss(z: torch.Tensor) -> np.ndarray:
        x = torch.tanh(z)
        tv = (x[:, :, 1:] - x[:, :, :-1]).pow(2).flatten(1).mean(1) + (x[..., 1:] - x[..., :-1]).pow(2).flatten(1).mean(1)
        return (1 - cos_of(backbone, x, targets)) + 0.05 * tv.numpy()

    for p in backbone.parameters():
        p.requires_grad_(False)
    try:
        best = loss(_best_start(backbone, None, plan, target, torch.device("cpu"), lr=0.1, weights=weights, size=SIZE, steps=60))
        probe = _Plan(plan.starts, plan.shifts, plan.flips, plan.zooms, plan.sides, [6])
        each = [loss(_optimise(backbone, None, s, target, probe, lr=0.1, weights=weights, size=SIZE, progress=None, total=60)[0])
                for s in plan.starts]
        one = _Plan(plan.starts[:1], plan.shifts, plan.flips, plan.zooms, plan.sides, plan.ends)
        assert _best_start(backbone, None, one, target, torch.device("cpu"), lr=0.1, weights=weights, size=SIZE, steps=60) is plan.starts[0]
    finally:
        for p in backbone.parameters():
            p.requires_grad_(True)
    # a single start is returned as drawn; three starts each probed for a tenth of the steps, the best kept per image
    assert np.all(best <= np.min(each, axis=0) + 1e-4), (best, each)
    r = invert(trained.backbone, targets, size=SIZE, **{**BARE, "restarts": 3, "steps": 60})
    assert r.settings["restarts"] == 3 and r.final_cos.min() > 0.8


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"scale": 0.6}, "scale must be at least 0 and below 0.5"),
        ({"bn_first": -1.0}, "bn_first must be 0 or more"),
        ({"levels": 5}, "levels must be at least 1 and leave at least 4 pixels"),
        ({"levels": 3, "steps": 2}, r"levels \(3\) cannot exceed steps \(2\)"),
        ({"restarts": 0}, "restarts must be at least 1"),
    ],
)
def test_bad_regulariser_settings_are_refused(trained, targets, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        invert(trained.backbone, targets[:1], size=SIZE, **kwargs)


# -- the image prior ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def average(trained):
    from cleanface.inversion import ImagePrior

    return ImagePrior.from_images(trained.images)


def test_image_prior_statistics(trained, average):
    x = trained.images.astype(np.float64) / 127.5 - 1
    np.testing.assert_allclose(average.mean.numpy(), x.mean(axis=0).transpose(2, 0, 1), atol=1e-5)
    np.testing.assert_allclose(average.std.numpy(), np.maximum(x.std(axis=0).transpose(2, 0, 1), 0.05), atol=1e-5)
    assert average.images == len(trained.images) and average.size == SIZE
    # the average face is its own minimum; the prior's base is its pre-image under tanh
    assert float(average.loss(average.mean[None])) == pytest.approx(0.0, abs=1e-10)
    np.testing.assert_allclose(torch.tanh(average.base())[0].numpy(), average.mean.clamp(-0.98, 0.98).numpy(), atol=1e-5)
    assert average.at(2 * SIZE).mean.shape == (3, 2 * SIZE, 2 * SIZE)


def test_image_prior_refuses_bad_images():
    from cleanface.inversion import ImagePrior

    with pytest.raises(ConfigError, match="at least 2 images"):
        ImagePrior.from_images(np.zeros((1, 8, 8, 3), np.uint8))
    with pytest.raises(ConfigError, match="square RGB images"):
        ImagePrior.from_images(np.zeros((4, 8, 6, 3), np.uint8))


def test_image_prior_starts_from_the_average_face_and_keeps_near_it(trained, targets, average):
    one_step = invert(trained.backbone, targets, size=SIZE, **{**BARE, "steps": 1, "init_std": 0.0, "image_prior": average})
    face = to_tensor_batch(one_step.images)
    assert float((face - average.mean.clamp(-0.98, 0.98)).abs().max()) < 0.2  # one small Adam step from the average face
    loose = invert(trained.backbone, targets, size=SIZE, **{**BARE, "init_std": 0.0, "image_prior": average})
    held = invert(trained.backbone, targets, size=SIZE, **{**BARE, "init_std": 0.0, "image_prior": average, "pixel_weight": 10.0})
    r_pix = [float(average.loss(to_tensor_batch(r.images))) for r in (held, loose)]
    assert r_pix[0] < 0.7 * r_pix[1], r_pix
    assert held.history["pix"][-1] < held.history["pix"][len(held.history["pix"]) // 4] or held.history["pix"][-1] < 0.5
    assert held.settings["image_prior"] == {"images": len(trained.images), "size": SIZE, "components": 0} and held.final_cos.min() > 0.5
    # without an image prior there is no R_pix to weigh
    free = invert(trained.backbone, targets[:1], size=SIZE, steps=3, pixel_weight=5.0)
    assert free.settings["pixel_weight"] == 0.0 and free.history["pix"] == [0.0] * 3


def test_eigenface_prior_keeps_the_images_mixes_of_training_faces(trained, targets):
    from cleanface.inversion import ImagePrior

    eigen = ImagePrior.from_images(trained.images, components=16)
    assert eigen.rank == 16 and eigen.components.shape == (16, 3 * SIZE * SIZE)
    np.testing.assert_allclose((eigen.components @ eigen.components.T).numpy(), np.eye(16), atol=1e-4)  # orthonormal
    assert torch.all(eigen.scales[:-1] >= eigen.scales[1:])  # largest variance first
    np.testing.assert_allclose(eigen.decode(torch.zeros(1, 16))[0].numpy(), eigen.center.numpy(), atol=1e-6)
    r = invert(trained.backbone, targets, size=SIZE, **{**BARE, "image_prior": eigen, "pixel_weight": None, "bn_weight": None})
    assert r.settings["pixel_weight"] == 1.0 and r.settings["bn_weight"] == 0.0 and r.settings["image_prior"]["components"] == 16
    assert r.final_cos.min() > 0.5
    # the written images lie (up to uint8 rounding and tanh clipping) in the span of the eigenfaces around their centre
    z = torch.atanh(to_tensor_batch(r.images).clamp(-0.97, 0.97)).flatten(1) - eigen.center.flatten()
    residual = z - (z @ eigen.components.T) @ eigen.components
    assert float(residual.norm() / z.norm()) < 0.2
    # a stronger prior keeps the coefficients smaller
    strong = invert(trained.backbone, targets, size=SIZE, **{**BARE, "image_prior": eigen, "pixel_weight": 20.0})
    assert strong.history["pix"][-1] < 0.5 * r.history["pix"][-1], (strong.history["pix"][-1], r.history["pix"][-1])
    with pytest.raises(ConfigError, match="levels must be 1"):
        invert(trained.backbone, targets[:1], size=SIZE, image_prior=eigen, levels=2, steps=4)
    with pytest.raises(ConfigError, match="built at 32 pixels"):
        eigen.at(64)
