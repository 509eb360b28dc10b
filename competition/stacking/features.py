"""The stacker's features: each run's prediction and logit, the angle, band statistics, angle groups.

Images that share an exact incidence angle come from one radar scene and tend to share a label
(on the real data 873 of 879 angle groups hold one class). The group features carry that:
- `group_size`: how many train + test images share the exact angle (label-free);
- `group_pred`, `group_pred_mates`: the mean base-model prediction of the *other* images of the
  group that may be read without leaking (below), and how many mates fed it (NaN / 0: none);
- `group_labelled`, `group_rate`: how many labelled training rows share the angle and their
  iceberg rate - a target encoding of the angle group (`GroupTargetEncoder`). These read labels,
  so they are never part of the stored table: the stacker computes them inside `fit` from its own
  training rows only - cross-fitted (inner OOF) for those rows (`fit_transform`), and from all of
  them for the rows it predicts (`transform`) - so no row's feature ever sees its own label.

Why `group_pred` of a training row reads only some mates (`leak_free_group_pred`). Row i sits in
outer fold f of repeat r. A mate j in another fold g has an OOF prediction from the fold-g models,
which were trained on every fold but g - fold f, row i's label, included; and scene mates are
near-copies, so a model that fits its training rows well predicts j much as it learnt i. The
same holds for a test mate's mean prediction over all fold models (all but the fold-f ones saw
i). A mean over those mates therefore carries y_i, and the stacker's CV, which scores row i
from that feature, is optimistic (on the simulated competition: CV 0.050-0.057 against a hidden
private score of 0.067-0.069). So row i's `group_pred` averages only predictions by the fold-f
models of repeat r, the only base models that never saw y_i: the OOF predictions of its mates in
fold f (made by exactly those models) and the fold-f models' predictions of its test mates
(each unit's own test column, `Collection.test_by_fold`). Every input of the feature is then a
function of the inputs and of labels outside fold f: y_i cannot reach it, whatever the base
models memorise. The stacker's held-out rows of outer fold f are scored from features no fold-f
label fed, as nested CV requires. Test rows have no label to leak: they average all their mates
(training mates' OOF predictions, test mates' mean predictions), so their `group_pred_mates` is
larger; LightGBM sees the count and can weigh the feature by it.

With `folds.group_by_angle: true` every scene sits in one fold, so a training row's train mates
all share its fold and only its test mates' predictions change.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.model_selection import KFold
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

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


def group_neighbour_mean(angle: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of `values` over the other rows sharing the exact angle (NaN when there are none), and
    how many such rows there are (a missing angle has none)."""
    frame = pd.DataFrame({"a": angle, "v": values})
    stats = frame.dropna(subset=["a"]).groupby("a")["v"].agg(["sum", "count"])
    total = frame["a"].map(stats["sum"]).to_numpy(dtype=np.float64)
    count = frame["a"].map(stats["count"]).fillna(1.0).to_numpy(dtype=np.float64) - 1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (total - values) / count
    out[~(count > 0)] = np.nan
    return out, count


GROUP_PRED, GROUP_PRED_MATES = "group_pred", "group_pred_mates"


def leak_free_group_pred(
    angle_train: np.ndarray, angle_test: np.ndarray, fold: np.ndarray, oof: np.ndarray, test: np.ndarray, test_by_fold: np.ndarray
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`group_pred` and `group_pred_mates` of the training and the test rows (see the module docstring).

    fold: (n_train,) outer fold of each training row (one repeat); oof: (n_train,) its OOF
    prediction; test: (n_test,) mean test prediction of all fold models; test_by_fold: (K, n_test)
    test predictions by the models of each fold. A training row of fold f averages its fold-f
    mates' OOF predictions and its test mates' fold-f predictions; a test row averages all mates.
    """
    n = len(angle_train)
    pred_train, mates_train = np.full(n, np.nan), np.zeros(n)
    for f in range(test_by_fold.shape[0]):
        rows = np.flatnonzero(fold == f)
        mean, count = group_neighbour_mean(np.concatenate([angle_train[rows], angle_test]), np.concatenate([oof[rows], test_by_fold[f]]))
        pred_train[rows], mates_train[rows] = mean[: len(rows)], count[: len(rows)]
    mean, count = group_neighbour_mean(np.concatenate([angle_train, angle_test]), np.concatenate([oof, test]))
    return (
        pd.DataFrame({GROUP_PRED: pred_train, GROUP_PRED_MATES: mates_train}),
        pd.DataFrame({GROUP_PRED: mean[n:], GROUP_PRED_MATES: count[n:]}),
    )


GROUP_TARGET_FEATURES = ["group_labelled", "group_rate"]


class GroupTargetEncoder(TransformerMixin, BaseEstimator):
    """Target encoding of exact-value groups (the angle), in the manner of scikit-learn's `TargetEncoder`.

    Each column of X is a group key (the stacker passes one: the incidence angle; NaN: missing, no
    group). Each row is encoded, per column, as `group_labelled`, how many labelled rows share its
    exact value (0 when none does), and `group_rate`, their target mean - the iceberg rate for 0/1
    labels (NaN when no labelled row shares the value; no shrinkage towards the prior: LightGBM
    learns what a small group is worth). With several columns the names are prefixed by the
    column's (`angle_group_rate`, ...); with one they are `group_labelled`, `group_rate`.

    - `fit(X, y)` learns the encoding from all labels; `transform(X)` applies it (rows to predict).
    - `fit_transform(X, y)` also fits on all labels, but returns the cross-fitted (inner OOF)
      encoding of the training rows: on `cv` shuffled folds (a plain KFold over rows, so the class
      counts do not limit it; at most one per row, `n_splits_`), each row is encoded from the
      labels of the other folds only, so no row's feature reads its own label. A single row has
      no other fold: it is encoded as having no labelled neighbours.
    `fit_transform(X, y)` is therefore not `fit(X, y).transform(X)`, exactly as for `TargetEncoder`.
    """

    def __init__(self, cv: int = 5, random_state: int | None = 0) -> None:
        self.cv = cv
        self.random_state = random_state

    @staticmethod
    def _stats(keys: np.ndarray, y: np.ndarray) -> list[tuple[pd.Series, pd.Series]]:
        """(sum, count) of y per exact value, for each column of keys."""
        out = []
        for j in range(keys.shape[1]):
            frame = pd.DataFrame({"a": keys[:, j], "y": y}).dropna(subset=["a"])
            stats = frame.groupby("a")["y"].agg(["sum", "count"])
            out.append((stats["sum"], stats["count"]))
        return out

    @staticmethod
    def _encode(keys: np.ndarray, stats: list[tuple[pd.Series, pd.Series]]) -> np.ndarray:
        parts = []
        for j, (sums, counts) in enumerate(stats):
            a = pd.Series(keys[:, j])
            count = a.map(counts).fillna(0.0).to_numpy(dtype=np.float64)
            total = a.map(sums).fillna(0.0).to_numpy(dtype=np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                rate = np.where(count > 0, total / count, np.nan)
            parts += [count, rate]
        return np.column_stack(parts)

    def fit(self, X: Any, y: Any) -> GroupTargetEncoder:
        """Learn each group's labelled count and target mean from all rows."""
        keys, target = validate_data(self, X, y, dtype=np.float64, ensure_all_finite="allow-nan", y_numeric=True)
        self.stats_ = self._stats(keys, target.astype(np.float64))
        return self

    def transform(self, X: Any) -> np.ndarray:
        """(n, 2 per column): `group_labelled`, `group_rate` of each row from the labels seen in `fit`."""
        check_is_fitted(self)
        return self._encode(validate_data(self, X, dtype=np.float64, ensure_all_finite="allow-nan", reset=False), self.stats_)

    def fit_transform(self, X: Any, y: Any = None, **fit_params: Any) -> np.ndarray:
        """Fit on all rows; return the inner-OOF encoding of these rows (see the class docstring)."""
        self.fit(X, y)
        keys = validate_data(self, X, dtype=np.float64, ensure_all_finite="allow-nan", reset=False)
        target = column_or_1d(y).astype(np.float64)
        self.n_splits_ = group_folds_for(self.cv, len(keys))
        out = np.empty((len(keys), 2 * keys.shape[1]))
        out[:, 0::2], out[:, 1::2] = 0.0, np.nan
        if self.n_splits_ == 0:
            return out
        for fit_rows, apply_rows in KFold(n_splits=self.n_splits_, shuffle=True, random_state=self.random_state).split(keys):
            out[apply_rows] = self._encode(keys[apply_rows], self._stats(keys[fit_rows], target[fit_rows]))
        return out

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        check_is_fitted(self, "n_features_in_")
        if self.n_features_in_ == 1:
            return np.asarray(GROUP_TARGET_FEATURES, dtype=object)
        names = getattr(self, "feature_names_in_", [f"x{j}" for j in range(self.n_features_in_)])
        return np.asarray([f"{n}_{f}" for n in names for f in GROUP_TARGET_FEATURES], dtype=object)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.target_tags.required = True
        return tags


def group_folds_for(n_folds: int, n_rows: int) -> int:
    """Folds of the inner-OOF group target encoding: at most one per row (a plain KFold over rows, so
    the class counts do not limit it); below 2 rows there is nothing to encode out of fold (0)."""
    return min(n_folds, n_rows) if n_rows >= 2 else 0


def stack_tables(
    names: Sequence[str],
    oof: np.ndarray,
    test: np.ndarray,
    angle_train: np.ndarray,
    angle_test: np.ndarray,
    fold: np.ndarray,
    test_by_fold: np.ndarray,
    bands_train: pd.DataFrame | None = None,
    bands_test: pd.DataFrame | None = None,
    angle_groups: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Label-free feature tables of the training rows and the test rows, for one repeat.

    oof: n_train x n_runs OOF predictions; test: n_test x n_runs mean test predictions; fold:
    (n_train,) outer fold of each training row; test_by_fold: K x n_test x n_runs test predictions
    by each fold's models (what the leak-free `group_pred` of a training row may read).
    """
    parts_train = [run_features(oof, names), angle_features(angle_train)]
    parts_test = [run_features(test, names), angle_features(angle_test)]
    if bands_train is not None and bands_test is not None:
        parts_train.append(bands_train.add_prefix(BAND).reset_index(drop=True))
        parts_test.append(bands_test.add_prefix(BAND).reset_index(drop=True))
    if angle_groups:
        angle = np.concatenate([angle_train, angle_test])
        size = group_size(angle)
        pred_train, pred_test = leak_free_group_pred(angle_train, angle_test, fold, oof.mean(axis=1), test.mean(axis=1), test_by_fold.mean(axis=-1))
        parts_train += [pd.DataFrame({"group_size": size[: len(angle_train)]}), pred_train]
        parts_test += [pd.DataFrame({"group_size": size[len(angle_train) :]}), pred_test]
    return pd.concat(parts_train, axis=1), pd.concat(parts_test, axis=1)
