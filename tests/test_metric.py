"""The one metric: Kaggle's binary log loss (`competition.metrics.logloss`), and nobody else computing one."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from competition.metrics import EPS, logloss
from competition.training.store import cv_logloss
from sklearn.metrics import log_loss as sklearn_log_loss

PACKAGE = Path(__file__).resolve().parents[1] / "competition"


def test_logloss_is_the_mean_binary_cross_entropy() -> None:
    y, p = np.array([1, 0, 1, 0]), np.array([0.8, 0.3, 0.6, 0.1])
    assert logloss(y, p) == pytest.approx(-(np.log(0.8) + np.log(0.7) + np.log(0.6) + np.log(0.9)) / 4, rel=1e-15)
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 2, 500), rng.uniform(0.01, 0.99, 500)
    assert logloss(y, p) == pytest.approx(sklearn_log_loss(y, p, labels=[0, 1]), rel=1e-12)


def test_logloss_clips_like_kaggle_to_1e_15() -> None:
    assert EPS == 1e-15
    assert logloss([1], [0.0]) == pytest.approx(-np.log(1e-15), rel=1e-12)  # 34.539, not infinity nor 16.118 (1e-7)
    assert logloss([0], [1.0]) == pytest.approx(-np.log(1e-15), rel=5e-3)  # 1 - 1e-15 is 1 - 1.11e-15 in float64
    assert logloss([1], [1e-9]) == pytest.approx(-np.log(1e-9), rel=1e-12)  # above the floor: not clipped
    assert logloss([1, 0], [1.0, 0.0]) == pytest.approx(-np.log1p(-1e-15), abs=1e-15)  # certain and right: ~0


def test_logloss_takes_series_lists_and_a_classifiers_two_columns() -> None:
    y, p = np.array([1, 0, 1]), np.array([0.9, 0.2, 0.4])
    expected = logloss(y, p)
    assert logloss(pd.Series(y), pd.Series(p)) == expected
    assert logloss(y.tolist(), p.tolist()) == expected
    assert logloss(y, np.column_stack([1 - p, p])) == expected
    with pytest.raises(ValueError, match="3 labels but 2 predictions"):
        logloss(y, p[:2])


def test_cv_logloss_is_the_mean_over_repeats_of_the_kaggle_metric() -> None:
    """A certain mistake costs Kaggle's 34.54, not scikit-learn's -log(2.2e-16) = 36.04."""
    labels = pd.Series([1, 0, 1, 0], index=["a", "b", "c", "d"])
    oof = pd.DataFrame({"id": list("abcd") * 2, "repeat": [0] * 4 + [1] * 4, "fold": [0, 0, 1, 1] * 2,
                        "prediction": [0.0, 0.2, 0.9, 0.1, 0.7, 0.2, 0.9, 0.4]})  # fmt: skip
    first = logloss([1, 0, 1, 0], [0.0, 0.2, 0.9, 0.1])
    second = logloss([1, 0, 1, 0], [0.7, 0.2, 0.9, 0.4])
    assert cv_logloss(oof, labels) == pytest.approx((first + second) / 2, rel=1e-15)
    assert first == pytest.approx((-np.log(1e-15) - np.log(0.8) - np.log(0.9) - np.log(0.9)) / 4, rel=1e-12)


def test_the_metric_module_is_a_leaf_importing_only_numpy() -> None:
    tree = ast.parse((PACKAGE / "metrics.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {"numpy", "__future__"}


def test_no_other_module_computes_log_loss() -> None:
    """Every score goes through `competition.metrics.logloss`: no second definition, no scikit-learn's."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "metrics.py":
            continue
        text = path.read_text()
        defined = set(re.findall(r"^\s*def (\w*log_?loss\w*)\(", text, re.M | re.I)) - {"cv_logloss"}  # cv_logloss: mean of logloss over repeats
        if defined or re.search(r"sklearn\.metrics import[^\n]*log_loss", text) or "neg_log_loss" in text:
            offenders.append(f"{path.relative_to(PACKAGE.parent)}: {sorted(defined) or 'scikit-learn log_loss'}")
    assert offenders == []
