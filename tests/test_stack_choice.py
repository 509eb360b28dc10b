"""Which method is submitted: the one-standard-error rule against the lowest mean, and how the choice is shown."""

from __future__ import annotations

import json

import numpy as np
import pytest
from competition.config import load
from competition.console import console
from competition.errors import ConfigError
from competition.metrics import logloss
from competition.stacking.choice import COMPLEXITY, HEDGE, choose, paired_gap, row_losses
from competition.stacking.crossval import CVResult
from competition.stacking.settings import ALL_METHODS, StackConfig
from competition.stacking.summary import MethodResult, read_summary, results_table, write_summary


def _method(name: str, kind: str, scores: list[float]) -> MethodResult:
    folds = np.asarray(scores, dtype=np.float64)[None, :]
    cv = CVResult(raw=np.zeros((1, 4)), oof=np.zeros((1, 4)), scores=folds, eps=np.full(folds.shape, 1e-3))
    return MethodResult(name=name, kind=kind, cv=cv, eps=1e-3, test=np.full(4, 0.5))


# 99 training rows, 5 outer folds: the stacker's fold scores swing by 0.2, the blends' barely move
SMALL = [
    _method("single:a", "single", [0.58, 0.60, 0.57, 0.61, 0.59]),
    _method("mean", "blend", [0.54, 0.52, 0.55, 0.53, 0.53]),
    _method("weights", "blend", [0.50, 0.49, 0.56, 0.52, 0.51]),
    _method("lgbm", "stack", [0.40, 0.60, 0.45, 0.58, 0.49]),
]
# the full simulated competition: the stacker far ahead with a small spread
LARGE = [
    _method("single:a", "single", [0.22, 0.24, 0.21, 0.23, 0.22]),
    _method("mean", "blend", [0.19, 0.20, 0.18, 0.19, 0.19]),
    _method("caruana", "blend", [0.18, 0.19, 0.18, 0.19, 0.18]),
    _method("lgbm", "stack", [0.055, 0.060, 0.050, 0.062, 0.058]),
]


def test_one_se_takes_the_simplest_method_within_one_standard_error_of_the_best_mean():
    choice = choose(SMALL, "one_se")
    lgbm = SMALL[3]
    assert choice.best is lgbm  # lowest mean (0.504) ...
    assert choice.se == pytest.approx(np.std(lgbm.cv.scores) / np.sqrt(5))  # ... but SE 0.030
    assert choice.candidates == ["mean", "weights", "lgbm"]  # within 0.504 + 0.030, simplest first
    assert choice.chosen.name == "mean"
    assert choice.reason == f"mean: 0.5340, within 1 SE ({choice.se:.4f}) of lgbm 0.5040; simpler"


def test_a_method_far_better_than_the_rest_is_chosen_by_either_rule():
    for rule in ("one_se", "best_mean"):
        choice = choose(LARGE, rule)
        assert choice.chosen.name == "lgbm" and choice.candidates == ["lgbm"]
    assert choose(LARGE, "one_se").reason == f"lgbm: lowest mean CV 0.0570; no simpler method within 1 SE ({choose(LARGE, 'one_se').se:.4f})"


def test_best_mean_takes_the_lowest_mean_whatever_its_spread():
    choice = choose(SMALL, "best_mean")
    assert choice.chosen.name == "lgbm" and choice.threshold == pytest.approx(0.504)
    assert choice.reason == "lgbm: lowest mean CV 0.5040"


def test_ties_in_complexity_go_to_the_lower_mean_and_a_single_run_is_not_simpler_than_the_mean():
    results = [
        _method("mean", "blend", [0.32, 0.34, 0.33]),
        _method("median", "blend", [0.31, 0.33, 0.32]),
        _method("single:a", "single", [0.20, 0.30, 0.40]),
        _method("lgbm", "stack", [0.30, 0.40, 0.35]),
    ]
    choice = choose(results, "one_se")
    assert choice.best.name == "single:a" and choice.threshold == pytest.approx(0.30 + np.std([0.2, 0.3, 0.4]) / np.sqrt(3))
    assert choice.candidates == ["median", "mean", "single:a"] and choice.chosen.name == "median"


def test_every_configurable_method_has_a_declared_complexity_and_the_rule_is_validated(tmp_path):
    assert set(ALL_METHODS) <= set(COMPLEXITY)
    assert StackConfig().choice == "hedge"
    path = tmp_path / "stack.yaml"
    path.write_text("choice: lowest\n")
    with pytest.raises(ConfigError, match=r"stack.yaml: key 'choice': Input should be 'one_se', 'best_mean' or 'hedge'"):
        load(path, StackConfig)


def test_summary_and_table_say_which_method_was_chosen_and_why(tmp_path):
    choice = choose(SMALL, "one_se")
    context = {"experiment": "small", "created": "2026-01-01T00:00:00", "runs": ["a"], "config_hash": "h", "folds_fingerprint": "f",
               "data_fingerprint": {"train": "tr", "test": "te"}}  # fmt: skip
    written = write_summary(tmp_path / "summary.json", SMALL, choice.chosen, tmp_path / "sub.csv", context, choice.record())
    summary = read_summary(tmp_path)
    assert summary == written and summary.chosen.method == "mean" and summary.ranking[0] == "lgbm"
    assert summary.choice is not None and summary.choice.reason == choice.reason and summary.choice.best == "lgbm"
    with console.capture() as captured:
        console.print(results_table(SMALL, "small", summary.choice))
    text = captured.get()
    rows = {line.split()[1]: line for line in text.splitlines() if line.startswith("│")}
    assert "chosen" in rows["mean"] and "within" in rows["lgbm"] and "within" not in rows["single:a"]
    assert f"chosen by one_se: {choice.reason}" in " ".join(text.split())


def test_a_summary_written_before_the_choice_was_recorded_still_reads(tmp_path):
    context = {"experiment": "old", "created": "2026-01-01T00:00:00", "runs": ["a"], "config_hash": "h", "folds_fingerprint": "f",
               "data_fingerprint": {"train": "tr", "test": "te"}}  # fmt: skip
    write_summary(tmp_path / "summary.json", LARGE, LARGE[3], tmp_path / "sub.csv", context)
    assert "choice" not in json.loads((tmp_path / "summary.json").read_text())
    summary = read_summary(tmp_path)
    assert summary.choice is None and summary.chosen.method == "lgbm"


def _predicting(name: str, kind: str, oof: np.ndarray, y: np.ndarray, fold: np.ndarray, test: float) -> MethodResult:
    """A method whose nested-CV OOF predictions are `oof` (n,), scored per outer fold of `fold` (n,)."""
    scores = np.array([[logloss(y[fold == f], oof[fold == f]) for f in np.unique(fold)]])
    cv = CVResult(raw=oof[None, :], oof=oof[None, :], scores=scores, eps=np.full(scores.shape, 1e-4))
    return MethodResult(name=name, kind=kind, cv=cv, eps=1e-4, test=np.full(3, test))


def _hedge_case(seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[MethodResult]]:
    """100 rows: two methods the CV cannot tell apart (confident but each wrong on other rows), one far worse."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 100).astype(np.float64)
    fold = np.arange(100) % 5
    sure = np.where(y == 1, 0.97, 0.03)
    a, b = sure.copy(), sure.copy()
    a[:6], b[50:55] = 1 - a[:6], 1 - b[50:55]  # 6 and 5 confident mistakes on different rows
    weak = np.where(y == 1, 0.6, 0.4)
    return y, fold, [_predicting("lgbm", "stack", a, y, fold, 0.9), _predicting("logit_mean", "blend", b, y, fold, 0.7),
                     _predicting("mean", "blend", weak, y, fold, 0.5)]  # fmt: skip


def test_hedge_averages_the_methods_within_one_paired_standard_error_and_never_loses_to_their_mean_loss():
    y, fold, results = _hedge_case()
    lgbm, logit_mean, mean = results
    choice = choose(results, "hedge", y, fold[None, :])
    assert choice.best is logit_mean and choice.candidates == ["logit_mean", "lgbm"]  # mean: 0.51 against 0.25, far outside
    hedge = choice.chosen
    assert hedge.name == HEDGE and hedge.kind == "blend" and hedge.eps == 1e-4  # its members' smallest: the bound it keeps
    averaged = (lgbm.cv.oof + logit_mean.cv.oof) / 2
    assert np.allclose(hedge.cv.oof, averaged) and np.allclose(hedge.test, 0.8)
    assert hedge.cv.scores[0] == pytest.approx([logloss(y[fold == f], averaged[0, fold == f]) for f in range(5)])
    # Jensen: on every row the mean prediction loses at most the members' mean loss; here, where they disagree, far less
    members = (row_losses(lgbm, y) + row_losses(logit_mean, y)) / 2
    assert np.all(row_losses(hedge, y) <= members + 1e-12) and hedge.cv.mean < min(lgbm.cv.mean, logit_mean.cv.mean) - 0.05
    assert choice.se == pytest.approx(paired_gap(lgbm, logit_mean, y)[1]) and choice.threshold == pytest.approx(lgbm.cv.mean)
    assert choice.reason.startswith("hedge: the mean of logit_mean, lgbm (each within 1 paired SE of logit_mean ")


def test_hedge_keeps_a_method_the_others_cannot_reach_alone():
    y, fold, results = _hedge_case()
    clear = _predicting("caruana", "blend", np.where(y == 1, 0.99, 0.01), y, fold, 0.95)
    choice = choose([*results, clear], "hedge", y, fold[None, :])
    assert choice.chosen is clear and choice.candidates == ["caruana"]
    assert choice.reason == f"caruana: lowest mean CV {clear.cv.mean:.4f}; no other method within 1 paired SE of it"
    with pytest.raises(ValueError, match="labels and the outer folds"):
        choose(results, "hedge")


def test_paired_gap_is_the_mean_per_row_difference_and_its_standard_error_with_repeats_counted_once():
    y, fold, (lgbm, logit_mean, _) = _hedge_case()
    diff = row_losses(lgbm, y) - row_losses(logit_mean, y)
    assert paired_gap(lgbm, logit_mean, y) == pytest.approx((diff.mean(), np.std(diff, ddof=1) / 10))
    assert paired_gap(lgbm, lgbm, y) == (0.0, 0.0)
    # the same OOF predictions under two repeats: the same rows, so the same gap and standard error (not / sqrt(2))
    twice = [MethodResult(m.name, m.kind, CVResult(raw=np.vstack([m.cv.oof] * 2), oof=np.vstack([m.cv.oof] * 2),
                                                   scores=np.vstack([m.cv.scores] * 2), eps=np.vstack([m.cv.eps] * 2)), m.eps, m.test)
             for m in (lgbm, logit_mean)]  # fmt: skip
    assert paired_gap(*twice, y) == pytest.approx(paired_gap(lgbm, logit_mean, y))
    assert choose(twice, "hedge", y, np.vstack([fold, fold])).candidates == ["logit_mean", "lgbm"]
