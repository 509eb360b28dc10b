"""The engine benchmark (competition/bench/engine.py): the plan's simple models, the plan on a real local Ray with
fake GPUs (every unit placed, never more GPU share held than there is, no faster than the lower bound), and the
overhead section written from given figures."""

from __future__ import annotations

from pathlib import Path

import pytest
from competition.bench.doc import replace_section
from competition.bench.engine import (
    BENCH_ENGINE_CONFIG,
    BenchEngineConfig,
    OverheadConfig,
    PlanConfig,
    PlannedUnit,
    Scenario,
    flow_overrides,
    gpu_unit,
    list_schedule,
    lower_bound,
    markers,
    overhead_figures,
    overhead_markdown,
    plan_part,
    planned_units,
    predictions,
)
from competition.config import load
from competition.errors import ConfigError

from stack_data import make_competition, write_predictor


def unit(key: str, seconds: float, gpus: float = 1.0, cpus: float = 1.0, model: str = "m") -> PlannedUnit:
    return PlannedUnit(key, model, seconds, gpus, cpus)


def test_lpt_on_a_known_instance_and_the_bound() -> None:
    # Graham's example: 2 machines, jobs 3,3,2,2,2: LPT gives 7, the optimum is 6 (3+3 | 2+2+2), the bound 6
    units = [unit(str(i), s) for i, s in enumerate([3, 3, 2, 2, 2])]
    assert list_schedule(units, gpus=2, cpus=2) == 7
    assert lower_bound(units, gpus=2) == 6
    assert list_schedule(units[::-1], gpus=2, cpus=2) == 7  # in that order: 2,2 | 2,3 | 3 -> 2+3=5 on one, 2+2+3=7 on the other


def test_fractional_units_share_a_gpu_and_cpus_bind() -> None:
    quarter = [unit(str(i), 4.0, gpus=0.25, cpus=0.25) for i in range(8)]
    assert list_schedule(quarter, gpus=1, cpus=1) == 8.0  # four at once on the one GPU, two waves
    assert list_schedule(quarter, gpus=2, cpus=1) == 8.0  # the CPUs allow only four at once
    assert list_schedule(quarter, gpus=2, cpus=2) == 4.0
    with pytest.raises(ValueError, match="more than one GPU"):
        list_schedule([unit("big", 1.0, gpus=1.5)], gpus=2, cpus=2)


def test_a_batch_per_model_waits_between_models() -> None:
    units = [unit(f"a{i}", 1.0, model="a") for i in range(3)] + [unit(f"b{i}", 1.0, model="b") for i in range(3)]
    together, per_model = predictions(units, "all", 4, 4), predictions(units, "model", 4, 4)
    assert together["lpt_s"] == 2.0 and per_model["lpt_s"] == 2.0 and together["sequential_s"] == 6.0
    assert predictions(units, "all", 6, 6)["lpt_s"] == 1.0 and predictions(units, "model", 6, 6)["lpt_s"] == 2.0


def test_planned_units_cycle_the_measured_runs_and_units() -> None:
    pc = PlanConfig(models=3, folds=2, seeds=2, gpus=4, cpus=8, small=["a"], scenarios=[Scenario(small_gpus=0.5)])
    units = planned_units({"a": [1.0, 2.0], "b": [10.0, 20.0]}, pc, small_gpus=0.5)
    assert [u.key for u in units[:4]] == ["a/f0_s0", "a/f0_s1", "a/f1_s0", "a/f1_s1"]
    assert [u.seconds for u in units] == [1.0, 1.0, 2.0, 2.0, 10.0, 10.0, 20.0, 20.0, 1.0, 1.0, 2.0, 2.0]
    assert {u.model for u in units} == {"a", "b", "a#2"}
    assert [(u.gpus, u.cpus) for u in units if u.model == "b"][0] == (1.0, 2.0) and units[0].gpus == 0.5 and units[0].cpus == 1.0


@pytest.mark.slow  # a local Ray and its workers: ~40 s on the busy 2-core machine
def test_the_plan_on_a_local_ray_with_eight_fake_gpus(tmp_path: Path) -> None:
    comp = make_competition(tmp_path, n_train=30, n_test=8, k=3)
    for name, seconds in (("small", [4.0, 5.0, 6.0]), ("big", [8.0, 12.0, 10.0])):
        units = [f"r0_f{f}_s0" for f in range(3)]
        timings = {"units": {u: {"setup_s": 1.0, "cache_s": 0.0, "fit_s": s - 1.5, "predict_s": 0.5} for u, s in zip(units, seconds, strict=True)}}
        write_predictor(comp, name, 1.0, 1.0, seed=1, timings=timings)
    plan = PlanConfig(
        runs=comp.cfg.runs_dir / "baseline", models=3, folds=3, seeds=2, gpus=8, cpus=8, scale=40.0, small=["small"],
        scenarios=[Scenario(small_gpus=0.5), Scenario(small_gpus=1.0, batch="model")],
    )  # fmt: skip
    output = tmp_path / "benchmarks.md"
    output.write_text("# Benchmarks\n\nkept\n")
    bc = BenchEngineConfig(experiment="bench", output=output, plan=plan, overhead=OverheadConfig(presets={"full": []}))
    result = plan_part(comp.cfg, bc, {"command": "test", "created": "now", "machine": "here"})

    for s in result["scenarios"]:
        assert s["units"] == 18 and len(s["records"]) == 18
        assert all(r["gpu_ids"] and r["node"] for r in s["records"])  # every unit placed on a GPU of the node
        assert s["peak_gpus"] <= 8 + 1e-9 and s["peak_per_gpu"] <= 1 + 1e-9  # never more held than there is
        assert s["ray_s"] >= s["lower_bound_s"] - 1e-6 and s["lpt_s"] >= s["lower_bound_s"] - 1e-9
        assert s["sequential_s"] == pytest.approx(2 * (30 + 15 + 30))  # runs in name order: big, small, big again
    half = result["scenarios"][0]
    assert {r["gpus"] for r in half["records"]} == {0.5, 1.0}
    folder = comp.cfg.runs_dir / "bench" / "engine"
    assert (folder / "plan.json").is_file() and (folder / "plan.png").read_bytes()[:4] == b"\x89PNG"
    text = output.read_text()
    start, end = markers("plan")
    assert "kept" in text and text.count(start) == 1 and text.count(end) == 1
    assert "small models 0.5 GPU, one batch | 18 |" in text and "CPU machine and stand in for GPU unit times" in text and "parts=[gpu]" in text


def test_the_overhead_section_from_given_figures(tmp_path: Path) -> None:
    run = {"steps": [["data", 5.0], ["train mobilenetv2_100", 100.0]], "models": {"mobilenetv2_100": 0.25}, "stack": {"chosen": "mean", "cv": 0.24}}
    fig = overhead_figures([{**run, "engine": "local", "wall_s": 200.0, "units_s": 150.0}, {**run, "engine": "ray", "wall_s": 212.0, "units_s": 160.0}])
    assert fig["ratio"] == pytest.approx(1.06) and not fig["holds"]
    assert fig["equalised_ratio"] == pytest.approx((212 - 160 + 150) / 200) and fig["equalised_holds"]  # 1.01: the units ran slower, not the engine
    section = overhead_markdown(
        fig, {"command": "competition bench-engine overhead.preset=quick", "created": "now", "machine": "2 cores"}, "quick", ["epochs=2"]
    )
    assert "| ray | quick | 212 s | 160 s | 52 s | data 5, train mobilenetv2_100 100 | mobilenetv2_100 0.2500 | 0.2400 |" in section
    assert (
        "Ratio ray / local: **1.060** (target at most 1.05: **FAILS**); with the units' own time equalised: **1.010** (**holds**)" in section
        and "Preset `quick` (overrides: epochs=2)" in section
    )
    path = tmp_path / "benchmarks.md"
    path.write_text("# Benchmarks\n\n<!-- ladder:start -->\nladder\n<!-- ladder:end -->\n")
    replace_section(path, *markers("overhead"), section)
    replace_section(path, *markers("overhead"), section.replace("1.060", "0.990"))
    text = path.read_text()
    assert "ladder" in text and text.count("Ratio ray / local") == 1 and "0.990" in text


def test_the_config_file_and_a_preset_it_lacks(tmp_path: Path) -> None:
    bc = load(BENCH_ENGINE_CONFIG, BenchEngineConfig, [])
    assert bc.plan.models * bc.plan.folds * bc.plan.seeds == 75 and bc.plan.gpus == 8 and "quick" in bc.overhead.presets
    with pytest.raises(ConfigError, match=r"bench_engine.yaml.*overhead.*preset 'fast' is not one of presets: full, quick, small"):
        load(BENCH_ENGINE_CONFIG, BenchEngineConfig, ["overhead.preset=fast"])
    keys = set(BenchEngineConfig.model_fields)
    assert flow_overrides(["parts=[overhead]", "overhead.preset=quick", "epochs=3", "stack.seed=1"], keys) == ["epochs=3", "stack.seed=1"]


@pytest.mark.slow  # timm's import and a network: ~20 s on the busy 2-core machine
def test_a_gpu_unit_runs_on_the_cpu_in_its_tiny_mode() -> None:
    out = gpu_unit("mobilenetv3_small_050", image_size=32, batch_size=4, steps=2)
    assert out["seconds"] > 0 and out["device"] == "cpu" and out["peak_bytes"] is None
