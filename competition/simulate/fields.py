"""Random fields on the 75 x 75 chip grid shared by clutter and targets."""

from __future__ import annotations

import numpy as np

SIZE = 75
_FREQ = np.fft.fftfreq(SIZE)[:, None] ** 2 + np.fft.rfftfreq(SIZE)[None, :] ** 2


def smooth_field(n: int, scale: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian random fields with correlation length `scale` pixels, zero mean and unit sd per image."""
    white = rng.standard_normal((n, SIZE, SIZE))
    spectrum = np.fft.rfft2(white) * np.exp(-2.0 * (np.pi * scale) ** 2 * _FREQ)
    field = np.fft.irfft2(spectrum, s=(SIZE, SIZE))
    field -= field.mean(axis=(1, 2), keepdims=True)
    return field / field.std(axis=(1, 2), keepdims=True)


def grid() -> tuple[np.ndarray, np.ndarray]:
    """Row and column coordinates (1 x 75 x 75), origin at the chip centre."""
    r, c = np.mgrid[:SIZE, :SIZE].astype(np.float64) - (SIZE - 1) / 2
    return r[None], c[None]
