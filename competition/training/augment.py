"""Training augmentation on the fly: per-sample random ops, vectorised over the batch with numpy.

Images are N x 75 x 75 x C float32 in dB (the model's raw input). Each op fires per sample with
its own probability from `AugmentConfig`. Flips and quarter turns form one dihedral variant per
sample (so cached prefix features can stand in for them, see prefix_cache.py); small rotation,
shift and zoom form one affine warp per sample (bilinear, mirrored borders); speckle multiplies
linear power by Gamma(L, 1/L) noise (mean 1), i.e. adds 10*log10(noise) in dB.

All random numbers are drawn up front by `draw` with a fixed count per sample, so the same rng
gives the same dihedral choice whether or not the other ops can be applied.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import Field, model_validator

from competition.config import Strict
from competition.training import dihedral


class AugmentConfig(Strict):
    """Probability of each op per sample (0 = off) and its strength."""

    hflip: float = Field(0.5, ge=0.0, le=1.0, description="mirror left-right")
    vflip: float = Field(0.5, ge=0.0, le=1.0, description="mirror up-down")
    rot90: float = Field(0.5, ge=0.0, le=1.0, description="rotate by 1, 2 or 3 quarter turns")
    rotate: float = Field(0.0, ge=0.0, le=1.0, description="small rotation")
    rotate_degrees: float = Field(10.0, ge=0.0, le=180.0, description="largest small rotation, either way")
    shift: float = Field(0.0, ge=0.0, le=1.0, description="translation")
    shift_fraction: float = Field(0.1, ge=0.0, le=0.5, description="largest shift as a fraction of the side")
    zoom: float = Field(0.0, ge=0.0, le=1.0, description="scale about the centre")
    zoom_min: float = Field(0.9, gt=0.0)
    zoom_max: float = Field(1.1, gt=0.0)
    speckle: float = Field(0.0, ge=0.0, le=1.0, description="extra multiplicative speckle")
    speckle_looks: float = Field(16.0, gt=0.0, description="equivalent number of looks of the added speckle (higher = milder)")

    @model_validator(mode="after")
    def _zoom_order(self) -> AugmentConfig:
        if self.zoom_min > self.zoom_max:
            raise ValueError(f"zoom_min ({self.zoom_min}) must not exceed zoom_max ({self.zoom_max})")
        return self

    @property
    def geometric(self) -> bool:
        """Whether any op beyond the dihedral group can fire (such ops cannot use cached features)."""
        return self.rotate > 0 or self.shift > 0 or self.zoom > 0

    def dihedral_support(self) -> list[dihedral.Variant]:
        """The dihedral variants the random flips/turns can produce (what a prefix cache must hold)."""
        h = [0, 1] if self.hflip > 0 else [0]
        v = [0, 1] if self.vflip > 0 else [0]
        k = [0, 1, 2, 3] if self.rot90 > 0 else [0]
        grid = np.array(np.meshgrid(h, v, k)).reshape(3, -1)
        return [dihedral.VARIANTS[i] for i in sorted(set(dihedral.compose(*grid).tolist()))]


@dataclass(frozen=True)
class Draws:
    """Every random choice for one batch of n samples."""

    variant: np.ndarray  # dihedral element per sample
    angle: np.ndarray  # radians (0 where the op did not fire)
    shift: np.ndarray  # n x 2 pixels (dy, dx)
    scale: np.ndarray  # zoom factor (1 where the op did not fire)
    speckle: np.ndarray  # bool: add speckle to this sample
    speckle_seed: np.ndarray  # per-sample seed of the speckle field


def draw(cfg: AugmentConfig, n: int, side: int, rng: np.random.Generator) -> Draws:
    """Draw all per-sample choices with a fixed number of calls (the dihedral part first)."""
    u = rng.random((n, 6))
    hflip, vflip = u[:, 0] < cfg.hflip, u[:, 1] < cfg.vflip
    turns = np.where(u[:, 2] < cfg.rot90, rng.integers(1, 4, n), 0)
    magnitudes = rng.random((n, 5))
    angle = np.where(u[:, 3] < cfg.rotate, np.deg2rad(cfg.rotate_degrees) * (2 * magnitudes[:, 0] - 1), 0.0)
    shift = np.where((u[:, 4] < cfg.shift)[:, None], cfg.shift_fraction * side * (2 * magnitudes[:, 1:3] - 1), 0.0)
    scale = np.where(u[:, 5] < cfg.zoom, cfg.zoom_min + (cfg.zoom_max - cfg.zoom_min) * magnitudes[:, 3], 1.0)
    speckle = magnitudes[:, 4] < cfg.speckle
    return Draws(dihedral.compose(hflip, vflip, turns), angle, shift, scale, speckle, rng.integers(0, 2**63, n))


def _mirror(coord: np.ndarray, size: int) -> np.ndarray:
    """Reflect coordinates into [0, size - 1] (symmetric border, no edge duplication)."""
    period = 2 * (size - 1)
    c = np.abs(np.mod(coord, period))
    return np.where(c > size - 1, period - c, c)


def warp(x: np.ndarray, angle: np.ndarray, shift: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Rotate by `angle`, zoom by `scale` about the centre, then shift, per sample; bilinear, mirrored borders."""
    n, h, w, _ = x.shape
    cy, cx = (h - 1) / 2, (w - 1) / 2
    yy, xx = np.meshgrid(np.arange(h) - cy, np.arange(w) - cx, indexing="ij")
    cos, sin = (np.cos(angle) / scale)[:, None, None], (np.sin(angle) / scale)[:, None, None]
    oy, ox = yy[None] - shift[:, 0, None, None], xx[None] - shift[:, 1, None, None]
    src_y = _mirror(cos * oy - sin * ox + cy, h)  # inverse map: output pixel -> input position
    src_x = _mirror(sin * oy + cos * ox + cx, w)
    y0 = np.minimum(np.floor(src_y).astype(np.int64), h - 2)
    x0 = np.minimum(np.floor(src_x).astype(np.int64), w - 2)
    wy, wx = (src_y - y0)[..., None].astype(x.dtype), (src_x - x0)[..., None].astype(x.dtype)
    b = np.arange(n)[:, None, None]
    top = x[b, y0, x0] * (1 - wx) + x[b, y0, x0 + 1] * wx
    bottom = x[b, y0 + 1, x0] * (1 - wx) + x[b, y0 + 1, x0 + 1] * wx
    return top * (1 - wy) + bottom * wy


def speckle_db(shape: tuple[int, ...], looks: float, seeds: np.ndarray) -> np.ndarray:
    """Multiplicative Gamma(looks, 1/looks) noise (mean 1 in linear power), returned in dB."""
    rng = np.random.default_rng(seeds.tolist())
    gamma = rng.gamma(looks, 1.0 / looks, size=shape)
    return (10.0 * np.log10(np.maximum(gamma, 1e-12))).astype(np.float32)


class Augmenter:
    """The `Augment` callable of the model interface: `(x_batch, row_indices, rng) -> x_batch`."""

    def __init__(self, cfg: AugmentConfig) -> None:
        self.cfg = cfg

    def __call__(self, x: np.ndarray, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        d = draw(self.cfg, len(x), x.shape[1], rng)
        out = dihedral.apply_each(x, d.variant)
        moved = np.flatnonzero((d.angle != 0) | (d.shift != 0).any(axis=1) | (d.scale != 1))
        if len(moved):
            out[moved] = warp(out[moved], d.angle[moved], d.shift[moved], d.scale[moved])
        noisy = np.flatnonzero(d.speckle)
        if len(noisy):
            out[noisy] += speckle_db(out[noisy].shape, self.cfg.speckle_looks, d.speckle_seed[noisy])
        return out.astype(x.dtype, copy=False)
