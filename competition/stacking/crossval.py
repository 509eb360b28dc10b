"""Nested cross-validation on the base models' own outer folds.

For every outer (repeat, fold) a method is fitted on the outer training part only - its own
tuning and its clipping eps included - and predicts the held-out fold. The reported score is
the mean and spread of the held-out log loss over the outer folds, the same folds the base
models' OOF predictions came from, so every figure in the stacking table is comparable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.model_selection import StratifiedKFold

from competition.stacking.clipping import choose_eps, clip
from competition.stacking.metrics import logloss


class Estimator(Protocol):
    """What a stacking method provides (blenders and the LightGBM stacker alike)."""

    def fit(self, X: Any, y: np.ndarray) -> Any: ...

    def predict_proba(self, X: Any) -> np.ndarray: ...


@dataclass(frozen=True)
class CVResult:
    """raw / oof: R x n held-out predictions before / after clipping; scores and eps: R x K per outer fold."""

    raw: np.ndarray
    oof: np.ndarray
    scores: np.ndarray
    eps: np.ndarray

    @property
    def mean(self) -> float:
        return float(self.scores.mean())

    @property
    def std(self) -> float:
        return float(self.scores.std())

    def fold_scores(self) -> list[dict[str, float]]:
        return [
            {"repeat": r, "fold": f, "logloss": float(self.scores[r, f]), "eps": float(self.eps[r, f])}
            for r in range(self.scores.shape[0])
            for f in range(self.scores.shape[1])
        ]


def _rows(X: Any, index: np.ndarray) -> Any:
    return X.iloc[index] if isinstance(X, pd.DataFrame) else np.asarray(X)[index]


def honest_train_predictions(estimator: Estimator, X: Any, y: np.ndarray, inner_folds: int, seed: int) -> np.ndarray:
    """Predictions of a fitted estimator's training rows that never saw their own labels.

    An estimator that already computes them during its own inner CV (the stacker) exposes
    them as `oof_`; for any other, an inner CV of clones provides them.
    """
    own = getattr(estimator, "oof_", None)
    if own is not None:
        return np.asarray(own)
    out = np.empty(len(y))
    for fit_rows, held in StratifiedKFold(inner_folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y):
        out[held] = clone(estimator).fit(_rows(X, fit_rows), y[fit_rows]).predict_proba(_rows(X, held))
    return out


def cross_validate(
    make: Callable[[int, int], Estimator],
    tables: Sequence[Any],
    y: np.ndarray,
    fold: np.ndarray,
    eps_grid: Sequence[float],
    inner_folds: int,
    seed: int,
) -> CVResult:
    """Nested CV of the estimator `make(repeat, fold)` builds; `tables[r]` holds repeat r's OOF features."""
    repeats, k = fold.shape[0], int(fold.max()) + 1
    raw = np.empty(fold.shape)
    oof = np.empty(fold.shape)
    scores = np.empty((repeats, k))
    eps = np.empty((repeats, k))
    for r in range(repeats):
        for f in range(k):
            held = np.flatnonzero(fold[r] == f)
            fit_rows = np.flatnonzero(fold[r] != f)
            estimator = make(r, f)
            estimator.fit(_rows(tables[r], fit_rows), y[fit_rows])
            inner = honest_train_predictions(estimator, _rows(tables[r], fit_rows), y[fit_rows], inner_folds, seed)
            eps[r, f] = choose_eps(inner, y[fit_rows], eps_grid)
            raw[r, held] = estimator.predict_proba(_rows(tables[r], held))
            oof[r, held] = clip(raw[r, held], eps[r, f])
            scores[r, f] = logloss(y[held], oof[r, held])
    return CVResult(raw, oof, scores, eps)


def fit_predict_test(make: Callable[[int], Estimator], tables: Sequence[Any], y: np.ndarray, tests: Sequence[Any]) -> np.ndarray:
    """Unclipped test predictions of the estimator fitted on all training rows, averaged over repeats
    (`tests[r]` is the test table built alongside `tables[r]`)."""
    return np.mean([make(r).fit(tables[r], y).predict_proba(tests[r]) for r in range(len(tables))], axis=0)
