"""A real small image set as a competition folder: two classes of scikit-learn's handwritten digits.

`load_digits` ships inside scikit-learn (1,797 8 x 8 images of 0..16, UCI "Optical Recognition of
Handwritten Digits"), so it needs no network. Two of its classes become a binary competition in
Kaggle's formats (competition.simulate.writer.write_competition): about 100 labelled training
images (`is_iceberg` 1 = the second class), every other image of the two classes as the scored
test set, with a hidden solution split into public and private rows, so the harness scores it
offline exactly as it scores the simulated data. Each image is resized to 75 x 75 (bilinear) and
given two dB-like bands: HH = -35 + 25 * ink (ink in [0, 1]), HV = HH smoothed (Gaussian, sigma
2 pixels) less 10 dB. The incidence angle is missing ("na") everywhere.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from competition.config import CompetitionConfig
from competition.errors import ConfigError
from competition.simulate.writer import SIZE, record, write_competition

HH_FLOOR_DB, HH_SPAN_DB, HV_OFFSET_DB, HV_SIGMA = -35.0, 25.0, -10.0, 2.0
BATCH = 64


def digit_images(classes: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Every digit of the two `classes` as float32 images N x 75 x 75 x 2 (HH, HV dB) and labels (1 = classes[1])."""
    from scipy.ndimage import gaussian_filter, zoom
    from sklearn.datasets import load_digits

    digits = load_digits()
    keep = np.isin(digits.target, classes)
    ink = digits.images[keep] / 16.0
    big = np.clip(zoom(ink, (1, SIZE / 8, SIZE / 8), order=1), 0.0, 1.0)
    hh = HH_FLOOR_DB + HH_SPAN_DB * big
    hv = gaussian_filter(hh, sigma=(0, HV_SIGMA, HV_SIGMA)) + HV_OFFSET_DB
    images = np.stack([hh, hv], axis=-1).astype(np.float32)
    return images, (digits.target[keep] == classes[1]).astype(np.int64)


def digits_params(classes: tuple[int, int], n_train: int, seed: int, public_fraction: float) -> dict[str, Any]:
    """What the digits folder is made from, as its marker records it (a folder with other parameters is rewritten)."""
    return {"source": "sklearn.datasets.load_digits", "classes": list(classes), "n_train": n_train, "seed": seed, "public_fraction": public_fraction}


def write_digits(cfg: CompetitionConfig, classes: tuple[int, int], n_train: int, seed: int, public_fraction: float) -> dict[str, Any]:
    """Write the two-class digits competition into `cfg.data_dir`; returns the parameters recorded in its marker.

    `n_train` images (drawn with `seed`) are labelled training data, the
    rest of the two classes the test set, `public_fraction` of it on the public leaderboard.
    Raises ConfigError when `n_train` leaves fewer than 10 test images, DataError (nothing written)
    when the folder holds competition files the harness did not write.
    """
    images, labels = digit_images(classes)
    if not 20 <= n_train <= len(labels) - 10:
        raise ConfigError(f"digits n_train={n_train}: classes {list(classes)} hold {len(labels)} images; choose 20 to {len(labels) - 10}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    train, test = order[:n_train], order[n_train:]
    ids = np.array([f"dg{i:06x}" for i in range(len(labels))])
    usage = np.where(rng.random(len(test)) < public_fraction, "Public", "Private")
    params = digits_params(classes, n_train, seed, public_fraction)

    def batches(rows: np.ndarray, labelled: bool) -> Any:
        for start in range(0, len(rows), BATCH):
            part = rows[start : start + BATCH]
            yield [record(ids[i], images[i], float("nan"), int(labels[i]) if labelled else None) for i in part]

    write_competition(cfg, params, (len(train), batches(train, True)), (len(test), batches(test, False)), (ids[test], labels[test], usage))
    return params
