"""Model input channels built from the two dB bands, and their standardisation.

Model configs list channel names, e.g. `channels: [hh, hv, mean]` (the classic kernels' 3-band
picture that pretrained RGB networks expect):

- `hh`, `hv`: the bands as given (band_1, band_2), in dB.
- `mean`: (HH + HV) / 2 in dB, the third band of the classic kernels.
- `difference`: HH - HV in dB. Because dB is a logarithm, this *is* the co-/cross-polarisation
  power ratio sigma_HH / sigma_HV, expressed in dB (high on bright hard targets such as ships).
- `ratio`: the same power ratio in linear units, 10 ** ((HH - HV) / 10). Dividing the dB values
  themselves (band_1 / band_2, as some kernels did) is a ratio of logarithms with no physical
  meaning that explodes where HV is near 0 dB, so it is not offered.

`Standardizer` scales each channel to zero mean and unit variance with statistics fitted on
training images only, so test data never leaks into them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, get_args

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

ChannelName = Literal["hh", "hv", "mean", "ratio", "difference"]
CHANNELS: tuple[str, ...] = get_args(ChannelName)


def _difference(images: np.ndarray) -> np.ndarray:
    return images[..., 0] - images[..., 1]


_BUILDERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "hh": lambda images: images[..., 0],
    "hv": lambda images: images[..., 1],
    "mean": lambda images: (images[..., 0] + images[..., 1]) / 2,
    "difference": _difference,
    "ratio": lambda images: 10.0 ** (_difference(images) / 10),
}  # indexing and arithmetic only: each works on numpy arrays and torch tensors alike (channel_planes)


def channel_planes(bands: Any, channels: Sequence[str]) -> list[Any]:
    """The named channels of N x H x W x 2 dB `bands`, a numpy array or a torch tensor, as N x H x W planes of the same kind."""
    return [_BUILDERS[name](bands) for name in channels]


def build_channels(images: np.ndarray, channels: Sequence[str]) -> np.ndarray:
    """Stack the named channels of N x 75 x 75 x 2 dB images into float32 N x 75 x 75 x C."""
    if images.ndim != 4 or images.shape[-1] != 2:
        raise ValueError(f"expected N x H x W x 2 images (HH, HV in dB), got shape {images.shape}")
    unknown = [c for c in channels if c not in _BUILDERS]
    if unknown or not channels:
        raise ValueError(f"unknown or no channels {unknown or list(channels)}: choose from {', '.join(CHANNELS)}")
    bands = images.astype(np.float32, copy=False)
    out = np.empty(images.shape[:-1] + (len(channels),), dtype=np.float32)
    for k, plane in enumerate(channel_planes(bands, channels)):
        out[..., k] = plane
    return out


class Standardizer(TransformerMixin, BaseEstimator):
    """Per-channel standardisation; fit it on training images only.

    mean_ and scale_ (length C) are computed over all images and pixels of each channel;
    a constant channel keeps scale 1 instead of dividing by zero.
    """

    def __init__(self, eps: float = 1e-6) -> None:
        self.eps = eps

    def fit(self, images: np.ndarray, y: object = None) -> Standardizer:
        axes = tuple(range(images.ndim - 1))
        self.mean_ = images.mean(axis=axes, dtype=np.float64)
        std = images.std(axis=axes, dtype=np.float64)
        self.scale_ = np.where(std > self.eps, std, 1.0)
        self.n_channels_ = images.shape[-1]
        return self

    def transform(self, images: np.ndarray) -> np.ndarray:
        """Float32 standardised copy (computed in float32: the test set is 1 GB in float64)."""
        images = self._check(images)
        return (images - self.mean_.astype(np.float32)) / self.scale_.astype(np.float32)

    def inverse_transform(self, images: np.ndarray) -> np.ndarray:
        images = self._check(images)
        return images * self.scale_.astype(np.float32) + self.mean_.astype(np.float32)

    def _check(self, images: np.ndarray) -> np.ndarray:
        check_is_fitted(self, ["mean_", "scale_"])
        if images.shape[-1] != self.n_channels_:
            raise ValueError(f"fitted on {self.n_channels_} channels, got {images.shape[-1]}")
        return np.asarray(images, dtype=np.float32)
