"""Hand-made band statistics: values checked against chips whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
from competition.image_stats import image_statistics


def _chips(n: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(-22.0, 2.0, (n, 75, 75, 2)).astype(np.float32)


def test_one_row_per_image_named_finite_float_columns():
    table = image_statistics(_chips(4))
    assert len(table) == 4 and table.columns.is_unique
    assert all(table[c].dtype == np.float64 for c in table.columns) and np.isfinite(table.to_numpy()).all()
    for name in ("hh_mean", "hv_sd", "hh_max", "hh_q95", "hv_kurtosis", "diff_mean", "hh_target_area", "hh_hv_corr"):
        assert name in table.columns


def test_global_statistics_equal_numpy_per_image():
    chips = _chips(2)
    table = image_statistics(chips)
    hh = chips[1, ..., 0].astype(np.float64)
    assert table.loc[1, "hh_mean"] == pytest.approx(hh.mean())
    assert table.loc[1, "hh_sd"] == pytest.approx(hh.std())
    assert table.loc[1, "hh_max"] == pytest.approx(hh.max())
    assert table.loc[1, "diff_mean"] == pytest.approx((chips[1, ..., 0] - chips[1, ..., 1]).astype(np.float64).mean(), abs=1e-6)
    assert table.loc[1, "hh_q50"] == pytest.approx(np.median(hh), abs=0.01)


def test_a_bright_bar_gives_its_area_length_elongation_and_offset():
    """A 3 x 15 bar 20 dB above a flat sea, 10 pixels right of centre."""
    chips = np.full((1, 75, 75, 2), -25.0, dtype=np.float32)
    chips[0, 36:39, 40:55, :] = -5.0
    row = image_statistics(chips).iloc[0]
    assert row["hh_target_area"] == 45
    assert row["hh_area_10db"] == pytest.approx(45 / 75**2)
    assert row["hh_target_elongation"] == pytest.approx(np.sqrt((15**2 - 1) / (3**2 - 1)), rel=1e-6)
    assert row["hh_target_offset"] == pytest.approx(10.0)
    assert row["hh_target_mean"] == pytest.approx(20.0)
    assert row["hh_skew"] > 5 and row["hh_centre_contrast"] > 0


def test_rejects_images_of_the_wrong_shape():
    with pytest.raises(ValueError, match="75 x 75 x 2"):
        image_statistics(np.zeros((2, 75, 75)))
