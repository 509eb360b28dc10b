"""The stacker's features: each run's prediction and logit, the angle, band statistics, angle groups.

Images that share an exact incidence angle come from one radar scene and tend to share a label
(on the real data 873 of 879 angle groups hold one class). Three group features carry that:
- `group_size`: how many train + test images share the exact angle (label-free);
- `group_pred`: the mean base-model prediction of the *other* images of the group (label-free);
- `group_labelled`, `group_rate`: how many labelled training rows share the angle and their
  iceberg rate. These read labels, so they are never part of the stored table: the stacker
  computes them inside `fit` from its own training rows only - out of fold for those rows
  (`out_of_fold_group_labels`), and from all of them for the rows it predicts
  (`GroupLabelEncoder`) - so no row's feature ever sees its own label.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold

from competition.stacking.metrics import logit

PRED = "pred_"
LOGIT = "logit_"
ANGLE = "angle"
BAND = "band_"


def pred_columns(names: Sequence[str]) -> list[str]:
    """The columns holding each run's probability (what the blenders see)."""
    return [PRED + n for n in names]


def run_features(P: np.ndarray, names: Sequence[str]) -> pd.DataFrame:
    """Each run's probability and its logit."""
    preds = pd.DataFrame(P, columns=pred_columns(names))
    logits = pd.DataFrame(logit(P), columns=[LOGIT + n for n in names])
    return pd.concat([preds, logits], axis=1)


def angle_features(angle: np.ndarray) -> pd.DataFrame:
    """The angle (NaN where missing: LightGBM learns its own split for it) and the missing flag."""
    return pd.DataFrame({ANGLE: angle, "angle_missing": np.isnan(angle).astype(np.float64)})


def group_size(angle: np.ndarray) -> np.ndarray:
    """Number of rows sharing each row's exact angle (itself included; a missing angle is its own group)."""
    counts = pd.Series(angle).value_counts(dropna=True)
    return pd.Series(angle).map(counts).fillna(1.0).to_numpy(dtype=np.float64)


def group_neighbour_mean(angle: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Mean of `values` over the other rows sharing the exact angle (NaN when there are none)."""
    frame = pd.DataFrame({"a": angle, "v": values})
    stats = frame.dropna(subset=["a"]).groupby("a")["v"].agg(["sum", "count"])
    total = frame["a"].map(stats["sum"]).to_numpy(dtype=np.float64)
    count = frame["a"].map(stats["count"]).to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (total - values) / (count - 1)
    out[~(count > 1)] = np.nan
    return out


def label_free_group_features(angle_train: np.ndarray, angle_test: np.ndarray, pred_train: np.ndarray, pred_test: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Group size and neighbours' mean prediction over train + test together (no labels read)."""
    angle = np.concatenate([angle_train, angle_test])
    frame = pd.DataFrame({"group_size": group_size(angle), "group_pred": group_neighbour_mean(angle, np.concatenate([pred_train, pred_test]))})
    n = len(angle_train)
    return frame.iloc[:n].reset_index(drop=True), frame.iloc[n:].reset_index(drop=True)


class GroupLabelEncoder:
    """Iceberg rate of the labelled rows that share each exact angle, learned from (angle, label) pairs."""

    def fit(self, angle: np.ndarray, y: np.ndarray) -> GroupLabelEncoder:
        frame = pd.DataFrame({"a": angle, "y": np.asarray(y, dtype=np.float64)}).dropna(subset=["a"])
        stats = frame.groupby("a")["y"].agg(["sum", "count"])
        self.sum_, self.count_ = stats["sum"], stats["count"]
        return self

    def transform(self, angle: np.ndarray) -> pd.DataFrame:
        """`group_labelled` (0 when no labelled row shares the angle) and `group_rate` (NaN then)."""
        a = pd.Series(angle)
        count = a.map(self.count_).fillna(0.0).to_numpy(dtype=np.float64)
        total = a.map(self.sum_).fillna(0.0).to_numpy(dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            rate = np.where(count > 0, total / count, np.nan)
        return pd.DataFrame({"group_labelled": count, "group_rate": rate})


def group_folds_for(n_folds: int, n_rows: int) -> int:
    """Folds of the out-of-fold group encoding: at most one per row (a plain KFold over rows, so the
    class counts do not limit it); below 2 rows there is nothing to encode out of fold (0)."""
    return min(n_folds, n_rows) if n_rows >= 2 else 0


def out_of_fold_group_labels(angle: np.ndarray, y: np.ndarray, n_folds: int, seed: int) -> pd.DataFrame:
    """Group label features of labelled rows, each computed from the labels of the other folds only
    (on `group_folds_for(n_folds, rows)` folds; a single row has no other fold: no labelled neighbours)."""
    out = pd.DataFrame({"group_labelled": np.zeros(len(angle)), "group_rate": np.full(len(angle), np.nan)})
    folds = group_folds_for(n_folds, len(angle))
    if folds == 0:
        return out
    splitter = KFold(n_splits=folds, shuffle=True, random_state=seed)
    for fit_rows, apply_rows in splitter.split(angle):
        encoded = GroupLabelEncoder().fit(angle[fit_rows], y[fit_rows]).transform(angle[apply_rows])
        out.iloc[apply_rows] = encoded.to_numpy()
    return out


def stack_tables(
    names: Sequence[str],
    oof: np.ndarray,
    test: np.ndarray,
    angle_train: np.ndarray,
    angle_test: np.ndarray,
    bands_train: pd.DataFrame | None = None,
    bands_test: pd.DataFrame | None = None,
    angle_groups: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Label-free feature tables of the training rows (from one repeat's OOF matrix) and the test rows."""
    parts_train = [run_features(oof, names), angle_features(angle_train)]
    parts_test = [run_features(test, names), angle_features(angle_test)]
    if bands_train is not None and bands_test is not None:
        parts_train.append(bands_train.add_prefix(BAND).reset_index(drop=True))
        parts_test.append(bands_test.add_prefix(BAND).reset_index(drop=True))
    if angle_groups:
        g_train, g_test = label_free_group_features(angle_train, angle_test, oof.mean(axis=1), test.mean(axis=1))
        parts_train.append(g_train)
        parts_test.append(g_test)
    return pd.concat(parts_train, axis=1), pd.concat(parts_test, axis=1)
