"""Which stacking method to submit: a hedge among those within noise of the best, the one-standard-error rule, or the lowest mean CV.

Nested CV gives each method K (x R repeats) outer-fold log losses. On small data the method with
the lowest mean can owe its place to luck: on 99 training rows the LightGBM stacker came first
while its fold scores swung by 0.2 log loss, and a plain mean of the runs was the safe choice.

`one_se` is the one-standard-error rule of Hastie, Tibshirani and Friedman, *The
Elements of Statistical Learning*, 2nd ed., section 7.10: take the simplest method whose mean CV
is within one standard error of the best mean, SE = std / sqrt(n) of the best method's n outer-fold
scores. "Simplest" follows `COMPLEXITY` (fewest fitted choices first; ties: the lower mean CV).
When one method is far better than the rest (the stacker on the full simulated competition) no
simpler one comes within its SE and it is chosen, as by `best_mean`.

`hedge` (the default) submits the mean prediction of every method whose mean per-row OOF log loss is within one
standard error of the best's, the SE here of the paired per-row difference of the two methods' OOF log losses (the
policy race's test, competition.training.policy_race; rows averaged over repeats first), and the best method alone when no other is within it. When the CV
cannot tell methods apart, any pick among them is a draw; log loss is convex in p, so the mean prediction's
loss is at most the mean of its members' losses on every row set (Jensen's inequality): a hedge is never
worse than picking among the members at random, and is better wherever they disagree. The `hedge` method's
CV is scored from its members' nested-CV OOF predictions, averaged row by row (honest per row; like any
choice by CV, the choice of members itself reads the same rows).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from competition.metrics import paired_difference, row_logloss
from competition.stacking.crossval import CVResult, outer_fold_scores
from competition.stacking.settings import ChoiceRule
from competition.stacking.summary import ChoiceRecord, MethodResult, ranked

SINGLE_KIND = "single"
HEDGE = "hedge"  # the `hedge` rule's method: the mean of the methods within its reach

# Declared order of simplicity: 0 fits nothing; a single run is one picked out of N by CV; the
# other averages are fixed but non-linear; then methods that fit 1, N and many parameters.
COMPLEXITY: dict[str, int] = {
    "mean": 0,
    "median": 0,
    SINGLE_KIND: 1,
    "logit_mean": 1,
    "rank_mean": 1,
    "geo_mean": 1,
    "minmax_bestbase": 2,
    "weights": 3,
    "caruana": 4,
    "lgbm": 5,
}


def complexity(result: MethodResult) -> int:
    """The method's place in `COMPLEXITY` (single runs share one place)."""
    return COMPLEXITY[SINGLE_KIND if result.kind == SINGLE_KIND else result.name]


def standard_error(result: MethodResult) -> float:
    """std / sqrt(n) of the method's n outer-fold log losses (population std, as `CVResult.std`)."""
    return result.cv.std / math.sqrt(result.cv.scores.size)


@dataclass(frozen=True)
class Choice:
    """The method submitted and why: `best` has the lowest mean CV; `threshold` is the mean a method
    had to reach (best mean + its SE under `one_se`, the best mean under `best_mean`, the farthest member's mean
    under `hedge`, whose `se` is that member's paired SE); `candidates`: simplest first, under `hedge` best first."""

    rule: ChoiceRule
    chosen: MethodResult
    best: MethodResult
    se: float
    threshold: float
    candidates: list[str]  # methods within the threshold, simplest first
    reason: str

    def record(self) -> ChoiceRecord:
        """What summary.json keeps of the choice."""
        return ChoiceRecord(
            rule=self.rule, method=self.chosen.name, best=self.best.name, best_cv_mean=self.best.cv.mean,
            se=self.se, threshold=self.threshold, candidates=self.candidates, reason=self.reason,
        )  # fmt: skip


def row_losses(result: MethodResult, y: np.ndarray) -> np.ndarray:
    """Per-row log loss of the method's clipped nested-CV OOF predictions (R x n) against `y` (n,), averaged over the R
    repeats (shape (n,)): a row repeated R times is still one row for a standard error."""
    return np.mean([row_logloss(y, oof) for oof in result.cv.oof], axis=0)


def paired_gap(result: MethodResult, best: MethodResult, y: np.ndarray) -> tuple[float, float]:
    """Mean and standard error of the per-row difference of two methods' OOF log losses (`metrics.paired_difference`,
    rows averaged over repeats: `row_losses`); (0, 0) for a method against itself."""
    return paired_difference(row_losses(result, y), row_losses(best, y))


def hedge_of(members: Sequence[MethodResult], y: np.ndarray, fold: np.ndarray) -> MethodResult:
    """The `hedge` method: the row-wise mean of `members`' clipped OOF predictions (scored per outer fold of
    `fold`, R x n) and of their clipped test predictions. Not clipped again: its `eps` is the members' smallest, the
    bound its predictions keep from 0 and 1."""
    oof = np.mean([m.cv.oof for m in members], axis=0)
    scores = outer_fold_scores(y, oof, fold)
    eps = min(m.eps for m in members)
    cv = CVResult(raw=oof, oof=oof, scores=scores, eps=np.full_like(scores, eps))
    return MethodResult(HEDGE, "blend", cv, eps, np.mean([m.test for m in members], axis=0))


def _hedge(results: Sequence[MethodResult], best: MethodResult, y: np.ndarray, fold: np.ndarray) -> Choice:
    """The `hedge` rule (module docstring)."""
    gaps = {m.name: paired_gap(m, best, y) for m in results}  # (mean, SE) of each method's per-row gap to best
    within = sorted((m for m in results if gaps[m.name][0] <= gaps[m.name][1]), key=lambda m: m.cv.mean)
    names = [m.name for m in within]
    if len(within) == 1:
        reason = f"{best.name}: lowest mean CV {best.cv.mean:.4f}; no other method within 1 paired SE of it"
        return Choice("hedge", best, best, 0.0, best.cv.mean, names, reason)
    last = within[-1]
    chosen = hedge_of(within, y, fold)
    reason = (
        f"{HEDGE}: the mean of {', '.join(names)} (each within 1 paired SE of {best.name} {best.cv.mean:.4f}; "
        f"the farthest, {last.name} {last.cv.mean:.4f}, SE {gaps[last.name][1]:.4f}), CV {chosen.cv.mean:.4f}"
    )
    return Choice("hedge", chosen, best, gaps[last.name][1], last.cv.mean, names, reason)


def choose(results: Sequence[MethodResult], rule: ChoiceRule, y: np.ndarray | None = None, fold: np.ndarray | None = None) -> Choice:
    """The method to submit among `results` (at least one) under `rule`, with a one-line reason such as
    "mean: within 1 SE (0.031) of lgbm 0.512; simpler". `hedge` needs the labels `y` (n,) and the outer folds
    `fold` (R x n) of the OOF rows; its chosen method may be a new one (`HEDGE`), not among `results`.

    Raises ValueError when `hedge` is asked for without `y` and `fold`."""
    best = ranked(list(results))[0]
    se = standard_error(best)
    if rule == "hedge":
        if y is None or fold is None:
            raise ValueError("the hedge rule needs the labels and the outer folds of the OOF rows")
        return _hedge(results, best, y, fold)
    if rule == "best_mean":
        return Choice(rule, best, best, se, best.cv.mean, [best.name], f"{best.name}: lowest mean CV {best.cv.mean:.4f}")
    threshold = best.cv.mean + se
    within = sorted((m for m in results if m.cv.mean <= threshold), key=lambda m: (complexity(m), m.cv.mean, m.cv.std))
    chosen = within[0]
    if chosen is best:
        others = "no simpler method" if len(within) == 1 else f"simplest of {len(within)} within it"
        reason = f"{best.name}: lowest mean CV {best.cv.mean:.4f}; {others} within 1 SE ({se:.4f})"
    else:
        reason = f"{chosen.name}: {chosen.cv.mean:.4f}, within 1 SE ({se:.4f}) of {best.name} {best.cv.mean:.4f}; simpler"
    return Choice(rule, chosen, best, se, threshold, [m.name for m in within], reason)
