"""The imaging chain: reflectivity + thermal noise -> speckle -> resampling -> dB.

Each pixel's power is the scene's reflectivity (plus, in HV, the thermal noise power) times
single-look speckle (exponential), plus deterministic point scatterers. Averaging
neighbouring looks (the small resampling kernel below) leaves about 4.4 equivalent looks, as in
Sentinel-1 IW GRDH, and correlates neighbouring pixels. The result goes to dB as in the files.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from scipy.ndimage import convolve1d

from competition.simulate.clutter import sea_levels, swell
from competition.simulate.targets import render_targets

LOOK_KERNEL = np.array([0.18, 0.64, 0.18])  # 1 / sum(w2d**2) = 4.4 equivalent looks
BATCH = 256


def render(angle: np.ndarray, sea_state: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Chips for one batch of images: float32, N x 75 x 75 x 2 (HH, HV in dB)."""
    n = len(angle)
    hh_sea, hv_sea, noise = (level[:, None, None] for level in sea_levels(angle, sea_state, rng))
    texture = swell(n, rng)
    target = render_targets(labels, angle, rng)
    sea = texture * target.shadow
    shape = (n,) + texture.shape[1:]
    hh = (hh_sea * sea + target.hh) * rng.standard_exponential(shape) + target.points_hh
    hv = (hv_sea * sea + target.hv + noise) * rng.standard_exponential(shape) + target.points_hv
    bands = np.stack([hh, hv], axis=-1)
    bands = convolve1d(convolve1d(bands, LOOK_KERNEL, axis=1, mode="wrap"), LOOK_KERNEL, axis=2, mode="wrap")
    return (10.0 * np.log10(bands)).astype(np.float32)


def render_batches(angle: np.ndarray, sea_state: np.ndarray, labels: np.ndarray, seed: np.random.SeedSequence) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield (rows, chips) batch by batch; each batch has its own stream, so output is reproducible."""
    starts = range(0, len(angle), BATCH)
    for start, child in zip(starts, seed.spawn(len(starts)), strict=True):
        rows = slice(start, min(start + BATCH, len(angle)))
        yield rows, render(angle[rows], sea_state[rows], labels[rows], np.random.default_rng(child))
