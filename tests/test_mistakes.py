"""Tests that fail on three mistakes that once survived the whole suite (issue 12, "Tests that can fail").

(a) rank-mean blending that ranks test rows against each other instead of against the training
    (OOF) distribution: a row's prediction would then depend on which other rows are predicted with it;
(b) a scorer with another clipping floor than Kaggle's 1e-15 (e.g. 1e-7): a certain mistake has a
    closed-form score, -log(1e-15) = 34.539 over the rows, and 1e-7 gives 16.118;
(c) the clipping eps chosen on in-sample predictions instead of inner-OOF ones: an overfitting
    estimator is certain and right in sample, certain and often wrong out of sample.

Written against public behaviour that survives the blenders becoming scikit-learn classifiers:
`positive` takes column 1 of a two-column `predict_proba`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from competition.kaggle.scoring import score_submission
from competition.stacking.blenders import BLENDERS
from competition.stacking.clipping import choose_eps
from competition.stacking.crossval import cross_validate
from sklearn.tree import DecisionTreeClassifier


def positive(p: np.ndarray) -> np.ndarray:
    """Probability of class 1 per row, from either a one-column or a (n, 2) `predict_proba`."""
    p = np.asarray(p, dtype=np.float64)
    return p[:, 1] if p.ndim == 2 else p


def _runs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three runs' probabilities of n rows that track the labels with noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    logits = (2 * y - 1)[:, None] * 1.5 + rng.normal(0.0, 1.5, (n, 3))
    return 1.0 / (1.0 + np.exp(-logits)), y


# (a) ------------------------------------------------------------------------------------------------


def test_rank_mean_predicts_a_row_the_same_whichever_rows_come_with_it() -> None:
    oof, y = _runs(300, seed=0)
    test, _ = _runs(40, seed=1)
    blender = BLENDERS["rank_mean"]().fit(oof, y)
    together = positive(blender.predict_proba(test))
    alone = np.array([positive(blender.predict_proba(test[i : i + 1]))[0] for i in range(len(test))])
    np.testing.assert_allclose(alone, together, rtol=0, atol=1e-12)
    confident = np.full((40, 3), 0.999)  # a batch of confident icebergs must not push the others down the ranks
    mixed = positive(blender.predict_proba(np.vstack([test[:20], confident])))[:20]
    np.testing.assert_allclose(mixed, together[:20], rtol=0, atol=1e-12)
    assert np.ptp(alone) > 0.3  # the rows are told apart when predicted one at a time


# (b) ------------------------------------------------------------------------------------------------


def test_scorer_clips_at_kaggles_floor_of_1e_15(tmp_path: Path) -> None:
    """Public: 4 rows, one iceberg predicted 0; private: 5 rows, one ship predicted 1; every other row
    is predicted with certainty and right, so each score is -log(1e-15) / rows in closed form."""
    usage = ["Public"] * 4 + ["Private"] * 5 + ["Ignored"] * 2
    truth = [1, 0, 1, 0] + [0, 1, 0, 1, 0] + [1, 0]
    predicted = [0.0, 0.0, 1.0, 0.0] + [1.0, 1.0, 0.0, 1.0, 0.0] + [0.0, 1.0]  # Ignored rows wrong: not scored
    ids = [f"{i:08x}" for i in range(len(usage))]
    solution, submission = tmp_path / "solution.csv", tmp_path / "submission.csv"
    pd.DataFrame({"id": ids, "is_iceberg": truth, "Usage": usage}).to_csv(solution, index=False)
    pd.DataFrame({"id": ids, "is_iceberg": predicted}).to_csv(submission, index=False)
    score = score_submission(submission, solution)
    assert (score.n_public, score.n_private) == (4, 5)
    assert score.public == pytest.approx(-np.log(1e-15) / 4, rel=1e-9)  # 8.635; a 1e-7 floor gives 4.030
    assert score.private == pytest.approx(-np.log(1e-15) / 5, rel=1e-4)  # 1 - 1e-15 is 1 - 0.999e-15 in float64


# (c) ------------------------------------------------------------------------------------------------

EPS_GRID = [1e-3, 1e-2, 0.1, 0.3]


def _noise(n: int = 120, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Labels unrelated to the one feature, and 3 stratified-enough outer folds of one repeat."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({"pred_a": rng.uniform(0.0, 1.0, n)})
    y = rng.permutation(np.repeat([0, 1], n // 2))
    fold = rng.permutation(np.arange(n) % 3)[None, :]
    return X, y, fold


def test_the_overfitting_case_tells_in_sample_from_inner_oof_eps() -> None:
    """The case below is only a test if in-sample and honest predictions choose different eps."""
    X, y, _ = _noise()
    tree = DecisionTreeClassifier(random_state=0).fit(X, y)
    in_sample = positive(tree.predict_proba(X))
    assert set(np.unique(in_sample)) == {0.0, 1.0} and np.array_equal(in_sample, y)  # certain and right
    assert choose_eps(in_sample, y, EPS_GRID) == EPS_GRID[0]


def test_nested_cv_chooses_eps_on_inner_oof_predictions_not_in_sample_ones() -> None:
    """A fully grown tree on noise: certain and right in sample (which would choose the smallest eps),
    certain and half wrong on rows it did not see (which chooses the largest)."""
    X, y, fold = _noise()
    cv = cross_validate(lambda r, f: DecisionTreeClassifier(random_state=0), [X], y, fold, EPS_GRID, 5, 0)
    assert cv.eps.shape == (1, 3)
    assert (cv.eps == EPS_GRID[-1]).all(), cv.eps
    assert set(np.unique(cv.raw)) <= {0.0, 1.0}  # the held-out predictions are as certain as the in-sample ones
    assert cv.oof.min() == EPS_GRID[-1] and cv.oof.max() == 1 - EPS_GRID[-1]


# Found by a newcomer (issue 13) ----------------------------------------------------------------------


def test_a_fine_tuning_policy_on_a_linear_probe_is_refused_before_any_run_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`make train MODEL=mobilenetv2_100_probe ARGS="policy=all"` was refused only when its first unit started,
    leaving an empty run folder and a lock; now the config's validation refuses it: one line, exit code 2."""
    import sys

    from competition.cli import main

    runs = tmp_path / "runs"
    args = ["train", "mobilenetv2_100_probe", "policy=all", f"data_dir={tmp_path / 'data'}", f"runs_dir={runs}", f"submissions_dir={tmp_path / 'subs'}"]
    monkeypatch.setattr(sys, "argv", ["competition", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    captured = capsys.readouterr()
    lines = (captured.out + captured.err).strip().splitlines()
    assert exited.value.code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: model 'mobilenetv2_100_probe'") and "key 'policy': a linear probe" in lines[0]
    assert "linear probe" in lines[0] and lines[0].endswith("expected head or auto, got 'all'")
    assert not runs.exists()


def test_the_probe_policy_check_names_the_yaml_and_leaves_other_frameworks_alone() -> None:
    from competition.errors import ConfigError
    from competition.models.registry import load_model_config

    with pytest.raises(ConfigError, match=r"mobilenetv2_100_probe\.yaml: key 'policy' \(from a command-line override\): .*expected head or auto, got 'top:2'"):
        load_model_config("mobilenetv2_100_probe", ["policy=top:2"])
    assert load_model_config("mobilenetv2_100_probe", ["policy=auto"]).policy == "auto"  # auto means head for a probe
    assert load_model_config("mobilenetv2_100", ["policy=all"]).policy == "all"


def test_the_stack_table_keeps_every_method_name_whole_on_80_columns() -> None:
    """Rich shrank the widest column first and cut `single:mobilenetv2_100` to `single:…` on an 80-column terminal.
    Now the other columns give way to their widest value first and a name that still does not fit folds, whole."""
    from competition.stacking.choice import choose
    from competition.stacking.crossval import CVResult
    from competition.stacking.summary import MethodResult, results_table
    from rich.console import Console

    def method(name: str, kind: str, mean: float) -> MethodResult:
        scores = mean + np.array([[-0.02, 0.01, 0.0, 0.01]])
        cv = CVResult(raw=np.zeros((1, 4)), oof=np.zeros((1, 4)), scores=scores, eps=np.full(scores.shape, 1e-3))
        return MethodResult(name=name, kind=kind, cv=cv, eps=1e-3, test=np.full(4, 0.5))

    names = ["single:mobilenetv2_100", "single:tf_efficientnet_lite0", "single:mobilenetv2_100_probe", "minmax_bestbase", "rank_mean", "lgbm"]
    results = [method(name, "single" if name.startswith("single:") else "blend", 0.3 + 0.01 * i) for i, name in enumerate(names)]
    for width in (80, 120):
        narrow = Console(width=width, highlight=False)
        with narrow.capture() as captured:
            narrow.print(results_table(results, "helperC5", choose(results, "one_se").record()))
        lines = captured.get().splitlines()
        rows = [line.split("│") for line in lines if line.startswith("│")]
        assert "…" not in "".join(lines) and max(len(line) for line in lines) <= width
        assert all(f"{m.cv.mean:.4f}" in "".join(lines) for m in results)  # the figures stay whole too
        names_column = "".join(cells[1].strip() for cells in rows)  # a folded name continues on its row's next lines
        assert all(name in names_column for name in names), names_column
        assert {"rank_mean", "lgbm"} <= {cells[1].strip() for cells in rows}  # the figures' columns gave way first: short names on one line
        if width == 120:  # room enough: one line each
            assert [cells[1].strip() for cells in rows] == names  # ranked best first: the order they were made in
