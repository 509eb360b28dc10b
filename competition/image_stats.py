"""Hand-made per-image band statistics: what the classic gradient-boosting kernels fed their models.

Global statistics of each band and of the HH-HV difference, plus a crude segmentation of the
bright target (its area, brightness, elongation and offset) and the sharpness of the image.
The same table serves the difficulty check of the simulator and, later, the stacker's "band
statistics" side features. Everything is vectorised over images.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
BRIGHT_DB = (3.0, 6.0, 10.0)  # "bright" means this far above the image's median
CENTRE = slice(27, 48)  # the central 21 x 21 pixels, where the target usually is


def image_statistics(images: np.ndarray) -> pd.DataFrame:
    """One row per image (N x 75 x 75 x 2 float dB in, N rows of named float columns out)."""
    images = np.asarray(images, dtype=np.float64)
    if images.ndim != 4 or images.shape[1:] != (75, 75, 2):
        raise ValueError(f"expected images of shape N x 75 x 75 x 2, got {images.shape}")
    hh, hv = images[..., 0], images[..., 1]
    columns: dict[str, np.ndarray] = {}
    for name, band in (("hh", hh), ("hv", hv), ("diff", hh - hv)):
        columns.update(_band(name, band))
    for name, band in (("hh", hh), ("hv", hv)):
        columns.update(_target(name, band))
    columns["hh_hv_corr"] = _correlation(hh, hv)
    columns["diff_at_hh_max"] = _at_argmax(hh, hh - hv)
    return pd.DataFrame(columns)


def _band(name: str, band: np.ndarray) -> dict[str, np.ndarray]:
    """Distribution of one band's pixels, their shape, centre-vs-border contrast and sharpness."""
    flat = band.reshape(len(band), -1)
    mean, sd = flat.mean(axis=1), flat.std(axis=1)
    z = (flat - mean[:, None]) / np.maximum(sd, 1e-9)[:, None]
    out = {f"{name}_mean": mean, f"{name}_sd": sd, f"{name}_min": flat.min(axis=1), f"{name}_max": flat.max(axis=1)}
    ordered = np.sort(flat, axis=1)
    for q in QUANTILES:
        out[f"{name}_q{round(q * 100):02d}"] = ordered[:, round(q * (flat.shape[1] - 1))]
    out[f"{name}_skew"] = (z**3).mean(axis=1)
    out[f"{name}_kurtosis"] = (z**4).mean(axis=1) - 3.0
    out[f"{name}_range"] = out[f"{name}_max"] - out[f"{name}_q50"]
    out[f"{name}_centre_contrast"] = band[:, CENTRE, CENTRE].mean(axis=(1, 2)) - mean
    grad_r, grad_c = np.diff(band, axis=1), np.diff(band, axis=2)
    out[f"{name}_gradient"] = (np.abs(grad_r).mean(axis=(1, 2)) + np.abs(grad_c).mean(axis=(1, 2))) / 2
    return out


def _target(name: str, band: np.ndarray) -> dict[str, np.ndarray]:
    """Bright-pixel areas and the shape of the brightest connected-ish region, per image."""
    n = len(band)
    median = np.partition(band.reshape(n, -1), band[0].size // 2, axis=1)[:, band[0].size // 2, None, None]
    out = {f"{name}_area_{int(db)}db": (band > median + db).mean(axis=(1, 2)) for db in BRIGHT_DB}
    peak = band.max(axis=(1, 2))[:, None, None]
    mask = (band > median + 0.5 * (peak - median)).astype(np.float64)  # half the peak's height in dB
    weight = mask / np.maximum(mask.sum(axis=(1, 2), keepdims=True), 1.0)
    r, c = np.mgrid[:75, :75].astype(np.float64) - 37.0
    mr, mc = (weight * r).sum(axis=(1, 2)), (weight * c).sum(axis=(1, 2))
    vrr = (weight * r * r).sum(axis=(1, 2)) - mr**2
    vcc = (weight * c * c).sum(axis=(1, 2)) - mc**2
    vrc = (weight * r * c).sum(axis=(1, 2)) - mr * mc
    half_trace, det = (vrr + vcc) / 2, vrr * vcc - vrc**2
    spread = np.sqrt(np.maximum(half_trace**2 - det, 0.0))
    major, minor = half_trace + spread, np.maximum(half_trace - spread, 0.0)
    out[f"{name}_target_area"] = mask.sum(axis=(1, 2))
    out[f"{name}_target_mean"] = (weight * band).sum(axis=(1, 2)) - median[:, 0, 0]
    out[f"{name}_target_length"] = np.sqrt(major)
    out[f"{name}_target_elongation"] = np.sqrt(major / np.maximum(minor, 1e-3))
    out[f"{name}_target_offset"] = np.hypot(mr, mc)
    return out


def _correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1) - a.mean(axis=(1, 2))[:, None]
    b = b.reshape(len(b), -1) - b.mean(axis=(1, 2))[:, None]
    return (a * b).sum(axis=1) / np.maximum(np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1)), 1e-12)


def _at_argmax(key: np.ndarray, values: np.ndarray) -> np.ndarray:
    flat = key.reshape(len(key), -1).argmax(axis=1)
    return values.reshape(len(values), -1)[np.arange(len(values)), flat]
