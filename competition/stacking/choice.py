"""Which stacking method to submit: the lowest mean CV, or the one-standard-error rule.

Nested CV gives each method K (x R repeats) outer-fold log losses. On small data the method with
the lowest mean can owe its place to luck: on 99 training rows the LightGBM stacker came first
while its fold scores swung by 0.2 log loss, and a plain mean of the runs was the safe choice.

`one_se` (the default) is the one-standard-error rule of Hastie, Tibshirani and Friedman, *The
Elements of Statistical Learning*, 2nd ed., section 7.10: take the simplest method whose mean CV
is within one standard error of the best mean, SE = std / sqrt(n) of the best method's n outer-fold
scores. "Simplest" follows `COMPLEXITY` (fewest fitted choices first; ties: the lower mean CV).
When one method is far better than the rest (the stacker on the full simulated competition) no
simpler one comes within its SE and it is chosen, as by `best_mean`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from competition.stacking.settings import ChoiceRule
from competition.stacking.summary import ChoiceRecord, MethodResult, ranked

SINGLE_KIND = "single"

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
    had to reach (best mean + its SE under `one_se`, the best mean under `best_mean`)."""

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


def choose(results: Sequence[MethodResult], rule: ChoiceRule) -> Choice:
    """The method to submit among `results` (at least one) under `rule`, with a one-line reason such as
    "mean: within 1 SE (0.031) of lgbm 0.512; simpler"."""
    best = ranked(list(results))[0]
    se = standard_error(best)
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
