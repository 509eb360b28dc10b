"""Model channels from the dB bands, and standardisation fitted on training data only."""

from __future__ import annotations

import numpy as np
import pytest
from competition.data.channels import CHANNELS, Standardizer, build_channels
from sklearn.base import clone
from sklearn.exceptions import NotFittedError


def images(n: int = 4, seed: int = 0, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    hh = rng.normal(-20 + shift, 5, size=(n, 75, 75))
    hv = rng.normal(-26 + shift, 3, size=(n, 75, 75))
    return np.stack([hh, hv], axis=-1).astype(np.float32)


def test_channel_names() -> None:
    assert CHANNELS == ("hh", "hv", "mean", "ratio", "difference")


def test_channels_in_the_order_asked() -> None:
    x = images()
    out = build_channels(x, ["hv", "hh", "mean", "difference"])
    assert out.shape == (4, 75, 75, 4) and out.dtype == np.float32
    np.testing.assert_array_equal(out[..., 0], x[..., 1])
    np.testing.assert_array_equal(out[..., 1], x[..., 0])
    np.testing.assert_allclose(out[..., 2], (x[..., 0] + x[..., 1]) / 2, rtol=1e-6)
    np.testing.assert_allclose(out[..., 3], x[..., 0] - x[..., 1], rtol=1e-6)


def test_ratio_is_the_linear_power_ratio() -> None:
    """HH -10 dB over HV -20 dB: 10x the power, i.e. a difference of 10 dB."""
    x = np.zeros((1, 75, 75, 2), dtype=np.float32)
    x[..., 0], x[..., 1] = -10.0, -20.0
    x[0, 0, 0] = [-25.0, -22.0]
    out = build_channels(x, ["ratio", "difference"])
    assert out[0, 5, 5].tolist() == pytest.approx([10.0, 10.0])
    assert out[0, 0, 0].tolist() == pytest.approx([10 ** (-0.3), -3.0])


def test_unknown_or_no_channel_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown or no channels.*'sum'.*hh, hv, mean, ratio, difference"):
        build_channels(images(1), ["hh", "sum"])
    with pytest.raises(ValueError, match="choose from"):
        build_channels(images(1), [])
    with pytest.raises(ValueError, match="N x H x W x 2"):
        build_channels(images(1)[..., :1], ["hh"])


def test_standardizer_uses_training_statistics_only() -> None:
    train, test = build_channels(images(6, seed=1), CHANNELS), build_channels(images(5, seed=2, shift=4.0), CHANNELS)
    scaler = Standardizer().fit(train)
    mean, scale = scaler.mean_.copy(), scaler.scale_.copy()

    z_train, z_test = scaler.transform(train), scaler.transform(test)

    assert z_train.dtype == z_test.dtype == np.float32 and z_test.shape == test.shape
    np.testing.assert_allclose(z_train.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(z_train.std(axis=(0, 1, 2)), 1.0, atol=1e-4)
    np.testing.assert_array_equal(scaler.mean_, mean)  # transforming test data changed nothing
    np.testing.assert_array_equal(scaler.scale_, scale)
    # the shifted test set stays shifted: it was scaled with the training mean, not its own
    assert z_test[..., 0].mean() == pytest.approx(4.0 / scale[0], abs=0.05)
    np.testing.assert_allclose(scaler.inverse_transform(z_test), test, rtol=1e-4, atol=1e-3)


def test_standardizer_is_a_scikit_learn_transformer() -> None:
    scaler = Standardizer(eps=1e-3)
    assert clone(scaler).get_params() == {"eps": 1e-3}
    with pytest.raises(NotFittedError):
        scaler.transform(images(1))
    fitted = scaler.fit(images(2))
    with pytest.raises(ValueError, match="fitted on 2 channels, got 3"):
        fitted.transform(build_channels(images(1), ["hh", "hv", "mean"]))


def test_constant_channel_does_not_divide_by_zero() -> None:
    x = images(2)
    x[..., 1] = -30.0
    z = Standardizer().fit_transform(x)
    assert np.isfinite(z).all() and np.all(z[..., 1] == 0.0)
