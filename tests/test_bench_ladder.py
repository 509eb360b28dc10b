"""The small-data ladder: the digits competition folder, a tiny ladder end to end, and its option errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from competition.bench.ladder import END, START, run_ladder
from competition.config import CompetitionConfig
from competition.errors import ConfigError, DataError
from sklearn.metrics import log_loss

MODEL = "mobilenetv3_small_050"  # a timm architecture by name, random init
TINY = [
    "ladder.sizes=[40]", "ladder.digits=null", "ladder.n_test=30", "ladder.experiment=lad", "ladder.models=[]", "folds.k=2",
    "budget=quick", f"grid.models=[{MODEL}]", "grid.policies=[head,auto]", f"ladder.recipes=[{MODEL}]",
    "budgets.quick.epochs={classic: 1, scratch: 1, head: 1, top: 1, all_but_stem: 1, all: 1, auto: 1}",
    "weights=none", "channels=[hh,hv]", "image_size=32", "head.hidden=[8]", "save_models=false",
    "stack.stacker.n_trials=2", "stack.stacker.inner_folds=2", "stack.features.band_stats=false",
]  # fmt: skip


def test_digits_folder_is_a_competition_scored_offline(tmp_path: Path) -> None:
    """Two digit classes in Kaggle's format: the normal loader takes them, and the hidden solution scores a submission."""
    from competition.data.files import simulated_solution
    from competition.data.loader import load_competition
    from competition.kaggle.scoring import private_row_losses, score_submission
    from competition.simulate.digits import write_digits

    cfg = CompetitionConfig(data_dir=tmp_path / "digits")
    write_digits(cfg, (3, 8), 100, 0, 0.3)
    train, test = load_competition(cfg)
    assert train.labels is not None
    assert len(train) == 100 and len(test) == 357 - 100  # sklearn's digits hold 183 threes and 174 eights
    assert set(train.labels.tolist()) == {0, 1}
    assert train.images.shape == (100, 75, 75, 2) and np.isnan(train.angle).all()
    assert train.images.min() > -46 and train.images.max() <= -10 + 1e-4  # dB-like: HH -35..-10, HV smoothed -10 dB
    assert (train.images[..., 1].mean(axis=(1, 2)) < train.images[..., 0].mean(axis=(1, 2))).all()
    solution = simulated_solution(cfg, test.fingerprint)
    assert solution is not None
    truth = pd.read_csv(solution, dtype={"id": str})
    assert set(truth["Usage"]) == {"Public", "Private"} and set(truth["id"]) == set(test.ids.tolist())
    rate = float(train.labels.mean())
    sub = tmp_path / "prior.csv"
    pd.DataFrame({"id": test.ids, "is_iceberg": rate}).to_csv(sub, index=False)
    scores = score_submission(sub, solution)
    private = truth[truth["Usage"] == "Private"]
    assert scores.private == pytest.approx(log_loss(private["is_iceberg"], np.full(len(private), rate), labels=[0, 1]))
    rows = private_row_losses(sub, solution)
    assert list(rows.index) == private["id"].tolist() and rows.mean() == pytest.approx(scores.private)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("ladder.sizes=[10,200]", "ladder.sizes"),
        ("ladder.digits.classes=[3,3]", "ladder.digits.classes"),
        ("ladder.size=[100]", "ladder.size"),
        ("ladder.n_test=2", "ladder.n_test"),
    ],
)
def test_option_errors_name_the_key(tmp_path: Path, override: str, key: str) -> None:
    """A bad ladder option is one ConfigError naming the key, before any data is written."""
    cfg = CompetitionConfig(runs_dir=tmp_path / "runs")
    with pytest.raises(ConfigError, match=f"key '{key}"):
        run_ladder(cfg, [override])
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_tiny_ladder_end_to_end(tmp_path: Path) -> None:
    """One rung of 40 simulated images, 2 folds, two recipes: its data, folds, runs, stack, prior, JSON and docs section."""
    from competition.data.loader import load_train
    from competition.folds import load_folds

    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n<!-- quality:start -->\nquality\n<!-- quality:end -->\n")
    result = run_ladder(CompetitionConfig(runs_dir=tmp_path / "runs"), [*TINY, f"output={docs}"])

    saved: dict[str, Any] = json.loads((tmp_path / "runs" / "lad" / "ladder.json").read_text())
    assert [r["rung"] for r in saved["rungs"]] == ["40"] and saved["targets"] == result["targets"]
    rung = saved["rungs"][0]
    assert (rung["n_train"], rung["n_test"]) == (40, 30)
    assert [x["name"] for x in rung["recipes"]] == [f"{MODEL}-head", f"{MODEL}-auto"]
    assert all(Path(x["run_dir"]).parent == tmp_path / "runs" / "lad-40" for x in rung["recipes"])
    assert any(m["kind"] == "stack" for m in rung["methods"])

    rcfg = CompetitionConfig(data_dir=tmp_path / "runs/lad/data/40", work_dir=tmp_path / "runs/lad/data/40")
    train = load_train(rcfg)
    assert train.labels is not None and len(train) == 40
    folds = load_folds(rcfg, train)
    assert folds.params.k == 2
    fold = folds.assignment(train.ids, 0)
    expected = np.array([train.labels[fold != f].mean() for f in fold])
    assert rung["prior"]["cv_logloss"] == pytest.approx(log_loss(train.labels, expected))
    assert rung["prior"]["private"] is not None

    assert {t["target"] for t in result["targets"]} == {"auto", "prior", "stack"}
    assert all(t["verdict"] in {"holds", "within noise", "FAILS"} for t in result["targets"])
    auto = next(t for t in result["targets"] if t["target"] == "auto")
    n_private = len(pd.read_csv(tmp_path / "runs/lad/data/40/hidden/solution.csv").query("Usage == 'Private'"))
    assert f"over {n_private} private rows" in auto["detail"]  # the noise figure comes from the hidden rows
    text = docs.read_text()
    assert "quality\n<!-- quality:end -->" in text  # the other section stays
    section = text.split(START, 1)[1].split(END, 1)[0]
    assert "| rung | train / test | prior | head | auto | stack (lgbm) | stack submitted |" in section
    stack = next(t for t in result["targets"] if t["target"] == "stack")
    assert stack["detail"].startswith(f"submitted {rung['stack_submitted']} ") and "the LightGBM stacker" in stack["detail"]
    assert "| 40 | 40 / 30 |" in section and "auto @ 40" in section


def test_auto_target_counts_the_linear_probe_among_its_candidates() -> None:
    from competition.bench.ladder import check_targets

    def row(name: str, model: str, requested: str, policy: str, private: float) -> dict:
        return {"name": name, "model": model, "policy_requested": requested, "policy": policy, "private": private, "cv_logloss": private}

    rows = [
        row("m-head", "m", "head", "head", 0.40),
        row("m-all", "m", "all", "all", 0.30),
        row("m-auto", "m", "auto", "all", 0.30),
        row("m_probe", "m_probe", "head", "head", 0.20),  # the probe on m's backbone: auto races it, so it counts
    ]
    rung = {"rung": "100", "n_train": 100, "recipes": rows, "auto": [{"model": "m"}], "prior": {"private": 0.69}, "methods": []}
    [auto] = [t for t in check_targets([rung]) if t["target"] == "auto"]
    assert auto["verdict"] == "FAILS" and "best probe 0.2000" in auto["detail"]  # no private losses: the point estimate decides
    rows[2] = row("m-auto", "m", "auto", "probe", 0.205)
    [auto] = [t for t in check_targets([rung]) if t["target"] == "auto"]
    assert auto["verdict"] == "holds"


def test_stack_target_judges_what_the_stack_step_submitted() -> None:
    """On the digits the stack step submitted the best single run (its one-SE choice) while the LightGBM stacker alone
    was 0.18 worse: the user's submission holds, and the detail still says how the stacker did."""
    from competition.bench.ladder import check_targets, summary

    def row(name: str, private: float) -> dict:
        return {"name": name, "model": "m", "policy_requested": "all", "policy": "all", "private": private, "cv_logloss": private}

    lgbm = {"name": "lgbm", "kind": "stack", "private": 0.245, "cv_logloss": 0.026}
    rung = {"rung": "digits", "n_train": 100, "n_test": 257, "recipes": [row("m-all", 0.061), row("m-head", 0.41)],
            "auto": [], "prior": {"private": 0.72, "cv_logloss": 0.67}, "methods": [lgbm], "stack_submitted": "single:m-all"}  # fmt: skip
    [stack] = [t for t in check_targets([rung]) if t["target"] == "stack"]
    assert stack["verdict"] == "holds" and stack["detail"].startswith("submitted single:m-all 0.0610, best single m-all 0.0610")
    assert "the LightGBM stacker 0.2450: FAILS" in stack["detail"]
    rung["stack_submitted"] = "lgbm"
    [stack] = [t for t in check_targets([rung]) if t["target"] == "stack"]
    assert stack["verdict"] == "FAILS"
    columns, rows = summary({"rungs": [rung]})
    assert columns[-2:] == ["stack (lgbm)", "stack submitted"] and rows[0][-1].endswith("(lgbm)")


@pytest.mark.parametrize(
    ("gap", "spread", "verdict"), [(0.02, 0.2, "within noise"), (0.02, 0.01, "FAILS"), (0.005, 0.2, "within noise"), (0.005, 0.01, "holds")]
)
def test_a_verdict_needs_the_gap_two_standard_errors_clear_of_the_tolerance(gap: float, spread: float, verdict: str) -> None:
    """auto `gap` behind the best on 100 private rows: with a paired spread of 0.2 per row (SE 0.02) the test set cannot tell
    0.02 or 0.005 from the 0.01 tolerance; with 0.01 per row (SE 0.001) it can, either way."""
    from competition.bench.ladder import check_targets

    rng = np.random.default_rng(0)
    best_rows = rng.uniform(0.1, 0.6, 100)
    noise = rng.normal(0.0, 1.0, 100)
    auto_rows = best_rows + gap + spread * (noise - noise.mean()) / noise.std(ddof=1)  # mean gap `gap` exactly, sd `spread`
    rows = [
        {"name": "m-all", "model": "m", "policy_requested": "all", "policy": "all", "cv_logloss": 0.3, "private": best_rows.mean(), "submission": "a.csv"},
        {"name": "m-auto", "model": "m", "policy_requested": "auto", "policy": "head", "cv_logloss": 0.3, "private": auto_rows.mean(), "submission": "b.csv"},
    ]  # fmt: skip
    rung = {"rung": "400", "n_train": 400, "recipes": rows, "auto": [{"model": "m"}], "prior": {"private": 0.69}, "methods": []}
    ids = [f"t{i}" for i in range(100)]
    losses = {"a.csv": pd.Series(best_rows, index=ids), "b.csv": pd.Series(auto_rows, index=ids)}
    [auto] = [t for t in check_targets([rung], losses) if t["target"] == "auto"]
    assert auto["verdict"] == verdict
    assert f"gap {gap:+.4f}, paired SE {spread / 10:.4f} over 100 private rows" in auto["detail"]
    losses["b.csv"] = pd.Series(auto_rows, index=ids[::-1])  # other test rows: no pairing
    with pytest.raises(DataError, match="not the same test ids"):
        check_targets([rung], losses)


def test_paired_difference_refuses_vectors_that_do_not_pair() -> None:
    from competition.metrics import paired_difference

    assert paired_difference(np.array([0.5, 0.7]), np.array([0.4, 0.4])) == pytest.approx((0.2, 0.1))  # d = (0.1, 0.3): sd 0.1414, / sqrt(2)
    for a, b in [(np.array([0.5]), np.full(100, 0.4)), (np.ones((5, 1)), np.ones(5)), (np.array([]), np.array([]))]:
        with pytest.raises(ValueError, match="paired_difference"):
            paired_difference(a, b)
