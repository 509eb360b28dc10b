"""`competition bench-engine`: what `engine=ray` costs on this machine and what it would do at scale (issue 14).

Three parts (configs/bench_engine.yaml `parts`), each writing its own section of docs/benchmarks.md and
its figures under runs/<experiment>/engine/:

- `plan`: the scheduler's plan for many units on one node of GPUs, with fake resources (Ray only
  counts them). Each planned unit sleeps its measured time (`timings.units` of a finished run's
  meta.json: setup + cache + fit + predict) divided by `plan.scale`, holding its GPU share. Ray's makespan
  (scaled back) is set against list scheduling of the same times (longest first, LPT; and in submission
  order), the lower bound max(sum of GPU-seconds / GPUs, longest unit) and the sequential sum; a Gantt
  chart shows where Ray put each unit. The sleeping units are plain Ray tasks in reused, pre-started worker
  processes, not `RayEngine` tasks (a fresh process per unit, seconds each on this machine, which the scale
  would multiply): the plan is about placement; the engine's own cost per unit is the overhead part's.
- `overhead`: the same `competition all` work with engine=local and then engine=ray (a local Ray the
  harness starts), each from a cold work folder into its own experiment, and the wall-time ratio.
- `gpu`: N units of a timm model at once on one GPU (each holding 1/N of it, through the Ray engine):
  units per hour and each unit's peak GPU memory, to choose the default GPU fraction.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from competition.atomic import atomic_path, write_json
from competition.bench.doc import markdown_table, replace_section
from competition.config import CONFIG_DIR, CompetitionConfig, RayConfig, Strict, load
from competition.console import console, table
from competition.errors import MissingArtefactError, UserError
from competition.overrides import route

BENCH_ENGINE_CONFIG = CONFIG_DIR / "bench_engine.yaml"
PHASES = ("setup_s", "cache_s", "fit_s", "predict_s")  # a unit's measured time: the sum of these (meta.json timings.units)
EPS = 1e-9  # resource arithmetic: fractions such as 0.25 add up exactly, 0.1 does not
Part = Literal["plan", "overhead", "gpu"]


def markers(part: Part) -> tuple[str, str]:
    """The start and end markers of a part's section in docs/benchmarks.md."""
    return f"<!-- engine-{part}:start -->", f"<!-- engine-{part}:end -->"


class Scenario(Strict):
    """One what-if of the plan: the GPU share of a small model's unit, and how units are batched."""

    small_gpus: float = Field(gt=0.0, le=1.0)
    batch: Literal["all", "model"] = "all"

    @property
    def name(self) -> str:
        share = "1 GPU per unit" if self.small_gpus == 1.0 else f"small models {self.small_gpus:g} GPU"
        return f"{share}, {'one batch' if self.batch == 'all' else 'a batch per model'}"


class PlanConfig(Strict):
    """`plan:`: many units on one node of fake GPUs."""

    runs: Path = Path("runs/baseline")
    models: int = Field(5, ge=1)
    folds: int = Field(5, ge=1)
    seeds: int = Field(3, ge=1)
    gpus: int = Field(8, ge=1)
    cpus: int = Field(16, ge=1)
    scale: float = Field(40.0, gt=0.0)
    small: list[str] = Field(default_factory=list)
    scenarios: list[Scenario] = Field(min_length=1)


class OverheadConfig(Strict):
    """`overhead:`: the same flow with engine=local and engine=ray."""

    preset: str = "full"
    presets: dict[str, list[str]] = Field(min_length=1)
    profile: str | None = None

    @model_validator(mode="after")
    def _known_preset(self) -> OverheadConfig:
        if self.preset not in self.presets:
            raise ValueError(f"preset {self.preset!r} is not one of presets: {', '.join(self.presets)}")
        return self


class GpuConfig(Strict):
    """`gpu:`: N concurrent units on one GPU."""

    model: str = "mobilenetv2_100"
    concurrency: list[int] = Field(default_factory=lambda: [1, 2, 4], min_length=1)
    units: int = Field(8, ge=1)
    steps: int = Field(200, ge=1)
    batch_size: int = Field(64, ge=1)
    image_size: int = Field(75, ge=8)

    @field_validator("concurrency")
    @classmethod
    def _positive(cls, values: list[int]) -> list[int]:
        if any(n < 1 for n in values):
            raise ValueError(f"expected concurrent units of at least 1, got {values}")
        return values


class BenchEngineConfig(Strict):
    """configs/bench_engine.yaml."""

    experiment: str = "engine"
    parts: list[Part] = Field(["plan", "overhead"], min_length=1)
    output: Path = Path("docs/benchmarks.md")
    plan: PlanConfig
    overhead: OverheadConfig
    gpu: GpuConfig = GpuConfig()


# ---------------------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class PlannedUnit:
    """One unit of the plan: `seconds` of work (unscaled) holding `gpus` GPUs and `cpus` CPUs."""

    key: str
    model: str
    seconds: float
    gpus: float
    cpus: float


def unit_seconds(timings: dict[str, float]) -> float:
    """A unit's measured time: the sum of its PHASES (seconds; a phase it lacks counts 0)."""
    return sum(float(timings.get(phase, 0.0)) for phase in PHASES)


def measured_times(experiment_dir: Path) -> dict[str, list[float]]:
    """Every finished run of `experiment_dir` (a folder with meta.json) -> its units' times in seconds, in the meta's unit order.

    Raises MissingArtefactError when the folder holds no finished run (read through `store.load_run`).
    """
    from competition.training.store import META_FILE, load_run

    out = {}
    for run_dir in sorted(p for p in experiment_dir.iterdir() if (p / META_FILE).is_file()) if experiment_dir.is_dir() else []:
        meta = load_run(run_dir).meta
        out[run_dir.name] = [unit_seconds(meta.timings.units[u]) for u in meta.units if u in meta.timings.units]
    if not any(out.values()):
        raise MissingArtefactError(f"{experiment_dir}: no finished run with unit timings (plan.runs names an experiment folder of `make all`)")
    return out


def planned_units(times: dict[str, list[float]], pc: PlanConfig, small_gpus: float) -> list[PlannedUnit]:
    """`pc.models` x `pc.folds` x `pc.seeds` units in submission order (model by model, fold by fold, seed by seed).

    Planned model i takes the times of measured run i mod (number of runs) (a second use is named `<run>#2`);
    its fold f, seed s takes the run's measured unit number (f + folds * s) mod (its units), so with one measured
    seed every seed of a fold takes that fold's time. A small model's unit holds `small_gpus`, others 1 GPU;
    CPUs are the node's, split in proportion to the GPU share.
    """
    runs = [name for name, t in times.items() if t]
    units = []
    for i in range(pc.models):
        run = runs[i % len(runs)]
        model = run if i < len(runs) else f"{run}#{i // len(runs) + 1}"
        gpus = small_gpus if run in pc.small else 1.0
        for f in range(pc.folds):
            for s in range(pc.seeds):
                seconds = times[run][(f + pc.folds * s) % len(times[run])]
                units.append(PlannedUnit(f"{model}/f{f}_s{s}", model, seconds, gpus, pc.cpus * gpus / pc.gpus))
    return units


def lower_bound(units: Sequence[PlannedUnit], gpus: int) -> float:
    """No schedule on `gpus` GPUs ends sooner: max(GPU-seconds / gpus, longest unit) (seconds)."""
    return max(sum(u.seconds * u.gpus for u in units) / gpus, max(u.seconds for u in units))


def list_schedule(units: Sequence[PlannedUnit], gpus: int, cpus: float) -> float:
    """The makespan (seconds) of greedy list scheduling in the given order (Graham 1969; LPT when sorted longest first).

    Whenever resources free up, every waiting unit, in order, starts if one GPU has its share left (the fullest
    such GPU, as a packer would) and the node its CPUs. Unit durations do not depend on sharing (an
    optimistic assumption for fractional GPUs).
    """
    free = [1.0] * gpus
    cpu_free = float(cpus)
    waiting = list(units)
    running: list[tuple[float, int, PlannedUnit]] = []
    now = 0.0
    while waiting or running:
        for u in list(waiting):
            fits = [g for g in range(gpus) if free[g] >= u.gpus - EPS]
            if fits and cpu_free >= u.cpus - EPS:
                g = min(fits, key=lambda k: free[k])
                free[g] -= u.gpus
                cpu_free -= u.cpus
                running.append((now + u.seconds, g, u))
                waiting.remove(u)
        if not running:
            raise ValueError(f"a unit needs more than one GPU or more than {cpus} CPUs: {waiting[0]}")
        running.sort(key=lambda r: r[0])
        now, g, u = running.pop(0)
        free[g] += u.gpus
        cpu_free += u.cpus
    return now


def batches(units: Sequence[PlannedUnit], batch: Literal["all", "model"]) -> list[list[PlannedUnit]]:
    """The units as the driver submits them: one batch, or one per model (each waited for before the next)."""
    if batch == "all":
        return [list(units)]
    by_model: dict[str, list[PlannedUnit]] = {}
    for u in units:
        by_model.setdefault(u.model, []).append(u)
    return list(by_model.values())


def predictions(units: Sequence[PlannedUnit], batch: Literal["all", "model"], gpus: int, cpus: float) -> dict[str, float]:
    """The simple models' wall times (seconds): LPT and submission-order list scheduling per batch, summed over
    batches; the lower bound (of one batch) and the sequential sum."""
    parts = batches(units, batch)
    return {
        "lpt_s": sum(list_schedule(sorted(b, key=lambda u: -u.seconds), gpus, cpus) for b in parts),
        "in_order_s": sum(list_schedule(b, gpus, cpus) for b in parts),
        "lower_bound_s": lower_bound(units, gpus),
        "sequential_s": sum(u.seconds for u in units),
    }


def sleep_unit(seconds: float) -> dict[str, Any]:
    """A planned unit in a Ray worker: sleep `seconds`; return when it ran (epoch seconds), on which node, GPUs and process."""
    import ray

    started = time.time()
    time.sleep(seconds)
    ended = time.time()
    context = ray.get_runtime_context()
    gpu_ids = [str(g) for g in context.get_accelerator_ids().get("GPU", [])]
    return {"start": started, "end": ended, "node": context.get_node_id()[:8], "gpu_ids": gpu_ids, "pid": os.getpid()}


def run_on_ray(units: Sequence[PlannedUnit], batch: Literal["all", "model"], scale: float) -> tuple[float, list[dict[str, Any]]]:
    """Run the units as sleeping Ray tasks on the Ray this process is connected to, batch after batch.

    Returns the makespan (seconds, scaled back: from the first submission to the last result) and one record
    per unit: its key, model, GPU share, start and end (scaled back, from the first submission), node, GPU ids.
    """
    import ray

    remote = ray.remote(sleep_unit)
    records = []
    t0 = time.time()
    for part in batches(units, batch):
        refs = [remote.options(num_gpus=u.gpus, num_cpus=u.cpus, max_retries=0).remote(u.seconds / scale) for u in part]
        for u, r in zip(part, ray.get(refs), strict=True):
            records.append({"key": u.key, "model": u.model, "gpus": u.gpus, **r, "start": (r["start"] - t0) * scale, "end": (r["end"] - t0) * scale})
    return (time.time() - t0) * scale, records


def peak_load(records: Sequence[dict[str, Any]]) -> tuple[float, float]:
    """From recorded intervals: the most GPU share held at once on the node, and on any one GPU id.

    A unit holding g GPUs with ids [i] counts g on GPU i; one holding whole GPUs counts 1 on each id it got.
    """
    events = sorted([(r["start"], 1, r) for r in records] + [(r["end"], -1, r) for r in records], key=lambda e: (e[0], e[1]))
    node, per_gpu, most_node, most_gpu = 0.0, dict[str, float](), 0.0, 0.0
    for _, sign, r in events:
        share = r["gpus"] / max(len(r["gpu_ids"]), 1)
        node += sign * r["gpus"]
        for g in r["gpu_ids"]:
            per_gpu[g] = per_gpu.get(g, 0.0) + sign * share
        most_node = max(most_node, node)
        most_gpu = max([most_gpu, *per_gpu.values()])
    return most_node, most_gpu


def start_local_ray(num_cpus: int, num_gpus: int, workers: int) -> None:
    """A new local Ray with these (fake) resources for this process, keeping up to `workers` idle worker processes.

    `address="local"`: without it `ray.init` joins a Ray already running on the machine (e.g. another user's), which
    refuses resource counts. Ray keeps `num_cpus` idle workers by default and ends the others after a second idle,
    so fractional units beyond the CPU count would each wait for a fresh process.
    """
    import ray

    ray.init(
        address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
        _system_config={"num_workers_soft_limit": workers},
    )  # fmt: skip


def concurrency(pc: PlanConfig) -> int:
    """The most units the busiest scenario can run at once: GPUs / the smallest GPU share."""
    return int(pc.gpus / min(s.small_gpus for s in pc.scenarios) + EPS)


def warm_up(pc: PlanConfig, waves: int = 5) -> None:
    """Start the worker processes the busiest scenario needs before anything is timed (one takes seconds to start on a
    busy machine, which `scale` would multiply): waves of that many 1 s units until every unit ran in its own process."""
    share = min(s.small_gpus for s in pc.scenarios)
    units = [PlannedUnit(f"warm-up {i}", "warm-up", 1.0, share, pc.cpus * share / pc.gpus) for i in range(concurrency(pc))]
    for _ in range(waves):
        if len({r["pid"] for r in run_on_ray(units, "all", 1.0)[1]}) == len(units):
            return


def run_plan(pc: PlanConfig, times: dict[str, list[float]]) -> dict[str, Any]:
    """Every scenario of `pc` on one local Ray with `pc.cpus` CPUs and `pc.gpus` fake GPUs; the figures per scenario."""
    import ray

    start_local_ray(pc.cpus, pc.gpus, concurrency(pc))
    try:
        warm_up(pc)
        scenarios = []
        for sc in pc.scenarios:
            units = planned_units(times, pc, sc.small_gpus)
            makespan, records = run_on_ray(units, sc.batch, pc.scale)
            most_node, most_gpu = peak_load(records)
            scenarios.append({
                "name": sc.name, "small_gpus": sc.small_gpus, "batch": sc.batch, "units": len(units), "ray_s": makespan,
                **predictions(units, sc.batch, pc.gpus, pc.cpus), "peak_gpus": most_node, "peak_per_gpu": most_gpu,
                "nodes": sorted({r["node"] for r in records}), "records": records,
            })  # fmt: skip
    finally:
        ray.shutdown()
    return {"config": pc.model_dump(mode="json"), "measured": times, "scenarios": scenarios}


def gantt(plan: dict[str, Any], path: Path) -> None:
    """A Gantt chart per scenario: one lane per GPU share (GPU id, then lanes within it), a colour per model (PNG at `path`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = plan["scenarios"]
    models = list(dict.fromkeys(r["model"] for s in scenarios for r in s["records"]))
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(models)}
    fig, axes = plt.subplots(len(scenarios), 1, figsize=(12, 3.2 * len(scenarios)), squeeze=False)
    for ax, s in zip(axes[:, 0], scenarios, strict=True):
        labels = []
        for y, (gpu, lane) in enumerate(lanes(s["records"])):
            labels.append(f"GPU {gpu}" + (f".{lane[0]}" if lane[0] else ""))
            for r in lane[1]:
                ax.barh(y, r["end"] - r["start"], left=r["start"], color=colours[r["model"]], edgecolor="white", linewidth=0.5)
        ax.set_yticks(range(len(labels)), labels, fontsize=6)
        ax.invert_yaxis()
        ax.set_title(f"{s['name']}: Ray {s['ray_s'] / 60:.1f} min, LPT {s['lpt_s'] / 60:.1f} min, bound {s['lower_bound_s'] / 60:.1f} min", fontsize=9)
        ax.set_xlabel("seconds (measured unit times; CPU times standing in for GPU times)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[m]) for m in models]
    fig.legend(handles, models, loc="lower center", ncol=len(models), fontsize=8)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def lanes(records: Sequence[dict[str, Any]]) -> list[tuple[str, tuple[int, list[dict[str, Any]]]]]:
    """Records grouped by GPU id and, within one GPU, into lanes of non-overlapping intervals (interval partitioning)."""
    by_gpu: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        for g in r["gpu_ids"] or ["-"]:
            by_gpu.setdefault(g, []).append(r)
    out = []
    for gpu in sorted(by_gpu, key=lambda g: (len(g), g)):
        ends: list[float] = []
        rows: list[list[dict[str, Any]]] = []
        for r in sorted(by_gpu[gpu], key=lambda r: r["start"]):
            lane = next((i for i, e in enumerate(ends) if e <= r["start"] + EPS), None)
            if lane is None:
                ends.append(r["end"])
                rows.append([r])
            else:
                ends[lane] = r["end"]
                rows[lane].append(r)
        out += [(gpu, (i, row)) for i, row in enumerate(rows)]
    return out


PLAN_COLUMNS = ["scenario", "units", "Ray (scaled back)", "LPT", "in submission order", "lower bound", "sequential", "Ray / LPT", "most GPUs held"]


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def plan_rows(plan: dict[str, Any]) -> list[tuple[str, ...]]:
    """One row per scenario: the makespans in minutes, Ray against LPT, the most GPUs held at once."""
    return [
        (s["name"], str(s["units"]), minutes(s["ray_s"]), minutes(s["lpt_s"]), minutes(s["in_order_s"]), minutes(s["lower_bound_s"]),
         minutes(s["sequential_s"]), f"{s['ray_s'] / s['lpt_s']:.2f}", f"{s['peak_gpus']:g}")
        for s in plan["scenarios"]
    ]  # fmt: skip


def plan_markdown(plan: dict[str, Any], meta: dict[str, str], chart: str, gpu_measured: bool) -> str:
    """The plan section of docs/benchmarks.md (`gpu_measured`: whether the docs hold the GPU part's figures)."""
    pc = plan["config"]
    start, end = markers("plan")
    measured = "; ".join(f"{run} {len(t)} units, mean {sum(t) / len(t):.0f} s" for run, t in plan["measured"].items() if t)
    return "\n".join([
        start,
        "## Engine: the scheduler's plan at scale (fake GPUs)",
        "",
        f"Command: `{meta['command']}` ({meta['created']}). Machine: {meta['machine']}. {pc['models']} models x {pc['folds']} folds x "
        f"{pc['seeds']} seeds on one local Ray declaring {pc['gpus']} GPUs and {pc['cpus']} CPUs (Ray only counts them); each unit "
        f"sleeps its measured time / {pc['scale']:g} (setup + cache + fit + predict from `{pc['runs']}`: {measured}; planned models "
        "beyond the measured runs reuse them in turn) holding its GPU share; small models: " + (", ".join(pc["small"]) or "none") + ".",
        "",
        *markdown_table(PLAN_COLUMNS, plan_rows(plan)),
        "",
        "LPT: greedy list scheduling, longest unit first (Graham 1969); in submission order: the same greedy rule in the order "
        "the driver submits (model by model); lower bound: max(GPU-seconds / GPUs, longest unit). A batch per model waits for "
        "every unit of a model before the next model starts (as when each model is trained by its own call). Fractional GPUs "
        "assume a unit runs as fast on a shared GPU as alone (optimistic; the GPU part measures it). "
        f"Gantt chart: `{chart}`.",
        "",
        "Caveat: these unit times were measured on this 2-core CPU machine and stand in for GPU unit times (no GPU here); "
        "the plan's shape, not its seconds, is the point. Ray's time includes its dispatch delays multiplied by the scale."
        + ("" if gpu_measured else " How fast units really run when they share a GPU has not been measured (no GPU so far): "
           "`make bench-engine ARGS=\"parts=[gpu]\"` on a GPU machine."),
        end,
    ]) + "\n"  # fmt: skip


def plan_part(cfg: CompetitionConfig, bc: BenchEngineConfig, meta: dict[str, str]) -> dict[str, Any]:
    """The plan part: run it, write plan.json and plan.png under runs/<experiment>/engine/ and its docs section."""
    folder = cfg.runs_dir / bc.experiment / "engine"
    plan = run_plan(bc.plan, measured_times(bc.plan.runs))
    chart = folder / "plan.png"
    gantt(plan, chart)
    write_json(folder / "plan.json", {**meta, **plan})
    gpu_measured = bc.output.is_file() and markers("gpu")[0] in bc.output.read_text(encoding="utf-8")
    replace_section(bc.output, *markers("plan"), plan_markdown(plan, meta, str(chart), gpu_measured))
    console.print(table("Engine plan: makespans", PLAN_COLUMNS, plan_rows(plan)))
    console.print(f"[green]wrote[/] {folder / 'plan.json'}, {chart} and the plan section of {bc.output}")
    return plan


# ------------------------------------------------------------------------------------------ overhead

ENGINES = ("local", "ray")


def engine_config(cfg: CompetitionConfig, root: Path, engine: str) -> CompetitionConfig:
    """The competition config of one engine's run: its own experiment, cold work folder, submissions and ledger under `root`."""
    return cfg.model_copy(update={"runs_dir": root, "experiment": engine, "work_dir": root / f"work-{engine}", "submissions_dir": root / "submissions"})


def run_flow(cfg: CompetitionConfig, engine: str, overrides: Sequence[str], profile: str | None) -> dict[str, Any]:
    """`competition all` with `engine` from nothing (its experiment and work folder removed first); its wall time, results and
    `units_s`, the units' own time (setup + cache + fit + predict, summed over its runs' units as meta.json records them)."""
    from competition.pipeline import run_all
    from competition.training.store import load_run

    shutil.rmtree(cfg.experiment_dir, ignore_errors=True)
    shutil.rmtree(cfg.work_dir, ignore_errors=True)
    started = time.perf_counter()
    result = run_all(cfg, [*overrides, f"engine={engine}"], profile)
    wall = time.perf_counter() - started
    summary = result["summary"]
    units = [unit_seconds(t) for model in result["models"] for t in load_run(cfg.run_dir(model)).meta.timings.units.values()]
    return {
        "engine": engine, "wall_s": wall, "units_s": sum(units), "steps": [list(s) for s in result["timings"]], "models": result["models"],
        "stack": {"chosen": summary.chosen.method if summary.chosen else None, "cv": summary.chosen.cv_mean if summary.chosen else None},
        "scores": result["scores"],
    }  # fmt: skip


def overhead_figures(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The engines' wall-time ratio ray / local (issue 14's target: at most 1.05), and the same ratio with the units' own time
    equalised (ray's wall time had its units taken as long as local's: what is left is the engine's cost, not the machine's
    load changing between the two runs)."""
    by = {r["engine"]: r for r in runs}
    local, ray = by["local"], by["ray"]
    ratio = ray["wall_s"] / local["wall_s"]
    equalised = (ray["wall_s"] - ray["units_s"] + local["units_s"]) / local["wall_s"]
    return {"runs": list(runs), "ratio": ratio, "equalised_ratio": equalised, "target": 1.05, "holds": ratio <= 1.05, "equalised_holds": equalised <= 1.05}


OVERHEAD_COLUMNS = ["engine", "preset", "wall time", "units' own time", "outside the units", "steps (s)", "models' CV", "stack CV"]


def overhead_rows(fig: dict[str, Any], preset: str) -> list[tuple[str, ...]]:
    """One row per engine: the preset, wall time, the time per step, the CVs (equal when both engines computed the same)."""
    return [
        (r["engine"], preset, f"{r['wall_s']:.0f} s", f"{r['units_s']:.0f} s", f"{r['wall_s'] - r['units_s']:.0f} s", ", ".join(f"{name} {s:.0f}" for name, s in r["steps"]),
         ", ".join(f"{m} {cv:.4f}" for m, cv in r["models"].items()), "-" if r["stack"]["cv"] is None else f"{r['stack']['cv']:.4f}")
        for r in fig["runs"]
    ]  # fmt: skip


def overhead_markdown(fig: dict[str, Any], meta: dict[str, str], preset: str, preset_overrides: Sequence[str]) -> str:
    """The overhead section of docs/benchmarks.md."""
    start, end = markers("overhead")
    verdict = {True: "holds", False: "FAILS"}
    given = " ".join(preset_overrides) or "none: every configured model and the stack, as `make all`"
    return "\n".join([
        start,
        "## Engine: the overhead of engine=ray on this machine",
        "",
        f"Command: `{meta['command']}` ({meta['created']}). Machine: {meta['machine']}; shared with other jobs while it ran, "
        "so the figures are from one run each, measured back to back in one process (local first). Preset "
        f"`{preset}` (overrides: {given}). Each engine runs `competition all` from a cold work folder (data cache, folds) into "
        "its own experiment; engine=ray starts and stops a local Ray inside its time.",
        "",
        *markdown_table(OVERHEAD_COLUMNS, overhead_rows(fig, preset)),
        "",
        f"Ratio ray / local: **{fig['ratio']:.3f}** (target at most {fig['target']:.2f}: **{verdict[fig['holds']]}**); with the units' "
        f"own time equalised: **{fig['equalised_ratio']:.3f}** (**{verdict[fig['equalised_holds']]}**). The units' own time moves with "
        "the machine's load between the two runs; what the engine adds is Ray's start, its worker processes (a kept one per pool "
        "and node, docs/distributed.md; its imports fall in its first unit's own time) and the object store.",
        end,
    ]) + "\n"  # fmt: skip


def overhead_part(cfg: CompetitionConfig, bc: BenchEngineConfig, flow: Sequence[str], meta: dict[str, str]) -> dict[str, Any]:
    """The overhead part: the flow with each engine (`flow`: the command line's overrides for it), overhead.json and the docs section."""
    from competition.pipeline import ensure_data

    oc = bc.overhead
    preset = oc.presets[oc.preset]
    root = cfg.runs_dir / bc.experiment / "overhead"
    ensure_data(route([*preset, *flow], "all").apply_competition(cfg))  # a preset's own simulated data is made before either engine is timed
    runs = []
    for engine in ENGINES:
        console.rule(f"[bold]bench-engine overhead: engine={engine}")
        runs.append(run_flow(engine_config(cfg, root, engine), engine, [*preset, *flow], oc.profile))
    fig = overhead_figures(runs)
    write_json(cfg.runs_dir / bc.experiment / "engine" / "overhead.json", {**meta, "preset": oc.preset, "overrides": [*preset, *flow], **fig})
    replace_section(bc.output, *markers("overhead"), overhead_markdown(fig, meta, oc.preset, [*preset, *flow]))
    console.print(table("Engine overhead", OVERHEAD_COLUMNS, overhead_rows(fig, oc.preset)))
    console.print(f"ratio ray / local: {fig['ratio']:.3f} (target <= {fig['target']})")
    return fig


# ----------------------------------------------------------------------------------------------- gpu


def gpu_unit(model: str, image_size: int, batch_size: int, steps: int) -> dict[str, Any]:
    """One synthetic training unit: `steps` AdamW steps of a timm `model` (random init, 2 bands, 1 logit) on random
    batch_size x 2 x image_size x image_size batches, on CUDA when there is one. Returns its seconds and peak
    GPU memory (bytes, torch.cuda.max_memory_allocated; None on CPU)."""
    import timm
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = timm.create_model(model, pretrained=False, in_chans=2, num_classes=1).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x = torch.randn(batch_size, 2, image_size, image_size, device=device)
    y = torch.randint(0, 2, (batch_size, 1), device=device).float()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.binary_cross_entropy_with_logits(net(x), y).backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {"seconds": time.perf_counter() - started, "peak_bytes": peak, "device": str(device)}


def run_concurrency(gc: GpuConfig, n: int, ray: RayConfig) -> dict[str, Any]:
    """`gc.units` units through the Ray engine, each holding 1/n GPU (n at once on one GPU); units per hour and peak memory."""
    from competition.engine import Resources, Task, open_engine

    results: list[dict[str, Any]] = []
    tasks = [Task(f"{gc.model} #{i}", gpu_unit, (gc.model, gc.image_size, gc.batch_size, gc.steps), Resources(cpus=1.0, gpus=1.0 / n)) for i in range(gc.units)]
    with open_engine("ray", ray) as engine:
        started = time.perf_counter()
        engine.run(tasks, lambda _, r: results.append(r), f"{n} units per GPU")
        wall = time.perf_counter() - started
    peaks = [r["peak_bytes"] for r in results if r["peak_bytes"] is not None]
    return {"n": n, "units": len(results), "wall_s": wall, "units_per_hour": 3600 * len(results) / wall,
            "unit_s": sum(r["seconds"] for r in results) / len(results), "peak_gib": max(peaks) / 2**30 if peaks else None}  # fmt: skip


GPU_COLUMNS = ["units at once", "GPU share", "units per hour", "mean unit time", "peak memory per unit"]


def gpu_rows(fig: dict[str, Any]) -> list[tuple[str, ...]]:
    return [
        (str(r["n"]), f"1/{r['n']}", f"{r['units_per_hour']:.0f}", f"{r['unit_s']:.1f} s", "-" if r["peak_gib"] is None else f"{r['peak_gib']:.2f} GiB")
        for r in fig["rows"]
    ]  # fmt: skip


def gpu_markdown(fig: dict[str, Any], meta: dict[str, str], gc: GpuConfig) -> str:
    """The GPU section of docs/benchmarks.md."""
    start, end = markers("gpu")
    return "\n".join([
        start,
        "## Engine: concurrent units on one GPU",
        "",
        f"Command: `{meta['command']}` ({meta['created']}). Machine: {meta['machine']}. Each unit: {gc.steps} AdamW steps of timm "
        f"`{gc.model}` (random init) on random batches of {gc.batch_size} x 2 x {gc.image_size} x {gc.image_size}, run through the "
        "Ray engine (a fresh worker process per unit) holding 1/N GPU; peak memory: torch.cuda.max_memory_allocated in the unit "
        "(Ray does not cap it).",
        "",
        *markdown_table(GPU_COLUMNS, gpu_rows(fig)),
        end,
    ]) + "\n"  # fmt: skip


def gpu_part(cfg: CompetitionConfig, bc: BenchEngineConfig, meta: dict[str, str]) -> dict[str, Any]:
    """The GPU part (needs CUDA): each concurrency of `gpu.concurrency`, gpu.json and the docs section."""
    import torch

    if not torch.cuda.is_available():
        raise UserError("bench-engine parts=[gpu] needs a CUDA GPU and torch finds none here; run it on the GPU machine")
    fig = {"rows": [run_concurrency(bc.gpu, n, cfg.ray) for n in bc.gpu.concurrency]}
    write_json(cfg.runs_dir / bc.experiment / "engine" / "gpu.json", {**meta, "config": bc.gpu.model_dump(mode="json"), **fig})
    replace_section(bc.output, *markers("gpu"), gpu_markdown(fig, meta, bc.gpu))
    console.print(table("Engine: concurrent units on one GPU", GPU_COLUMNS, gpu_rows(fig)))
    return fig


# ---------------------------------------------------------------------------------------------- entry


def flow_overrides(items: Sequence[str], bench_keys: set[str]) -> list[str]:
    """The command line's items that are not keys of configs/bench_engine.yaml: they go on to `competition all`."""
    return [item for item in items if item.partition("=")[0].strip().split(".")[0] not in bench_keys]


def run_bench_engine(cfg: CompetitionConfig, overrides: Sequence[str] = (), config: Path = BENCH_ENGINE_CONFIG) -> dict[str, Any]:
    """The parts of configs/bench_engine.yaml `parts` (command-line keys of that file win); returns each part's figures."""
    from competition.bench.speed import machine

    routed = route(overrides, "bench-engine", BenchEngineConfig.model_fields)
    cfg = routed.apply_competition(cfg)
    bc = load(config, BenchEngineConfig, routed.quality)
    meta = {"command": " ".join(["competition bench-engine", *overrides]), "created": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine()}
    out: dict[str, Any] = {}
    for part in dict.fromkeys(bc.parts):
        if part == "plan":
            out["plan"] = plan_part(cfg, bc, meta)
        elif part == "overhead":
            out["overhead"] = overhead_part(cfg, bc, flow_overrides(overrides, set(BenchEngineConfig.model_fields)), meta)
        else:
            out["gpu"] = gpu_part(cfg, bc, meta)
    return out
