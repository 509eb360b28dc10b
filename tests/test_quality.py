"""The quality benchmark's driver on tiny simulated data: tiny timm recipes, the blenders and the stacker."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from competition.bench.quality import END, QUALITY_CONFIG, START, QualityConfig, all_recipes, choose_budget, cv_against_private, run_quality, select
from competition.config import CompetitionConfig, FoldsConfig, SimulateConfig, load
from competition.errors import ConfigError
from competition.stacking.summary import read_summary
from sklearn.metrics import log_loss

pytestmark = pytest.mark.slow

MODEL = "mobilenetv3_small_050"  # a timm architecture by name, random init
ARGS = [
    "budget=quick", "recipes=[b,c]", f"grid.models=[{MODEL}]", "grid.policies=[head,top:2,auto]",  # (b) resnet10t + (c) 3 policies
    "weights=none", "channels=[hh,hv]", "image_size=32", "head.hidden=[8]", "save_models=false",
    "stack.stacker.n_trials=2", "stack.stacker.inner_folds=2", "stack.features.band_stats=false",
    "budgets.quick.patience={classic: 5, scratch: 4, head: 3, top: 2, all_but_stem: 2, all: 2, auto: 1}",
]  # fmt: skip
OTHER = "<!-- trainer-bench:start -->\n## Trainer\n\n| a | b |\n| --- | --- |\n| 1 | 2 |\n<!-- trainer-bench:end -->\n"


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Simulated data with a 3-fold folds file, then the benchmark twice (the second resumes every unit)."""
    from competition.data.loader import load_train
    from competition.folds import write_folds
    from competition.simulate import write_simulated

    root = tmp_path_factory.mktemp("quality")
    cfg = CompetitionConfig(
        data_dir=root / "data", runs_dir=root / "runs", submissions_dir=root / "subs",
        simulate=SimulateConfig(n_train=60, n_test=30, seed=5), folds=FoldsConfig(k=3),
    )  # fmt: skip
    write_simulated(cfg)
    write_folds(load_train(cfg), cfg)
    folds_before = cfg.folds_json.read_text()
    docs = root / "benchmarks.md"
    docs.write_text(f"# Benchmarks\n\nIntro.\n\n{OTHER}")
    args = [*ARGS, f"output={docs}"]
    other_folds = cfg.model_copy(update={"folds": FoldsConfig(k=5)})  # must not rewrite the 3-fold file
    first = run_quality(other_folds, args)
    docs_first = docs.read_text()
    second = run_quality(other_folds, args)
    return {"cfg": cfg, "first": first, "second": second, "docs": docs, "docs_first": docs_first, "folds_before": folds_before}


def _meta(row: dict[str, Any]) -> dict[str, Any]:
    return json.loads((Path(row["run_dir"]) / "meta.json").read_text())


def _private(cfg: CompetitionConfig, ids: pd.Series, pred: pd.Series, usage: str) -> float:
    """Independent check: sklearn's log loss on the solution's rows of one leaderboard."""
    sol = pd.read_csv(cfg.solution_csv, dtype={"id": str})
    rows = sol[sol["Usage"] == usage]
    p = pd.Series(pred.to_numpy(), index=ids.to_numpy()).loc[rows["id"]].to_numpy()
    return float(log_loss(rows["is_iceberg"].to_numpy(), p, labels=[0, 1]))


def test_every_recipe_row_matches_its_run_and_the_hidden_solution(bench: dict[str, Any]) -> None:
    cfg, result = bench["cfg"], bench["first"]
    assert [r["name"] for r in result["recipes"]] == ["scratch-resnet10t", f"{MODEL}-head", f"{MODEL}-top2", f"{MODEL}-auto"]
    for row in result["recipes"]:
        meta = _meta(row)
        assert row["cv_logloss"] == meta["cv_logloss"]
        assert meta["folds_fingerprint"] == result["folds"]["fingerprint"]
        assert row["units"] == 3 and row["epochs"] == meta["config"]["model"]["train"]["epochs"]
        assert Path(row["run_dir"]) == cfg.runs_dir / "quality" / row["name"]  # a named run: runs/<experiment>/<recipe>/
        assert meta["run_name"] == row["name"] and meta["model"] == row["model"]
        test = pd.read_csv(Path(row["run_dir"]) / "test.csv", dtype={"id": str})
        for usage in ("Private", "Public"):
            assert row[usage.lower()] == pytest.approx(_private(cfg, test["id"], test["mean"], usage), rel=1e-6)
    by_name = {r["name"]: r for r in result["recipes"]}
    assert by_name["scratch-resnet10t"]["epochs"] == 1 and by_name[f"{MODEL}-head"]["epochs"] == 4  # the quick budget
    patience = {name: _meta(row)["config"]["model"]["train"]["patience"] for name, row in by_name.items()}
    assert patience == {"scratch-resnet10t": 4, f"{MODEL}-head": 3, f"{MODEL}-top2": 2, f"{MODEL}-auto": 1}  # per recipe kind
    assert "rotate, zoom (on images)" in by_name["scratch-resnet10t"]["augment"]  # the classic augmentation
    assert {r["policy_requested"] for r in result["recipes"]} == {"all", "head", "top:2", "auto"}
    assert result["skipped"] == ["classic-vgg16_angle"]
    assert not (cfg.runs_dir / "baseline").exists()


def test_blenders_and_stacker_are_scored_on_the_grid_runs(bench: dict[str, Any]) -> None:
    cfg, result = bench["cfg"], bench["first"]
    stack = cfg.runs_dir / "quality" / "stack"
    summary = read_summary(stack)
    assert summary.runs == [f"{MODEL}-head", f"{MODEL}-top2", f"{MODEL}-auto"]  # (c) only, named after the recipes
    expected = {name for name, rec in summary.methods.items() if rec.kind != "single"}
    assert {m["name"] for m in result["methods"]} == expected and "lgbm" in expected and "caruana" in expected
    preds = pd.read_csv(stack / "test.csv", dtype={"id": str})
    for m in result["methods"]:
        assert m["cv_logloss"] == summary.methods[m["name"]].cv_mean
        assert m["private"] == pytest.approx(_private(cfg, preds["id"], preds[m["name"]], "Private"), rel=1e-6)
    assert not any(cfg.submissions_dir.glob("*.csv"))  # kept out of submissions/ (what `make submit` sends)
    assert len(list((cfg.runs_dir / "quality" / "submissions").glob("*_quality_*.csv"))) == 2  # the stack's own pick, twice


def test_auto_verdict_names_the_winner_and_the_choice(bench: dict[str, Any]) -> None:
    result = bench["first"]
    (verdict,) = result["auto"]
    rows = {r["policy_requested"]: r for r in result["recipes"] if r["group"] == "c"}
    assert verdict["auto_chose"] == _meta(rows["auto"])["policy"]
    concrete = [r for r in rows.values() if r["policy_requested"] != "auto"]
    assert verdict["benchmarked"] == ["head", "top:2"]
    assert verdict["best_by_cv"] == min(concrete, key=lambda r: r["cv_logloss"])["policy"]
    assert verdict["best_by_private"] == min(concrete, key=lambda r: r["private"])["policy"]
    assert verdict["auto_chose"] == "all" and "random init" in verdict["auto_reason"]  # weights=none: nothing to keep
    assert verdict["auto_picks_cv_best"] is None  # `all` was not benchmarked, so no verdict either way


def test_cv_against_private_gives_the_median_gap_and_spearman_of_every_scored_row(bench: dict[str, Any]) -> None:
    result = bench["first"]
    scored = [r for r in result["recipes"] + result["methods"] if r["private"] is not None]
    fit = result["cv_vs_private"]
    assert fit["rows"] == len(scored) >= 3
    gaps = sorted(r["private"] - r["cv_logloss"] for r in scored)
    assert fit["median_gap"] == pytest.approx(float(pd.Series(gaps).median()))
    assert "CV against the hidden private score over" in bench["docs_first"] and "Spearman" in bench["docs_first"]


def test_cv_against_private_by_hand() -> None:
    rows = [{"cv_logloss": cv, "private": p} for cv, p in [(0.20, 0.22), (0.30, 0.29), (0.40, 0.45), (0.50, None)]]
    fit = cv_against_private(rows)
    assert fit is not None and fit["rows"] == 3
    assert fit["median_gap"] == pytest.approx(0.02) and fit["median_abs_gap"] == pytest.approx(0.02) and fit["spearman"] == pytest.approx(1.0)
    rows[2]["private"] = 0.21  # ranks 2, 3, 1 against 1, 2, 3
    assert cv_against_private(rows)["spearman"] == pytest.approx(-0.5)
    assert cv_against_private(rows[:2]) is None  # too few pairs to say anything


def test_table_is_best_first_and_the_docs_section_is_replaced_not_duplicated(bench: dict[str, Any]) -> None:
    docs = bench["docs"].read_text()
    assert docs.count(START) == 1 and docs.count(END) == 1
    assert OTHER in docs and docs.startswith("# Benchmarks\n\nIntro.\n")  # the other section is kept as it was
    assert bench["docs_first"].count(START) == 1
    section = docs.split(START, 1)[1].split(END, 1)[0]
    assert "competition bench-quality budget=quick" in section and "Budget `quick`, trainer profile `cpu`" in section
    rows = [line.split(" | ") for line in section.splitlines() if line.startswith("| (")]
    assert len(rows) == len(bench["second"]["recipes"]) + len(bench["second"]["methods"])
    private = [float(r[5]) for r in rows]
    assert private == sorted(private)


def test_a_rerun_resumes_every_unit_and_keeps_the_folds_file(bench: dict[str, Any]) -> None:
    cfg, first, second = bench["cfg"], bench["first"], bench["second"]
    assert cfg.folds_json.read_text() == bench["folds_before"]
    assert first["folds"]["k"] == 3
    for a, b in zip(first["recipes"], second["recipes"], strict=True):
        assert _meta(b)["trained_this_run"] == []
        assert (a["cv_logloss"], a["private"]) == (b["cv_logloss"], b["private"])
    saved = json.loads((cfg.runs_dir / "quality" / "quality.json").read_text())
    assert saved["recipes"] == json.loads(json.dumps(second["recipes"]))


def test_recipe_selection_rejects_unknown_names() -> None:
    q = load(QUALITY_CONFIG, QualityConfig)
    recipes = all_recipes(q)
    assert len(recipes) == 2 + len(q.grid.models) * len(q.grid.policies)
    assert [r.name for r in select(recipes, ["a", "mobilenetv2_100-top2"], [])] == ["classic-vgg16_angle", "mobilenetv2_100-top2"]
    assert all(r.model != "vgg16_angle" for r in select(recipes, ["grid"], ["vgg16_angle"]))
    with pytest.raises(ConfigError, match="unknown recipe"):
        select(recipes, ["vgg19-head"], [])
    assert {r.group for r in select(recipes, ["c"], [])} == {"c"}
    with pytest.raises(ConfigError, match="no budget 'tpu'"):
        choose_budget(load(QUALITY_CONFIG, QualityConfig, ["budget=tpu"]))
