"""Training augmentation on the model's device: the numpy `Augmenter`'s ops on a torch batch.

For a GPU, where building and augmenting each batch with numpy on the CPU would leave the device
waiting. The batch is N x C x H x W float32 in dB (raw bands, channels first), already on the
device. Every per-sample choice comes from `augment.draw` on the numpy generator the trainer
passes (a few numbers per sample), so for the same generator state the flips, quarter turns,
rotation angles, shifts and zooms are exactly those the numpy `Augmenter` would pick; only the
speckle field is drawn on the device, from a `torch.Generator` seeded once per fit.

Plain torch rather than torchvision.transforms.v2: v2's `affine` and `rotate` apply one set of
parameters to the whole batch and fill borders with a constant, while each sample here has its
own warp with mirrored borders. The warp is `affine_grid` + `grid_sample` (bilinear, reflection
about the border pixel centres with align_corners=True: `augment.warp`'s mirror), flips and turns
are exact index permutations (`torch.flip`, `torch.rot90`), and speckle is Gamma(L, 1/L) noise
drawn with torch's own Gamma sampler (the one `torch.distributions.Gamma` uses).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from competition.training.augment import AugmentConfig, Draws, draw


def dihedral_each(x: torch.Tensor, variants: np.ndarray) -> torch.Tensor:
    """Per-sample dihedral views of N x C x H x W `x` (variant numbering of competition.training.dihedral).

    Variant v: mirror left-right if v >= 4, then v % 4 quarter turns counter-clockwise, as
    `dihedral.apply` does on N x H x W x C arrays (its spatial axes 1, 2 are axes 2, 3 here).
    """
    out = x.clone()
    for v in np.unique(variants):
        if v == 0:
            continue
        rows = torch.from_numpy(np.flatnonzero(variants == v)).to(x.device)
        view = x.index_select(0, rows)
        if v >= 4:
            view = torch.flip(view, dims=(3,))
        out.index_copy_(0, rows, torch.rot90(view, k=int(v) % 4, dims=(2, 3)))
    return out


def warp_theta(angle: np.ndarray, shift: np.ndarray, scale: np.ndarray, height: int, width: int) -> torch.Tensor:
    """N x 2 x 3 `affine_grid` matrices of `augment.warp`'s inverse map (rotate, zoom about the centre, shift).

    `augment.warp` maps an output pixel at (y, x) from the centre (cy, cx) to the input position
    ((cos oy - sin ox) / s + cy, (sin oy + cos ox) / s + cx) with (oy, ox) = (y, x) - shift; here
    the same map in affine_grid's normalised coordinates u = x / cx, v = y / cy (align_corners=True).
    Angles in radians, shifts in pixels (dy, dx), scale as a factor.
    """
    cy, cx = (height - 1) / 2, (width - 1) / 2
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    dy, dx = shift[:, 0], shift[:, 1]
    theta = np.empty((len(angle), 2, 3))
    theta[:, 0] = np.stack([cos, sin * cy / cx, -(sin * dy + cos * dx) / cx], axis=1)  # x_src from (u, v, 1)
    theta[:, 1] = np.stack([-sin * cx / cy, cos, (sin * dx - cos * dy) / cy], axis=1)  # y_src from (u, v, 1)
    return torch.from_numpy(theta.astype(np.float32))


def warp(x: torch.Tensor, angle: np.ndarray, shift: np.ndarray, scale: np.ndarray) -> torch.Tensor:
    """`augment.warp` on N x C x H x W tensors: per-sample rotation, zoom and shift, bilinear, mirrored borders."""
    n, _, h, w = x.shape
    with torch.autocast(device_type=x.device.type, enabled=False):  # affine_grid is a matmul: bf16 would move pixels by ~0.1
        grid = F.affine_grid(warp_theta(angle, shift, scale, h, w).to(x.device), [n, 1, h, w], align_corners=True)
        return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=True).to(x.dtype)


def speckle_db(shape: tuple[int, ...], looks: float, generator: torch.Generator) -> torch.Tensor:
    """Multiplicative Gamma(looks, 1/looks) noise (mean 1 in linear power) in dB, on the generator's device."""
    alpha = torch.full(shape, float(looks), device=generator.device)
    gamma = torch._standard_gamma(alpha, generator=generator) / looks
    return 10.0 * torch.log10(gamma.clamp_min(1e-12))


class DeviceAugmenter:
    """`Augmenter` for tensors on a device: `(x, rng) -> augmented x`, x N x C x H x W float in dB.

    `seed` seeds the device generator of the speckle field; `rng` (the trainer's numpy
    generator) gives every other choice, through the same `augment.draw` as the numpy path.
    """

    def __init__(self, cfg: AugmentConfig, seed: int, device: torch.device | str) -> None:
        self.cfg = cfg
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def __call__(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        return self.apply(x, draw(self.cfg, len(x), x.shape[2], rng))

    def apply(self, x: torch.Tensor, d: Draws) -> torch.Tensor:
        """The ops of the draws `d` on `x` (N x C x H x W): dihedral view, then the warp, then speckle."""
        out = dihedral_each(x, d.variant)
        moved = np.flatnonzero((d.angle != 0) | (d.shift != 0).any(axis=1) | (d.scale != 1))
        if len(moved):
            rows = torch.from_numpy(moved).to(x.device)
            out.index_copy_(0, rows, warp(out.index_select(0, rows), d.angle[moved], d.shift[moved], d.scale[moved]))
        noisy = np.flatnonzero(d.speckle)
        if len(noisy):
            rows = torch.from_numpy(noisy).to(x.device)
            out.index_add_(0, rows, speckle_db((len(noisy), *x.shape[1:]), self.cfg.speckle_looks, self.generator).to(out.dtype))
        return out
