"""The whole stacking step on constructed signals: the stacker must earn its place, outputs must be complete."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from competition.config import load
from competition.errors import ConfigError
from competition.overrides import route
from competition.stacking.features import stack_tables
from competition.stacking.pipeline import run_stack
from competition.stacking.settings import StackConfig, load_stack_config
from competition.stacking.stacker import LGBMStacker
from competition.stacking.summary import read_summary
from competition.submission import validate_submission

from stack_data import make_competition, write_predictor

ROOT = Path(__file__).resolve().parents[1]
PREDICTORS = [(1.0, 1.5), (0.8, 1.2), (1.2, 2.0), (0.6, 1.0)]  # (strength, noise) of each run
QUICK = {"n_trials": 4, "inner_folds": 2, "max_rounds": 300, "timeout_s": None}


@pytest.fixture(scope="module")
def stacked(tmp_path_factory):
    """Four noisy predictors of the label; exact-angle groups carry label information none of them uses."""
    comp = make_competition(tmp_path_factory.mktemp("stack"), n_train=320, n_test=120, k=4, seed=1)
    for j, (strength, noise) in enumerate(PREDICTORS):
        write_predictor(comp, f"m{j}", strength, noise, seed=10 + j)
    scfg = StackConfig(features={"band_stats": False}, stacker=QUICK)
    return comp, scfg, run_stack(comp.cfg, scfg, comp.train, comp.test)


def test_stacker_beats_every_single_run_and_every_blend(stacked):
    _, _, summary = stacked
    methods = summary.methods
    best_single = min(m.cv_mean for m in methods.values() if m.kind == "single")
    best_blend = min(m.cv_mean for m in methods.values() if m.kind == "blend")
    assert best_single == summary.best_single.cv_mean
    assert methods["lgbm"].cv_mean < best_blend < best_single
    # far better than every other method: the hedge rule (the default) submits the stacker alone
    assert summary.chosen.method == "lgbm" == summary.ranking[0] and "hedge" not in methods
    assert summary.choice is not None and summary.choice.rule == "hedge" and summary.choice.candidates == ["lgbm"]
    assert summary.choice.threshold == pytest.approx(methods["lgbm"].cv_mean) and summary.choice.threshold < best_blend
    assert summary.choice.reason.startswith("lgbm: lowest mean CV") and summary.choice.reason.endswith("no other method within 1 paired SE of it")


def test_summary_lists_every_method_best_first_with_fold_scores(stacked):
    comp, scfg, summary = stacked
    methods = summary.methods
    assert set(methods) == {f"single:m{j}" for j in range(len(PREDICTORS))} | set(scfg.methods)
    means = [methods[name].cv_mean for name in summary.ranking]
    assert means == sorted(means)
    for record in methods.values():
        scores = [f["logloss"] for f in record.fold_scores]
        assert len(scores) == comp.folds.params.k
        assert record.cv_mean == pytest.approx(np.mean(scores)) and record.cv_std == pytest.approx(np.std(scores))
        assert record.eps in scfg.eps_grid and all(f["eps"] in scfg.eps_grid for f in record.fold_scores)
    assert summary.eps == summary.chosen.eps
    assert summary.folds_fingerprint == comp.folds.fingerprint
    assert summary == read_summary(comp.cfg.runs_dir / "baseline" / "stack")


def test_outputs_submission_tables_plot_and_study(stacked):
    comp, _, summary = stacked
    sub = Path(summary.submission)
    assert sub.parent == comp.cfg.submissions_dir and sub.name.endswith(f"_baseline_lgbm_cv{summary.chosen.cv_mean:.4f}.csv")
    assert validate_submission(sub, comp.cfg.sample_submission) == len(comp.test)
    sidecar = json.loads(sub.with_suffix(".json").read_text())
    assert sidecar["method"] == "lgbm" and sidecar["folds_fingerprint"] == comp.folds.fingerprint and sidecar["eps"] == summary.eps
    assert sidecar["data_fingerprint"] == {"train": comp.train.fingerprint, "test": comp.test.fingerprint}
    out = comp.cfg.runs_dir / "baseline" / "stack"
    oof = pd.read_csv(out / "oof.csv", dtype={"id": str})
    assert len(oof) == len(comp.train) and oof["id"].tolist() == comp.train.ids.tolist()
    stored = pd.read_csv(sub, dtype={"id": str}).set_index("id")["is_iceberg"]
    test = pd.read_csv(out / "test.csv", dtype={"id": str}).set_index("id")
    assert np.allclose(test.loc[stored.index, "lgbm"], stored, atol=1e-7)
    assert (out / "cv_scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    importances = pd.read_csv(out / "importances.csv")
    assert "group_rate" in importances["feature"].tolist()
    with sqlite3.connect(out / "optuna.sqlite") as db:
        studies = db.execute("select count(*) from studies").fetchone()[0]
    assert studies == comp.folds.params.k + 1  # one per outer fold, one for the final model


def test_rerun_resumes_the_stored_studies(stacked):
    """Same inputs, same config: every study is already complete, so no trial runs again and the result is the same."""
    comp, scfg, summary = stacked
    out = comp.cfg.runs_dir / "baseline" / "stack" / "optuna.sqlite"
    with sqlite3.connect(out) as db:
        before = db.execute("select count(*) from trials").fetchone()[0]
    again = run_stack(comp.cfg, scfg.model_copy(update={"methods": ["mean", "lgbm"]}), comp.train, comp.test)
    with sqlite3.connect(out) as db:
        after = db.execute("select count(*) from trials").fetchone()[0]
    assert after == before
    assert again.methods["lgbm"].cv_mean == pytest.approx(summary.methods["lgbm"].cv_mean)


def test_an_interrupted_search_runs_only_the_missing_trials(stacked, tmp_path):
    comp, _, _ = stacked
    rng = np.random.default_rng(0)
    P = rng.uniform(0.05, 0.95, (len(comp.train), 2))
    fold = comp.folds.table["fold"].to_numpy()
    X, _ = stack_tables(["a", "b"], P, P[:5], comp.train.angle, comp.train.angle[:5], fold, np.repeat(P[None, :5], comp.folds.params.k, axis=0))
    y = comp.train.labels.astype(int)
    storage = tmp_path / "optuna.sqlite"
    ticks: list[int] = []
    LGBMStacker(n_trials=2, inner_folds=2, max_rounds=50, storage=storage, study_name="s").fit(X, y)
    LGBMStacker(n_trials=5, inner_folds=2, max_rounds=50, storage=storage, study_name="s", on_trial=ticks.append).fit(X, y)
    with sqlite3.connect(storage) as db:
        assert db.execute("select count(*) from trials").fetchone()[0] == 5
    assert sum(ticks) == 5 and ticks[0] == 2  # progress counts the two stored trials first


def test_stack_config_overrides_are_routed_and_validated():
    routed = route(["stack.stacker.n_trials=7", "experiment=x", "stack.methods=[mean, lgbm]"], "stack")
    scfg = load_stack_config(routed.stack, ROOT / "configs" / "stack.yaml")
    assert scfg.stacker.n_trials == 7 and scfg.methods == ["mean", "lgbm"] and routed.competition == ["experiment=x"]
    with pytest.raises(ConfigError, match=r"stack.yaml: key 'methods.0': Input should be 'mean'"):
        load_stack_config(route(["stack.methods=[avg]"], "stack").stack, ROOT / "configs" / "stack.yaml")
    with pytest.raises(ConfigError, match="eps_grid"):
        load(ROOT / "configs" / "stack.yaml", StackConfig, ["eps_grid=[0.7]"])


def test_cli_stack_end_to_end_without_torch_or_tensorflow(tmp_path):
    """`competition stack` on JSON data through the real loader, band statistics included; the
    process must not import torch or TensorFlow."""
    comp = make_competition(tmp_path, n_train=100, n_test=40, k=3, seed=2, via_json=True)
    for j, (strength, noise) in enumerate(PREDICTORS[:2]):
        write_predictor(comp, f"m{j}", strength, noise, seed=j)
    args = [
        "stack", f"data_dir={comp.cfg.data_dir}", f"work_dir={comp.cfg.work_dir}", f"runs_dir={comp.cfg.runs_dir}", f"submissions_dir={comp.cfg.submissions_dir}",
        "folds.k=3", "folds.seed=2", "stack.stacker.n_trials=3", "stack.stacker.inner_folds=2", "stack.stacker.max_rounds=100",
        "stack.methods=[mean, weights, lgbm]",
    ]  # fmt: skip
    code = (
        "import sys\nfrom competition.cli import app\n"
        f"app({args!r}, standalone_mode=False)\n"
        "print('HEAVY', sorted(m for m in ('torch', 'tensorflow') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "HEAVY []" in done.stdout
    summary = read_summary(comp.cfg.runs_dir / "baseline" / "stack")
    assert set(summary.methods) == {"single:m0", "single:m1", "mean", "weights", "lgbm"}
    assert "Optuna search" in done.stderr and "nested CV log loss" in done.stderr
    assert f"chosen by hedge: {summary.choice.reason}" in " ".join(done.stderr.split())
    assert validate_submission(summary.submission, comp.cfg.sample_submission) == 40
    importances = pd.read_csv(comp.cfg.runs_dir / "baseline" / "stack" / "importances.csv")
    assert any(f.startswith("band_") for f in importances["feature"])


def test_hedge_rule_submits_and_records_the_mean_of_the_methods_the_cv_cannot_tell_apart(tmp_path):
    """Two runs of the same strength: their blends and singles are within noise of each other, so the `hedge`
    rule submits their row-wise mean, recorded as method `hedge` beside the others."""
    comp = make_competition(tmp_path, n_train=120, n_test=40, k=4, seed=3)
    for j in range(2):
        write_predictor(comp, f"m{j}", 0.8, 1.5, seed=20 + j)
    scfg = StackConfig(methods=["mean", "weights"], choice="hedge")
    summary = run_stack(comp.cfg, scfg, comp.train, comp.test)
    assert summary.choice is not None and summary.choice.rule == "hedge" and summary.chosen.method == "hedge"
    members = summary.choice.candidates
    assert len(members) >= 2 and set(members) <= {"single:m0", "single:m1", "mean", "weights"}
    tables = comp.cfg.runs_dir / "baseline" / "stack"
    test, oof = pd.read_csv(tables / "test.csv"), pd.read_csv(tables / "oof.csv")
    assert np.allclose(test["hedge"], test[members].mean(axis=1)) and np.allclose(oof["hedge"], oof[members].mean(axis=1))
    submitted = pd.read_csv(summary.submission)
    assert np.allclose(submitted.set_index("id").loc[test["id"], "is_iceberg"], test["hedge"])
    assert summary.methods["hedge"].kind == "blend" and summary.choice.reason.startswith("hedge: the mean of ")
