"""Ships and icebergs as radar reflectivity maps, in linear power on the chip grid.

A ship is a compact, elongated hull of bright distributed scatter with a few very strong point
scatterers (superstructure, dihedrals) whose sidelobes spread along range and azimuth; it is
bright in HV too. An iceberg is a larger, irregular, smoother and dimmer blob, brighter on the
side facing the radar (range runs along the columns) and casting a short shadow behind it; its
HV return is weak. Sizes, brightness and orientation are drawn from overlapping distributions,
so small dim ships and small bright bergy bits look alike, as on the real data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from competition.simulate.fields import SIZE, grid, smooth_field

CENTRE_SD = 2.5  # pixels: targets are not always centred
SHIP_LENGTH = (7.5, 0.55)  # pixels: median and log-sd (10 m per pixel)
SHIP_WIDTH_RATIO = (0.25, 0.55)
SHIP_HH_DB = (-7.0, 6.0)  # hull reflectivity: mean and sd (dB)
SHIP_DEPOL_DB = (8.0, 3.5)  # HH minus HV of a hull
SHIP_POINTS = 1.5  # mean number of strong points beyond the first
SHIP_POINT_DB = (2.5, 16.5)  # strong point power above the hull (dB, uniform)
BERG_RADIUS = (3.4, 0.55)  # pixels: median and log-sd
BERG_ASPECT = (1.0, 2.2)
BERG_HH_DB = (-9.0, 5.5)
BERG_DEPOL_DB = (10.0, 3.5)
BERG_ROUGHNESS = 0.12  # sd of the boundary's low harmonics (irregular outline)
BERG_TEXTURE_SD = 0.5  # log-amplitude of the smooth internal texture
BERG_FACET = (0.5, 2.0, 12.0)  # chance of one bright facet, and its power above the berg (dB)
SHADOW = (0.25, 0.3, 1.0)  # clutter left in the shadow, and shadow length as a share of the radius
ANGLE_SLOPE_DB = -0.46  # targets dim with incidence angle like the sea, so contrast barely depends on it
REFERENCE_ANGLE = 39.3
SIDELOBE = 0.03  # first sidelobe power relative to a point (about -15 dB)


@dataclass(frozen=True)
class Targets:
    """Distributed reflectivity (speckled later), point scatterers (deterministic) and shadow."""

    hh: np.ndarray
    hv: np.ndarray
    shadow: np.ndarray
    points_hh: np.ndarray
    points_hv: np.ndarray


def render_targets(labels: np.ndarray, angle: np.ndarray, rng: np.random.Generator) -> Targets:
    """Draw one ship (label 0) or iceberg (label 1) per chip."""
    n = len(labels)
    dim = _power(ANGLE_SLOPE_DB * (angle - REFERENCE_ANGLE))[:, None, None]
    r, c = grid()
    cy, cx = np.clip(rng.normal(0.0, CENTRE_SD, (2, n, 1, 1)), -12, 12)
    maps = [np.ones((n, SIZE, SIZE)) if name == "shadow" else np.zeros((n, SIZE, SIZE)) for name in _FIELDS]
    for draw, rows in ((_ships, labels == 0), (_icebergs, labels == 1)):
        dy, dx = r - cy[rows], c - cx[rows]
        centre = (cy[rows][:, :, 0] + (SIZE - 1) / 2, cx[rows][:, :, 0] + (SIZE - 1) / 2)  # pixel index, k x 1
        for out, part in zip(maps, draw(dy, dx, centre, rng), strict=True):
            out[rows] = part
    hh, hv, shadow, points_hh, points_hv = maps
    return Targets(hh * dim, hv * dim, shadow, points_hh * dim, points_hv * dim)


_FIELDS = ("hh", "hv", "shadow", "points_hh", "points_hv")


def _ships(dy: np.ndarray, dx: np.ndarray, centre: tuple[np.ndarray, np.ndarray], rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    n = len(dy)
    length = np.clip(SHIP_LENGTH[0] * np.exp(rng.normal(0, SHIP_LENGTH[1], (n, 1, 1))), 2.0, 30.0)
    width = np.maximum(length * rng.uniform(*SHIP_WIDTH_RATIO, (n, 1, 1)), 1.0)
    theta = rng.uniform(0, np.pi, (n, 1, 1))
    u = dx * np.cos(theta) + dy * np.sin(theta)
    v = -dx * np.sin(theta) + dy * np.cos(theta)
    hull = np.exp(-(((2 * u / length) ** 2 + (2 * v / width) ** 2) ** 2))
    hh_db = rng.normal(*SHIP_HH_DB, (n, 1, 1))
    hh = _power(hh_db) * hull
    hv = _power(hh_db - rng.normal(*SHIP_DEPOL_DB, (n, 1, 1))) * hull

    k = 1 + rng.poisson(SHIP_POINTS, n).clip(0, 4)
    pos = rng.uniform(-0.45, 0.45, (n, 5)) * length[:, 0]
    strength = hh_db[:, 0] + rng.uniform(*SHIP_POINT_DB, (n, 5))
    strength[np.arange(5)[None, :] >= k[:, None]] = -np.inf
    depol = rng.normal(*SHIP_DEPOL_DB, (n, 5))
    rows = np.rint(centre[0] + pos * np.sin(theta[:, 0])).astype(int)
    cols = np.rint(centre[1] + pos * np.cos(theta[:, 0])).astype(int)
    points_hh = _point_image(n, rows, cols, _power(strength))
    points_hv = _point_image(n, rows, cols, _power(strength - depol))
    return hh, hv, np.ones_like(hh), points_hh, points_hv


def _icebergs(dy: np.ndarray, dx: np.ndarray, centre: tuple[np.ndarray, np.ndarray], rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    n = len(dy)
    radius = np.clip(BERG_RADIUS[0] * np.exp(rng.normal(0, BERG_RADIUS[1], (n, 1, 1))), 1.5, 14.0)
    aspect = rng.uniform(*BERG_ASPECT, (n, 1, 1))
    theta = rng.uniform(0, np.pi, (n, 1, 1))
    harmonics = rng.normal(0, BERG_ROUGHNESS, (n, 3, 1, 1))
    phases = rng.uniform(0, 2 * np.pi, (n, 3, 1, 1))
    body = _blob(dy, dx, radius, aspect, theta, harmonics, phases)

    facing = np.exp(-rng.uniform(0.0, 1.2, (n, 1, 1)) * dx / radius)  # near range (left) is brighter
    texture = np.exp(BERG_TEXTURE_SD * smooth_field(n, 2.0, rng) - BERG_TEXTURE_SD**2 / 2)
    hh_db = rng.normal(*BERG_HH_DB, (n, 1, 1))
    shape = body * facing * texture
    hh = _power(hh_db) * shape
    hv = _power(hh_db - rng.normal(*BERG_DEPOL_DB, (n, 1, 1))) * shape

    shift = radius * rng.uniform(SHADOW[1], SHADOW[2], (n, 1, 1))
    behind = _blob(dy, dx - shift, radius, aspect, theta, harmonics, phases)
    shadow = 1.0 - (1.0 - SHADOW[0]) * np.clip(behind - body, 0.0, 1.0)

    has_facet = rng.random(n) < BERG_FACET[0]
    facet_db = np.where(has_facet, hh_db[:, 0, 0] + rng.uniform(BERG_FACET[1], BERG_FACET[2], n), -np.inf)[:, None]
    rows = np.rint(centre[0] + rng.normal(0, 0.4, (n, 1)) * radius[:, 0]).astype(int)
    cols = np.rint(centre[1] - 0.5 * radius[:, 0]).astype(int)
    points_hh = _point_image(n, rows, cols, _power(facet_db))
    points_hv = _point_image(n, rows, cols, _power(facet_db - rng.normal(*BERG_DEPOL_DB, (n, 1))))
    return hh, hv, shadow, points_hh, points_hv


def _blob(dy: np.ndarray, dx: np.ndarray, radius: np.ndarray, aspect: np.ndarray, theta: np.ndarray, harmonics: np.ndarray, phases: np.ndarray) -> np.ndarray:
    """Soft mask of an irregular ellipse whose outline wobbles with low angular harmonics."""
    u = (dx * np.cos(theta) + dy * np.sin(theta)) / aspect
    v = -dx * np.sin(theta) + dy * np.cos(theta)
    rho, phi = np.hypot(u, v), np.arctan2(v, u)
    m = np.arange(2, 5)[None, :, None, None]
    edge = radius * (1.0 + (harmonics * np.cos(m * phi[:, None] + phases)).sum(axis=1))
    return 1.0 / (1.0 + np.exp(-(edge - rho) / 0.7))


def _point_image(n: int, rows: np.ndarray, cols: np.ndarray, power: np.ndarray) -> np.ndarray:
    """Point scatterers with their range and azimuth sidelobes (a cross), N x 75 x 75."""
    out = np.zeros((n, SIZE, SIZE))
    inside = (rows >= 0) & (rows < SIZE) & (cols >= 0) & (cols < SIZE) & (power > 0)
    img, k = np.nonzero(inside)
    rr, cc, pw = rows[img, k], cols[img, k], power[img, k]
    np.add.at(out, (img, rr, cc), pw)
    offsets = np.arange(SIZE)
    lobe_r = SIDELOBE / (1.0 + np.abs(offsets[None, :] - rr[:, None])) ** 2
    lobe_c = SIDELOBE / (1.0 + np.abs(offsets[None, :] - cc[:, None])) ** 2
    lobe_r[np.arange(len(rr)), rr] = 0.0
    lobe_c[np.arange(len(cc)), cc] = 0.0
    # numpy's stubs type ufunc.at's indices as integer arrays only; at runtime an index tuple with slices is fine
    np.add.at(out, (img, slice(None), cc), (pw[:, None] * lobe_r))  # type: ignore[arg-type]  # along the column through the point
    np.add.at(out, (img, rr, slice(None)), (pw[:, None] * lobe_c))  # type: ignore[arg-type]  # along the row
    return out


def _power(db: np.ndarray) -> np.ndarray:
    return np.power(10.0, db / 10.0)
