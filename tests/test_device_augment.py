"""The on-device augmenter against the numpy Augmenter, on CPU tensors: same draws, same images.

Flips and quarter turns are exact permutations (identical images); the warp is the same bilinear
map with mirrored borders (equal up to float rounding); speckle is checked by its statistics.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from competition.training.augment import AugmentConfig, Augmenter, draw
from competition.training.device_augment import DeviceAugmenter, speckle_db

OFF = dict(hflip=0, vflip=0, rot90=0, rotate=0, shift=0, zoom=0, speckle=0)


@pytest.fixture
def images() -> np.ndarray:
    """N x H x W x C raw dB images (the Dataset layout), smooth enough that the warp's interpolation is tame."""
    rng = np.random.default_rng(0)
    return rng.normal(-20, 5, size=(24, 33, 33, 2)).astype(np.float32)


def _both(cfg: AugmentConfig, images: np.ndarray, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """The numpy Augmenter's batch and the device augmenter's (channels last again), from equal generators."""
    expected = Augmenter(cfg)(images.copy(), np.arange(len(images)), np.random.default_rng(seed))
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    got = DeviceAugmenter(cfg, seed=0, device="cpu")(x, np.random.default_rng(seed))
    return expected, got.permute(0, 2, 3, 1).numpy()


def test_flips_and_turns_are_identical_to_the_numpy_augmenter(images: np.ndarray) -> None:
    expected, got = _both(AugmentConfig(hflip=0.5, vflip=0.5, rot90=0.5), images)
    assert np.array_equal(got, expected)
    assert not np.array_equal(got, images)  # some samples did move


def test_rotation_shift_and_zoom_match_the_numpy_warp(images: np.ndarray) -> None:
    cfg = AugmentConfig(**{**OFF, "rotate": 0.7, "rotate_degrees": 25, "shift": 0.7, "shift_fraction": 0.2, "zoom": 0.7, "zoom_min": 0.8, "zoom_max": 1.2})
    expected, got = _both(cfg, images)
    moved = (draw(cfg, len(images), images.shape[1], np.random.default_rng(3)).scale != 1).sum()
    assert moved > 5
    np.testing.assert_allclose(got, expected, atol=5e-4)  # the same bilinear map; float32 grid rounding only
    assert not np.allclose(got, images, atol=1e-2)


def test_everything_at_once_matches_except_the_speckle_field(images: np.ndarray) -> None:
    cfg = AugmentConfig(hflip=0.5, vflip=0.5, rot90=0.5, rotate=0.5, shift=0.5, zoom=0.5)
    expected, got = _both(cfg, images)
    np.testing.assert_allclose(got, expected, atol=5e-4)


def test_rotation_angles_stay_within_the_configured_degrees() -> None:
    """A single bright pixel off the centre turns about the centre by the drawn angle, never more than rotate_degrees."""
    cfg = AugmentConfig(**{**OFF, "rotate": 1.0, "rotate_degrees": 10})
    side, r = 65, 24
    x = torch.zeros(200, 1, side, side)
    x[:, 0, side // 2, side // 2 + r] = 1.0  # right of the centre
    out = DeviceAugmenter(cfg, seed=0, device="cpu")(x, np.random.default_rng(5))
    yy, xx = torch.meshgrid(torch.arange(side, dtype=torch.float32), torch.arange(side, dtype=torch.float32), indexing="ij")
    mass = out[:, 0].sum(dim=(1, 2))
    cy, cx = (out[:, 0] * yy).sum(dim=(1, 2)) / mass, (out[:, 0] * xx).sum(dim=(1, 2)) / mass
    degrees = np.rad2deg(torch.atan2(-(cy - side // 2), cx - side // 2).numpy())  # counter-clockwise, image rows point down
    assert np.abs(degrees).max() <= 10.5
    assert np.abs(degrees).max() > 8  # the range is used, not just small angles
    assert (degrees > 1).any() and (degrees < -1).any()  # both ways


def test_speckle_has_mean_one_and_the_variance_of_its_looks() -> None:
    """Gamma(L, 1/L) in linear power: mean 1, variance 1/L; in dB its mean is below 0 (log of a mean-1 variable)."""
    noise = speckle_db((200, 2, 32, 32), 16.0, torch.Generator().manual_seed(0))
    linear = 10 ** (noise.double() / 10)
    assert abs(float(linear.mean()) - 1) < 0.005
    assert abs(float(linear.var()) - 1 / 16) < 0.003
    again = speckle_db((200, 2, 32, 32), 16.0, torch.Generator().manual_seed(0))
    assert torch.equal(noise, again)  # seeded by its generator


def test_speckle_fires_with_its_probability_and_only_adds_noise(images: np.ndarray) -> None:
    cfg = AugmentConfig(**{**OFF, "speckle": 0.5, "speckle_looks": 4})
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    d = draw(cfg, len(images), images.shape[1], np.random.default_rng(7))
    out = DeviceAugmenter(cfg, seed=1, device="cpu")(x, np.random.default_rng(7))
    changed = (out != x).flatten(1).any(dim=1).numpy()
    assert np.array_equal(changed, d.speckle) and 0 < changed.sum() < len(images)
    noise = (out - x)[torch.from_numpy(d.speckle)]
    assert abs(float((10 ** (noise.double() / 10)).mean()) - 1) < 0.02


def test_the_device_generator_makes_runs_repeatable(images: np.ndarray) -> None:
    cfg = AugmentConfig(hflip=0.5, rotate=0.5, speckle=0.5)
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    first = DeviceAugmenter(cfg, seed=4, device="cpu")(x, np.random.default_rng(0))
    second = DeviceAugmenter(cfg, seed=4, device="cpu")(x, np.random.default_rng(0))
    other = DeviceAugmenter(cfg, seed=5, device="cpu")(x, np.random.default_rng(0))
    assert torch.equal(first, second) and not torch.equal(first, other)


@pytest.mark.slow
def test_a_fit_with_batches_built_on_the_device_equals_the_numpy_path() -> None:
    """The timm adapter's GPU path (images kept on the device, augmented and standardised there), forced on CPU:
    the same draws give the same batches, so the fitted model predicts as the numpy path's does."""
    from competition.models.registry import create_model
    from competition.models.schema import ModelInputs

    rng = np.random.default_rng(0)
    images = rng.normal(-20, 5, size=(40, 33, 33, 2)).astype(np.float32)
    angle, y = rng.uniform(30, 45, 40), (rng.random(40) < 0.5).astype(np.float32)
    train, valid = ModelInputs(images[:32], angle[:32], y[:32]), ModelInputs(images[32:], angle[32:], y[32:])
    augment = Augmenter(AugmentConfig(hflip=0.5, vflip=0.5, rot90=0.5, rotate=0.5, zoom=0.5))
    predictions = []
    for on_device in (False, True):
        model = create_model("mobilenetv3_small_050", weights="none", channels=["hv", "mean", "ratio"], image_size=32, policy="all", seed=0)
        model.prepare(train.x, train.angle)
        model.device_batches = on_device  # what a CUDA device sets
        model.fit(train, valid, epochs=1, batch_size=8, augment=augment, seed=3)
        assert (model._fit is not None and model._fit.on_device is not None) == on_device
        predictions.append(model.predict(valid))
    # batch-norm running statistics are the fit's own 4 batches (`timm_net.RunningStatistics`), so the paths' float
    # differences (interpolation, standardising order: batches equal to 5e-4 above) reach the predictions of this
    # random-init network by up to ~0.01; another seed's fit differs by ~0.5
    np.testing.assert_allclose(predictions[1], predictions[0], atol=2e-2)
    assert np.ptp(predictions[0]) > 1e-3  # not a constant that any path would match
    model = create_model("mobilenetv3_small_050", weights="none", channels=["hv", "mean", "ratio"], image_size=32, policy="all", seed=0)
    model.prepare(train.x, train.angle)
    model.fit(train, valid, epochs=1, batch_size=8, augment=augment, seed=4)
    assert np.abs(model.predict(valid) - predictions[0]).max() > 0.2  # the tolerance tells draws apart
