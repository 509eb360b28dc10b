"""Blenders of base-model probabilities: scikit-learn binary classifiers.

Every blender takes X: an (n_samples, n_runs) matrix (array or DataFrame) of probabilities of
the positive class (one column per run, OOF rows for `fit`, test rows for `predict_proba`).
They keep the scikit-learn classifier contract (`ClassifierMixin` + `BaseEstimator`, checked
by `parametrize_with_checks` in tests/test_estimators.py): `__init__` only stores parameters,
`fit(X, y)` validates X and y, sets `classes_`, `n_features_in_` (and `feature_names_in_` for
a DataFrame) and returns self; `predict_proba(X)` returns shape (n, 2), columns in the order of
`classes_` (column 1: the positive class, iceberg for labels 0/1); `predict(X)` the class of the
larger probability; either before `fit` raises `NotFittedError`. They are binary only: y must
hold exactly two classes, the larger (`classes_[1]`) is the one whose probability X holds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import minimize
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_is_fitted, validate_data

from competition.stacking.metrics import logit, logloss, sigmoid


def binary_targets(estimator: BaseEstimator, y: Any) -> np.ndarray:
    """Checks y as a binary classifier's target; sets `classes_` and returns y as 0/1 (1: `classes_[1]`)."""
    check_classification_targets(y)
    kind = type_of_target(y, input_name="y", raise_unknown=True)
    if kind != "binary":
        raise ValueError(f"Only binary classification is supported. The type of the target is {kind}.")
    estimator.classes_, encoded = np.unique(y, return_inverse=True)
    if len(estimator.classes_) != 2:
        raise ValueError(
            f"{type(estimator).__name__} is a binary classifier: y must hold exactly 2 classes, got {len(estimator.classes_)} class(es) {estimator.classes_.tolist()}"
        )
    return encoded.astype(np.int64)


def two_columns(p: np.ndarray) -> np.ndarray:
    """(n, 2) probabilities [1 - p, p] from the positive class's probability p."""
    return np.column_stack([1.0 - p, p])


class BinaryClassifier(ClassifierMixin, BaseEstimator):
    """What every blender and the stacker share: `predict` from `predict_proba`, binary-only tags."""

    def predict(self, X: Any) -> np.ndarray:
        """The class of the larger probability (the positive class on a tie above 0.5 only)."""
        check_is_fitted(self)
        return self.classes_[(self.predict_proba(X)[:, 1] > 0.5).astype(np.int64)]

    def predict_proba(self, X: Any) -> np.ndarray:
        raise NotImplementedError

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        return tags


class Blender(BinaryClassifier):
    """Shared input checks and outputs; subclasses implement `_fit` (optional) and `_blend`."""

    def fit(self, X: Any, y: Any) -> Blender:
        P, y = validate_data(self, X, y, dtype=np.float64)
        self._fit(P, binary_targets(self, y).astype(np.float64))
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """Probabilities of `classes_[0]` and `classes_[1]`, shape (n, 2); column 1 is the blend."""
        check_is_fitted(self)
        P = validate_data(self, X, dtype=np.float64, reset=False)
        return two_columns(np.clip(self._blend(P), 0.0, 1.0))

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        # X is meant to hold probabilities; on arbitrary features a blend is no classifier
        tags.classifier_tags.poor_score = True
        return tags

    def _fit(self, P: np.ndarray, y: np.ndarray) -> None:
        """Nothing to learn by default."""

    def _blend(self, P: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class MeanBlender(Blender):
    """Arithmetic mean of the probabilities."""

    def _blend(self, P: np.ndarray) -> np.ndarray:
        return P.mean(axis=1)


class MedianBlender(Blender):
    """Median of the probabilities (robust to one wild model)."""

    def _blend(self, P: np.ndarray) -> np.ndarray:
        return np.median(P, axis=1)


class LogitMeanBlender(Blender):
    """Mean of the log-odds, mapped back to a probability (equal to the normalised geometric mean)."""

    def _blend(self, P: np.ndarray) -> np.ndarray:
        return sigmoid(logit(P).mean(axis=1))


class GeometricMeanBlender(Blender):
    """Geometric mean of the probabilities of class 1, as the public kernels computed it."""

    def _blend(self, P: np.ndarray) -> np.ndarray:
        return np.exp(np.log(np.clip(P, 1e-15, 1.0)).mean(axis=1))


class RankMeanBlender(Blender):
    """Mean of each run's rank, calibrated to a probability on the OOF rows.

    Ranks are taken against each run's OOF distribution (so a test row's rank does not depend
    on the other test rows), averaged, and mapped to a probability by a logistic fit of the
    label on the logit of the mean rank (Platt scaling) - ranks alone are not probabilities.
    """

    def _fit(self, P: np.ndarray, y: np.ndarray) -> None:
        self.sorted_ = np.sort(P, axis=0)
        self.calibration_ = LogisticRegression(C=1e4).fit(self._feature(P), y.astype(int))

    def _feature(self, P: np.ndarray) -> np.ndarray:
        n = self.sorted_.shape[0]
        ranks = np.column_stack(
            [(np.searchsorted(col, P[:, j], "left") + np.searchsorted(col, P[:, j], "right")) / (2.0 * n) for j, col in enumerate(self.sorted_.T)]
        )
        return logit(ranks.mean(axis=1), floor=0.5 / n).reshape(-1, 1)

    def _blend(self, P: np.ndarray) -> np.ndarray:
        return self.calibration_.predict_proba(self._feature(P))[:, 1]


CUT_GRID = np.round(np.arange(0.05, 0.5, 0.05), 2)


class MinMaxBestBaseBlender(Blender):
    """The public kernels' MinMax + BestBase: max where every run is above `upper`, min where every
    run is below `lower`, otherwise the best single run (lowest OOF log loss).

    `lower`/`upper` left as None are chosen on the OOF rows from a grid that includes "never"
    (0 and 1), so the cuts are used only when they help.
    """

    def __init__(self, lower: float | None = None, upper: float | None = None) -> None:
        self.lower = lower
        self.upper = upper

    def _fit(self, P: np.ndarray, y: np.ndarray) -> None:
        self.best_ = int(np.argmin([logloss(y, P[:, j]) for j in range(P.shape[1])]))
        lowers = [self.lower] if self.lower is not None else [0.0, *CUT_GRID]
        uppers = [self.upper] if self.upper is not None else [1.0, *(1 - CUT_GRID)]
        scores = {(lo, hi): logloss(y, self._cut(P, lo, hi)) for lo in lowers for hi in uppers}
        self.lower_, self.upper_ = min(scores, key=scores.__getitem__)

    def _cut(self, P: np.ndarray, lower: float, upper: float) -> np.ndarray:
        out = P[:, self.best_].copy()
        above = (upper < P).all(axis=1)
        below = (lower > P).all(axis=1)
        out[above] = P[above].max(axis=1)
        out[below] = P[below].min(axis=1)
        return out

    def _blend(self, P: np.ndarray) -> np.ndarray:
        return self._cut(P, self.lower_, self.upper_)


class WeightedBlender(Blender):
    """Weighted mean of the probabilities; weights non-negative, summing to one, fitted on OOF log loss."""

    def _fit(self, P: np.ndarray, y: np.ndarray) -> None:
        m = P.shape[1]

        def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
            q = np.clip(P @ w, 1e-15, 1 - 1e-15)
            grad = -((y / q - (1 - y) / (1 - q))[:, None] * P).mean(axis=0)
            return logloss(y, q), grad

        result = minimize(
            loss,
            np.full(m, 1.0 / m),
            jac=True,
            method="SLSQP",
            bounds=[(0.0, 1.0)] * m,
            constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)}],
            options={"maxiter": 500, "ftol": 1e-12},
        )
        w = np.clip(result.x, 0.0, None)
        self.weights_ = w / w.sum()

    def _blend(self, P: np.ndarray) -> np.ndarray:
        return P @ self.weights_


class CaruanaBlender(Blender):
    """Caruana et al. (2004) ensemble selection: greedily add, with replacement, the run that most
    lowers the OOF log loss of the running average; the weights are the selection counts."""

    def __init__(self, iterations: int = 50) -> None:
        self.iterations = iterations

    def _fit(self, P: np.ndarray, y: np.ndarray) -> None:
        counts = np.zeros(P.shape[1], dtype=np.int64)
        total = np.zeros(P.shape[0])
        for step in range(1, self.iterations + 1):
            losses = [logloss(y, (total + P[:, j]) / step) for j in range(P.shape[1])]
            pick = int(np.argmin(losses))
            counts[pick] += 1
            total += P[:, pick]
        self.counts_ = counts
        self.weights_ = counts / counts.sum()

    def _blend(self, P: np.ndarray) -> np.ndarray:
        return P @ self.weights_


BLENDERS: dict[str, type[Blender]] = {
    "mean": MeanBlender,
    "median": MedianBlender,
    "logit_mean": LogitMeanBlender,
    "rank_mean": RankMeanBlender,
    "geo_mean": GeometricMeanBlender,
    "minmax_bestbase": MinMaxBestBaseBlender,
    "weights": WeightedBlender,
    "caruana": CaruanaBlender,
}
