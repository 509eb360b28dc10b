"""Nested cross-validation on the base models' own outer folds.

For every outer (repeat, fold) a method is fitted on the outer training part only - its own
tuning and its clipping eps included - and predicts the held-out fold. The reported score is
the mean and spread of the held-out log loss over the outer folds, the same folds the base
models' OOF predictions came from, so every figure in the stacking table is comparable.

Inner folds fit themselves to the data: an inner split of rows whose smallest class has c
members uses min(configured, c) folds, at least 2 (`inner_folds_for`); the numbers used are
recorded on the CVResult and, when smaller than configured, said once on the console.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.model_selection import StratifiedKFold

from competition import fingerprint
from competition.console import console
from competition.errors import DataError
from competition.stacking.clipping import choose_eps, clip
from competition.stacking.metrics import logloss

MIN_INNER_FOLDS = 2
BLENDERS_INNER = "inner folds of the blenders (eps choice)"  # how a note names an estimator without its own `inner_label`
_said: set[tuple[str, str]] = set()  # (scope, note) already printed: each note once per data and folds


def smallest_class(y: np.ndarray) -> int:
    """Members of the rarer class of `y` (0 when a class is absent)."""
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=2)
    return int(counts.min())


def inner_folds_for(configured: int, y: np.ndarray) -> int:
    """Folds of an inner stratified split of rows labelled `y`: min(configured, smallest class), at least 2.

    Refuses rows that cannot be split at all (a class with fewer than 2 members): the folds step
    refuses such data, so this means a folds file from other data or a bug.
    """
    smallest = smallest_class(y)
    if smallest < MIN_INNER_FOLDS:
        counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=2)
        raise DataError(
            f"an inner split of {len(y)} training rows holds {counts[0]} ships and {counts[1]} icebergs; stacking needs at least "
            f"{MIN_INNER_FOLDS} of each class there: run `competition folds` again (it says which folds.k the data allows)"
        )
    return max(MIN_INNER_FOLDS, min(int(configured), smallest))


def say_once(message: str, scope: str = "") -> None:
    """Print a note on the console the first time it comes up for `scope` (the labels and folds
    being split: every method of one stack run shares them, so the note appears once per run)."""
    if (scope, message) not in _said:
        _said.add((scope, message))
        console.print(f"[yellow]note[/] {message}")


def _scope(*arrays: np.ndarray) -> str:
    return fingerprint.of_bytes(*(np.ascontiguousarray(a).tobytes() for a in arrays))


def note_folds(label: str, configured: int, used: Sequence[int] | np.ndarray, why: str, scope: str = "") -> None:
    """Say once when folds were reduced to fit the data, e.g. "...: 3 instead of 5 (the smallest class has 3 members ...)"."""
    used = np.asarray(used)
    if used.size == 0 or used.min() >= configured:
        return
    low, high = int(used.min()), int(used.max())
    span = str(low) if low == high else f"{low}-{high}"
    say_once(f"{label}: {span} instead of {configured} ({why})", scope)


def _note_estimator(estimators: Sequence[Any], default: int, used: np.ndarray, smallest: int, where: str, scope: str, final: bool = False) -> None:
    """The notes of one method: its inner folds, and (the stacker) its group-rate folds."""
    first = estimators[0]
    suffix = " for the final model" if final else ""
    label = getattr(first, "inner_label", BLENDERS_INNER) + suffix
    note_folds(label, int(getattr(first, "inner_folds", default)), used, f"the smallest class has {smallest} members {where}", scope)
    groups = [e.group_folds_ for e in estimators if getattr(e, "group_folds_", None) is not None]
    if groups:
        rows = min(e.fit_rows_ for e in estimators if getattr(e, "group_folds_", None) is not None)
        note_folds(first.group_label + suffix, int(first.group_folds), groups, f"an inner split fits on {rows} rows", scope)


class Estimator(Protocol):
    """What a stacking method provides (blenders and the LightGBM stacker alike): a scikit-learn
    binary classifier, `predict_proba` of shape (n, 2) in the order of `classes_`."""

    classes_: np.ndarray

    def fit(self, X: Any, y: np.ndarray) -> Any: ...

    def predict_proba(self, X: Any) -> np.ndarray: ...


def positive_proba(estimator: Estimator, X: Any) -> np.ndarray:
    """Probability of class 1 (iceberg) of each row of X: the `predict_proba` column of that class."""
    column = int(np.flatnonzero(np.asarray(estimator.classes_) == 1)[0])
    return np.asarray(estimator.predict_proba(X))[:, column]


@dataclass(frozen=True)
class CVResult:
    """raw / oof: R x n held-out predictions before / after clipping; scores and eps: R x K per outer fold;
    inner_folds: R x K inner folds used in each outer training part (fitted to the data, see
    `inner_folds_for`), inner_configured: the number asked for."""

    raw: np.ndarray
    oof: np.ndarray
    scores: np.ndarray
    eps: np.ndarray
    inner_folds: np.ndarray | None = None
    inner_configured: int | None = None

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
    them as `oof_`; for any other, an inner CV of clones provides them, on
    `inner_folds_for(inner_folds, y)` folds.
    """
    own = getattr(estimator, "oof_", None)
    if own is not None:
        return np.asarray(own)
    out = np.empty(len(y))
    splitter = StratifiedKFold(inner_folds_for(inner_folds, y), shuffle=True, random_state=seed)
    for fit_rows, held in splitter.split(np.zeros(len(y)), y):
        out[held] = positive_proba(clone(estimator).fit(_rows(X, fit_rows), y[fit_rows]), _rows(X, held))
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
    """Nested CV of the estimator `make(repeat, fold)` builds; `tables[r]` holds repeat r's OOF features.

    `inner_folds` is the blenders' number (an estimator with its own `inner_folds`, the stacker,
    uses that one); either is fitted to each outer training part and recorded on the result.
    """
    repeats, k = fold.shape[0], int(fold.max()) + 1
    raw = np.empty(fold.shape)
    oof = np.empty(fold.shape)
    scores = np.empty((repeats, k))
    eps = np.empty((repeats, k))
    used = np.zeros((repeats, k), dtype=np.int64)
    configured, smallest, fitted = inner_folds, len(y), []
    for r in range(repeats):
        for f in range(k):
            held = np.flatnonzero(fold[r] == f)
            fit_rows = np.flatnonzero(fold[r] != f)
            estimator = make(r, f)
            estimator.fit(_rows(tables[r], fit_rows), y[fit_rows])
            configured = int(getattr(estimator, "inner_folds", inner_folds))
            fitted.append(estimator)
            used[r, f] = getattr(estimator, "inner_folds_", None) or inner_folds_for(configured, y[fit_rows])
            smallest = min(smallest, smallest_class(y[fit_rows]))
            inner = honest_train_predictions(estimator, _rows(tables[r], fit_rows), y[fit_rows], inner_folds, seed)
            eps[r, f] = choose_eps(inner, y[fit_rows], eps_grid)
            raw[r, held] = positive_proba(estimator, _rows(tables[r], held))
            oof[r, held] = clip(raw[r, held], eps[r, f])
            scores[r, f] = logloss(y[held], oof[r, held])
    if fitted:
        _note_estimator(fitted, inner_folds, used, smallest, "in an outer training part", _scope(fold, y))
    return CVResult(raw, oof, scores, eps, used, configured)


def fit_predict_test(make: Callable[[int], Estimator], tables: Sequence[Any], y: np.ndarray, tests: Sequence[Any]) -> np.ndarray:
    """Unclipped test predictions of the estimator fitted on all training rows, averaged over repeats
    (`tests[r]` is the test table built alongside `tables[r]`). An estimator that reduced its own
    inner folds to fit all training rows (the stacker) says so once."""
    preds, fitted = [], []
    for r in range(len(tables)):
        estimator = make(r).fit(tables[r], y)
        if getattr(estimator, "inner_folds_", None) is not None:
            fitted.append(estimator)
        preds.append(positive_proba(estimator, tests[r]))
    if fitted:
        used = np.array([e.inner_folds_ for e in fitted])
        _note_estimator(fitted, int(used.max()), used, smallest_class(y), "among all training rows", _scope(y), final=True)
    return np.mean(preds, axis=0)
