"""Domain similarity for the `auto` policy: how far target images sit from the pretraining domain.

One measure for every network: the symmetric KL divergence between two per-channel Gaussians,
the target batch's activation statistics and the pretraining domain's, averaged over channels
and then over layers. Large means "different domain".

The `auto` policy divides the target's divergence by that of natural photo patches
(`BASELINE_PHOTOS`) through the same network, so one threshold serves every
architecture: photos score 1, simulated SAR chips 2.0-3.0, noise 4.9-7.1 (docs/weights.md).

- Networks with batch norm (timm): the reference is each BN layer's running mean and variance,
  learned on ImageNet; the target statistics are those of the same layer's input.
- Networks without (Keras VGG16): the reference is measured the same way on natural photos that
  ship with scikit-image (a stand-in for the pretraining photos; the HED backbone was ImageNet
  VGG16 tuned on BSDS500 natural photos), at the output of every conv layer.

Reference photos (`REFERENCE_PHOTOS`, VGG's stand-in statistics) and baseline photos
(`BASELINE_PHOTOS`, the unit of the score) are disjoint, so photos scoring as similar is never
the reference compared with itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

EPS = 1e-3  # added to both variances: dead channels (variance 0) would otherwise dominate
RELATIVE_EPS = 0.01  # for un-normalised activations (no common scale): 1% of the layer's mean reference variance
BASELINE_N = 32  # photo patches whose divergence is the unit of the `auto` score
REFERENCE_PHOTOS = ("astronaut.png", "rocket.jpg", "motorcycle_left.png")  # files in skimage.data's folder
BASELINE_PHOTOS = ("chelsea.png", "coffee.png")  # the unit of the auto score; never used as a reference


def symmetric_kl(mean_a: np.ndarray, var_a: np.ndarray, mean_b: np.ndarray, var_b: np.ndarray, eps: float = EPS) -> float:
    """Mean over channels of (KL(a||b) + KL(b||a)) / 2 for per-channel Gaussians (`eps` added to both variances)."""
    va, vb = np.asarray(var_a, float) + eps, np.asarray(var_b, float) + eps
    d2 = (np.asarray(mean_a, float) - np.asarray(mean_b, float)) ** 2
    kl_ab = 0.5 * (np.log(vb / va) + (va + d2) / vb - 1.0)
    kl_ba = 0.5 * (np.log(va / vb) + (vb + d2) / va - 1.0)
    return float(np.mean((kl_ab + kl_ba) / 2.0))


def channel_stats(activation: np.ndarray, channel_axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and variance over every other axis (batch and space)."""
    axes = tuple(a for a in range(activation.ndim) if a != channel_axis % activation.ndim)
    return activation.mean(axis=axes), activation.var(axis=axes)


def layer_average(per_layer: Sequence[float]) -> float:
    """Average over layers (each layer weighs the same, whatever its width)."""
    return float(np.mean(per_layer))


def natural_patches(names: Sequence[str], n: int, size: int = 75, seed: int = 0) -> np.ndarray:
    """`n` random size x size RGB crops in [0, 1] from scikit-image photos, shrunk so objects fill a crop."""
    from skimage import data, io, transform

    rng = np.random.default_rng(seed)
    photos = []
    for name in names:
        img = io.imread(Path(data.data_dir) / name)[..., :3].astype(np.float64) / 255.0
        scale = 2.5 * size / min(img.shape[:2])
        photos.append(transform.rescale(img, scale, channel_axis=-1, anti_aliasing=True))
    out = np.empty((n, size, size, 3), np.float32)
    for i in range(n):
        img = photos[i % len(photos)]
        r, c = rng.integers(0, img.shape[0] - size + 1), rng.integers(0, img.shape[1] - size + 1)
        out[i] = img[r : r + size, c : c + size]
    return out
