"""The eight flips/rotations of a square image (the dihedral group D4), shared by augmentation and TTA.

Variant v means: mirror left-right if v >= 4, then rotate by (v % 4) quarter turns counter-clockwise.
Image arrays are N x H x W x C (the Dataset layout), so the spatial axes are 1 and 2.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

Variant = Literal["id", "rot90", "rot180", "rot270", "flip", "flip_rot90", "flip_rot180", "flip_rot270"]
VARIANTS: tuple[Variant, ...] = get_args(Variant)


def index(name: Variant) -> int:
    """Position of a variant name in VARIANTS (its group element number)."""
    return VARIANTS.index(name)


def apply(x: np.ndarray, variant: int | Variant) -> np.ndarray:
    """One variant of every image in the batch `x` (N x H x W x C)."""
    v = index(variant) if isinstance(variant, str) else int(variant)
    if v >= 4:
        x = x[:, :, ::-1]
    return np.ascontiguousarray(np.rot90(x, k=v % 4, axes=(1, 2)))


def apply_each(x: np.ndarray, variants: np.ndarray) -> np.ndarray:
    """Per-sample variants: `variants[i]` is applied to `x[i]` (vectorised over each group element)."""
    out = np.empty_like(x)
    for v in np.unique(variants):
        rows = np.flatnonzero(variants == v)
        out[rows] = apply(x[rows], int(v))
    return out


def compose(hflip: np.ndarray, vflip: np.ndarray, quarter_turns: np.ndarray) -> np.ndarray:
    """Group element of: mirror left-right (hflip), then up-down (vflip), then rotate quarter_turns.

    Up-down after left-right is a half turn; up-down alone is a mirror followed by a half turn.
    """
    flip = hflip.astype(bool) ^ vflip.astype(bool)
    turns = quarter_turns + np.where(vflip.astype(bool), 2, 0)
    return (flip * 4 + turns % 4).astype(np.int64)
