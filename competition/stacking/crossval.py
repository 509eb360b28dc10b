"""Nested cross-validation on the base models' own outer folds.

For every outer (repeat, fold) a method is fitted on the outer training part only - its own
tuning and its clipping eps included - and predicts the held-out fold. The reported score is
the mean and spread of the held-out log loss over the outer folds, the same folds the base
models' OOF predictions came from, so every figure in the stacking table is comparable.

Inner folds fit themselves to the data: an inner split of rows whose smallest class has c
members uses min(configured, c) folds, at least 2 (`inner_folds_for`); the numbers used are
recorded on the CVResult and, when smaller than configured, said once on the console.

Every fit is a task of an engine (competition.engine; `evaluate`): one per (repeat, outer fold),
`fit_fold`, and one per repeat for the final model, `fit_full`. A task returns numbers only (its
predictions, eps and the folds it used), so it may run in a Ray worker on another node; the driver
assembles the CVResult from them and alone prints the notes, whichever engine ran the fits.
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
from competition.engine import Engine, LocalEngine, Resources, Task
from competition.errors import DataError
from competition.folds import smallest_class
from competition.stacking.clipping import choose_eps, clip
from competition.stacking.metrics import logloss

MIN_INNER_FOLDS = 2
STACK_POOL = "stack"  # the worker pool of the stacker's tasks (`Task.worker`): LightGBM, Optuna, no deep-learning framework
BLENDERS_INNER = "inner folds of the blenders (eps choice)"  # how a note names an estimator without its own `inner_label`
_said: set[tuple[str, str]] = set()  # (scope, note) already printed: each note once per data and folds


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


def _note_estimator(
    prototype: Any, default: int, used: np.ndarray, figures: Sequence[Figures], smallest: int, where: str, scope: str, final: bool = False
) -> None:
    """The notes of one method, said by the driver from its fits' returned figures: its inner folds,
    and (the stacker) its group-rate folds. `prototype` is an unfitted estimator of the method (for
    its labels and configured folds)."""
    suffix = " for the final model" if final else ""
    label = getattr(prototype, "inner_label", BLENDERS_INNER) + suffix
    note_folds(label, int(getattr(prototype, "inner_folds", default)), used, f"the smallest class has {smallest} members {where}", scope)
    grouped = [fig for fig in figures if fig.group_folds is not None]
    if grouped:
        rows = min(int(fig.fit_rows or 0) for fig in grouped)
        note_folds(
            prototype.group_label + suffix,
            int(prototype.group_folds),
            np.array([fig.group_folds for fig in grouped]),
            f"an inner split fits on {rows} rows",
            scope,
        )


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


@dataclass(frozen=True)
class Figures:
    """What an estimator fitted to itself on its training rows, for the driver's notes: its own inner
    folds used (`inner_folds_`, the stacker; None: it has none), its group-rate folds used
    (`group_folds_`) and the rows its smallest inner split fits on (`fit_rows_`)."""

    inner_folds: int | None
    group_folds: int | None
    fit_rows: int | None

    @classmethod
    def of(cls, estimator: Any) -> Figures:
        def read(name: str) -> int | None:
            value = getattr(estimator, name, None)
            return None if value is None else int(value)

        return cls(read("inner_folds_"), read("group_folds_"), read("fit_rows_"))


@dataclass(frozen=True)
class FoldFit:
    """What one outer fold's fit returns (numbers only: it travels back from a worker). held: unclipped
    P(iceberg) of the held-out rows, in the order of the `held` index; eps: chosen on the honest inner
    predictions of the training part; inner_folds: the inner folds used there."""

    held: np.ndarray
    eps: float
    inner_folds: int
    figures: Figures


@dataclass(frozen=True)
class FullFit:
    """What one repeat's final fit on all training rows returns: unclipped P(iceberg) of the test rows,
    its figures, and the fitted model's `feature_importances_` when it has them (the stacker: gain)."""

    test: np.ndarray
    figures: Figures
    importances: pd.Series | None


@dataclass(frozen=True)
class Evaluation:
    """A method's nested CV and, when test tables were given, its final models' unclipped test
    predictions averaged over repeats and their mean feature importances (None when they have none)."""

    cv: CVResult
    test: np.ndarray | None = None
    importances: pd.Series | None = None


def fit_fold(
    estimator: Estimator, table: Any, y: np.ndarray, fit_rows: np.ndarray, held: np.ndarray, eps_grid: Sequence[float], inner_folds: int, seed: int
) -> FoldFit:
    """One outer fold (an engine task; runs in a worker under Ray): fit `estimator` on the `fit_rows`
    of `table`, choose eps on its honest inner predictions (inner CV of `inner_folds` for estimators
    without their own), and predict the `held` rows."""
    estimator.fit(_rows(table, fit_rows), y[fit_rows])
    configured = int(getattr(estimator, "inner_folds", inner_folds))
    figures = Figures.of(estimator)
    used = figures.inner_folds or inner_folds_for(configured, y[fit_rows])
    inner = honest_train_predictions(estimator, _rows(table, fit_rows), y[fit_rows], inner_folds, seed)
    return FoldFit(positive_proba(estimator, _rows(table, held)), choose_eps(inner, y[fit_rows], eps_grid), used, figures)


def fit_full(estimator: Estimator, table: Any, y: np.ndarray, test: Any) -> FullFit:
    """One repeat's final model (an engine task): fit `estimator` on every row of `table`, predict `test`."""
    estimator.fit(table, y)
    importances = getattr(estimator, "feature_importances_", None)
    return FullFit(positive_proba(estimator, test), Figures.of(estimator), importances if isinstance(importances, pd.Series) else None)


def evaluate(
    make: Callable[[int, int | None], Estimator],
    tables: Sequence[Any],
    y: np.ndarray,
    fold: np.ndarray,
    eps_grid: Sequence[float],
    inner_folds: int,
    seed: int,
    tests: Sequence[Any] | None = None,
    engine: Engine | None = None,
    name: str = "estimator",
    title: str = "nested CV",
) -> Evaluation:
    """Nested CV of the estimator `make(repeat, fold)` builds and, given `tests`, the final model
    `make(repeat, None)` of each repeat fitted on all rows: one batch of engine tasks (`fit_fold`,
    `fit_full`; default: this process), assembled here in the driver, which alone prints the notes.

    `tables[r]` holds repeat r's OOF features, `tests[r]` the test table built alongside it.
    `inner_folds` is the blenders' number (an estimator with its own `inner_folds`, the stacker,
    uses that one); either is fitted to each outer training part and recorded on the result. A task
    holds `threads` CPUs when the estimator has that parameter (the stacker), else one; `title` names
    the batch on the progress display. Raises the first task's `UserError` as it is, and `UserError`
    naming `name`, repeat and fold when a task failed otherwise.
    """
    engine = engine or LocalEngine()
    repeats, k = fold.shape[0], int(fold.max()) + 1
    shared = [engine.share(t) for t in tables]
    prototype = make(0, 0)
    cpus = Resources(cpus=float(getattr(prototype, "threads", 1)))
    tasks: list[Task[Any]] = []
    slots: dict[str, tuple[int, int | None]] = {}  # task key -> (repeat, outer fold; None: the final model)
    for r in range(repeats):
        for f in range(k):
            fit_rows, held = np.flatnonzero(fold[r] != f), np.flatnonzero(fold[r] == f)
            tasks.append(Task(f"{name} r{r} f{f}", fit_fold, (make(r, f), shared[r], y, fit_rows, held, eps_grid, inner_folds, seed), cpus, STACK_POOL))
            slots[tasks[-1].key] = (r, f)
        if tests is not None:
            tasks.append(Task(f"{name} r{r} final", fit_full, (make(r, None), shared[r], y, engine.share(tests[r])), cpus, STACK_POOL))
            slots[tasks[-1].key] = (r, None)
    results: dict[tuple[int, int | None], Any] = {}
    engine.run(tasks, lambda task, result: results.__setitem__(slots[task.key], result), f"{title} ({name})")
    cv = _assemble(prototype, {key: fit for key, fit in results.items() if key[1] is not None}, y, fold, inner_folds)
    if tests is None:
        return Evaluation(cv)
    return Evaluation(cv, *_assemble_final(prototype, [results[(r, None)] for r in range(repeats)], y))


def outer_fold_scores(y: np.ndarray, oof: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """Log loss of each outer fold's held-out rows (R x K) from OOF predictions `oof` and outer folds `fold` (both R x n)."""
    k = int(fold.max()) + 1
    return np.array([[logloss(y[fold[r] == f], oof[r, fold[r] == f]) for f in range(k)] for r in range(fold.shape[0])])


def _assemble(prototype: Any, fits: dict[tuple[int, int | None], FoldFit], y: np.ndarray, fold: np.ndarray, inner_folds: int) -> CVResult:
    """The CVResult of the outer folds' fits, and their notes."""
    repeats, k = fold.shape[0], int(fold.max()) + 1
    raw, oof = np.empty(fold.shape), np.empty(fold.shape)
    eps = np.empty((repeats, k))
    used = np.zeros((repeats, k), dtype=np.int64)
    smallest = len(y)
    for r in range(repeats):
        for f in range(k):
            fit, held = fits[(r, f)], fold[r] == f
            raw[r, held], eps[r, f], used[r, f] = fit.held, fit.eps, fit.inner_folds
            oof[r, held] = clip(fit.held, fit.eps)
            smallest = min(smallest, smallest_class(y[~held]))
    configured = int(getattr(prototype, "inner_folds", inner_folds))
    _note_estimator(prototype, inner_folds, used, [fit.figures for fit in fits.values()], smallest, "in an outer training part", _scope(fold, y))
    return CVResult(raw, oof, outer_fold_scores(y, oof, fold), eps, used, configured)


def _assemble_final(prototype: Any, fits: list[FullFit], y: np.ndarray) -> tuple[np.ndarray, pd.Series | None]:
    """Test predictions averaged over repeats, mean importances; an estimator that reduced its own
    inner folds to fit all training rows (the stacker) says so once."""
    figures = [fit.figures for fit in fits if fit.figures.inner_folds is not None]
    if figures:
        used = np.array([fig.inner_folds for fig in figures])
        _note_estimator(prototype, int(used.max()), used, figures, smallest_class(y), "among all training rows", _scope(y), final=True)
    importances = [fit.importances for fit in fits if fit.importances is not None]
    mean = pd.concat(importances, axis=1).mean(axis=1).sort_values(ascending=False) if importances else None
    return np.mean([fit.test for fit in fits], axis=0), mean


def cross_validate(
    make: Callable[[int, int | None], Estimator],
    tables: Sequence[Any],
    y: np.ndarray,
    fold: np.ndarray,
    eps_grid: Sequence[float],
    inner_folds: int,
    seed: int,
    engine: Engine | None = None,
) -> CVResult:
    """Nested CV of the estimator `make(repeat, fold)` builds (`evaluate` without a final model)."""
    return evaluate(make, tables, y, fold, eps_grid, inner_folds, seed, engine=engine).cv
