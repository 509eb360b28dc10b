"""Who is in the simulated competition: scenes, exact angles, labels, splits, decoys and ids.

Sentinel-1 delivers many chips from one acquisition, and every chip of one scene carries the
same incidence angle to four decimals. On the real data this makes exact angle values repeat,
groups lean almost always to one label (iceberg scenes are the crowded ones: a calving front
yields many bergs, while a ship is usually alone), and train and test share scenes because
Kaggle split images, not scenes. The test file also holds machine-generated decoys whose angles
have many decimals and which are never scored. The parameters below were calibrated to the
published facts (../shared/data/statoil/README.md); no real ids or angles are used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NA_FRACTION = 0.083  # share of training rows whose angle is "na" (real: 133 of 1,604), all ships
SCENE_SIZE_EXPONENT = 2.15  # scene sizes follow P(s) ~ s**-2.15 (real: 64% of scenes hold one image)
MAX_SCENE_SHARE = 0.012  # the largest scene holds about 1.2% of the scene rows (real: 59 of 4,883)
ICEBERG_LOGIT = (-2.05, 1.45)  # P(iceberg scene) = sigmoid(a + b * ln(size)): crowded scenes are icebergs
STRAY_LABEL = 0.04  # expected images per scene that disagree with its label (real: 6 mixed groups of 879)
SWATH = (29.0, 46.0)  # IW swath incidence range (degrees)
SWATH_BETA = (2.22, 1.46)  # shape of scene angles across the swath (real train: mean 39.3, sd 3.8)
LOW_ANGLE_SHARE = 0.006  # scenes from below the usual swath (real minima: 24.75 train, 23.08 test)
LOW_ANGLE = (23.0, 29.0)
DECOY_RANGE = (30.3, 50.7)  # machine-generated rows: wider, a little higher (real: mean 40.8, sd 4.1)
DECOY_BETA = (2.67, 2.53)
SEA_STATE_SD = (3.0, 2.0)  # dB spread of the wind/sea-state level: per scene, then per image


@dataclass(frozen=True)
class Layout:
    """One row per image, train rows first; everything the pixel physics and the writer need.

    angle: true incidence angle (known even where the published value is "na").
    angle_text: what the file says: a rounded float, NaN for "na", or the full float for decoys.
    sea_state: dB offset of the sea clutter (wind), shared in part by the images of one scene.
    usage: "" for train, else Public / Private / Ignored (decoys are Ignored).
    """

    ids: np.ndarray
    is_train: np.ndarray
    angle: np.ndarray
    angle_published: np.ndarray
    labels: np.ndarray
    machine_generated: np.ndarray
    scene: np.ndarray
    sea_state: np.ndarray
    usage: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def make_layout(n_train: int, n_test: int, decoy_fraction: float, public_fraction: float, rng: np.random.Generator) -> Layout:
    """Draw scenes, split their images between train and test, add "na" ships and test decoys."""
    n_na = round(NA_FRACTION * n_train)
    n_decoy = round(decoy_fraction * n_test)
    n_train_known, n_test_real = n_train - n_na, n_test - n_decoy
    sizes = _scene_sizes(n_train_known + n_test_real, rng)
    scene_angle = _scene_angles(len(sizes), rng)
    scene_label = rng.random(len(sizes)) < _sigmoid(ICEBERG_LOGIT[0] + ICEBERG_LOGIT[1] * np.log(sizes))
    scene_sea = rng.normal(0.0, SEA_STATE_SD[0], len(sizes))

    scene = np.repeat(np.arange(len(sizes)), sizes)
    labels = scene_label[scene].astype(np.int8)
    stray = rng.random(len(scene)) < STRAY_LABEL / sizes[scene]  # big scenes stay pure
    labels[stray] = 1 - labels[stray]
    to_train = np.zeros(len(scene), dtype=bool)
    to_train[rng.permutation(len(scene))[:n_train_known]] = True

    # "na" ships and decoys are scenes of their own; their true angles still drive the physics.
    n_single = n_na + n_decoy
    single_scene = len(sizes) + np.arange(n_single)
    na_angle = _scene_angles(n_na, rng)
    decoy_angle = _decoy_angles(n_decoy, rng)
    decoy_label = (rng.random(n_decoy) < 0.5).astype(np.int8)

    train_idx, test_idx = np.flatnonzero(to_train), np.flatnonzero(~to_train)
    angle = np.concatenate([scene_angle[scene[train_idx]], na_angle, scene_angle[scene[test_idx]], decoy_angle])
    published = angle.copy()
    published[n_train_known:n_train] = np.nan
    labels = np.concatenate([labels[train_idx], np.zeros(n_na, np.int8), labels[test_idx], decoy_label])
    scene = np.concatenate([scene[train_idx], single_scene[:n_na], scene[test_idx], single_scene[n_na:]])
    decoy = np.zeros(len(angle), dtype=bool)
    decoy[n_train + n_test_real :] = True
    sea = np.concatenate([scene_sea, rng.normal(0.0, SEA_STATE_SD[0], n_single)])[scene] + rng.normal(0.0, SEA_STATE_SD[1], len(scene))

    order = np.concatenate([rng.permutation(n_train), n_train + rng.permutation(n_test)])
    is_train = np.arange(len(angle)) < n_train
    usage = _usage(decoy, is_train, public_fraction, rng)
    return Layout(
        ids=_hex_ids(len(angle), rng),
        is_train=is_train,
        angle=angle[order],
        angle_published=published[order],
        labels=labels[order],
        machine_generated=decoy[order],
        scene=scene[order],
        sea_state=sea[order],
        usage=usage[order],
    )


def _scene_sizes(n_rows: int, rng: np.random.Generator) -> np.ndarray:
    """Heavy-tailed scene sizes that add up to exactly `n_rows`."""
    cap = int(np.clip(round(MAX_SCENE_SHARE * n_rows), 3, 60))
    support = np.arange(1, cap + 1)
    p = support.astype(float) ** -SCENE_SIZE_EXPONENT
    draws = rng.choice(support, size=n_rows, p=p / p.sum())
    cum = np.cumsum(draws)
    k = int(np.searchsorted(cum, n_rows)) + 1
    sizes = draws[:k].copy()
    sizes[-1] -= cum[k - 1] - n_rows
    return sizes[sizes > 0]


def _scene_angles(n: int, rng: np.random.Generator) -> np.ndarray:
    """Distinct 4-decimal angles: most across the IW swath, a few from a lower beam."""
    lo, hi = SWATH
    angle = lo + (hi - lo) * rng.beta(*SWATH_BETA, n)
    low = rng.random(n) < LOW_ANGLE_SHARE
    angle[low] = rng.uniform(*LOW_ANGLE, low.sum())
    angle = np.round(angle, 4)
    return _resolve_ties(angle, rng)


def _resolve_ties(angle: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Nudge repeated values by 1e-4 until every scene owns its own exact angle."""
    while True:
        _, first = np.unique(angle, return_index=True)
        dup = np.ones(len(angle), dtype=bool)
        dup[first] = False
        if not dup.any():
            return angle
        angle[dup] = np.round(angle[dup] + rng.choice([-1e-4, 1e-4], dup.sum()), 4)


def _decoy_angles(n: int, rng: np.random.Generator) -> np.ndarray:
    """Full-precision angles (about 14-15 decimals), as the machine-generated real rows have."""
    lo, hi = DECOY_RANGE
    return lo + (hi - lo) * rng.beta(*DECOY_BETA, n)


def _usage(decoy: np.ndarray, is_train: np.ndarray, public_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Kaggle's solution-file column: scored rows Public or Private, decoys Ignored."""
    usage = np.where(is_train, "", "Private").astype(object)
    scored = np.flatnonzero(~is_train & ~decoy)
    usage[rng.choice(scored, round(public_fraction * len(scored)), replace=False)] = "Public"
    usage[decoy] = "Ignored"
    return usage


def _hex_ids(n: int, rng: np.random.Generator) -> np.ndarray:
    """Unique 8-character lowercase hex ids, like Kaggle's."""
    ids: list[int] = []
    seen: set[int] = set()
    while len(ids) < n:
        for value in rng.integers(0, 2**32, n - len(ids), dtype=np.uint64).tolist():
            if value not in seen:
                seen.add(value)
                ids.append(value)
    return np.array([f"{v:08x}" for v in ids], dtype=object)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))
