"""`make all`: the whole flow in one command, with the wall time of every step.

It uses the competition files in `data_dir` when they exist, plain or as Kaggle's archives (real
data after `make data` or a download, an earlier simulation, or a user's own files), says first
which data it runs on, and simulates the embedded default only into a folder that holds none. Every step resumes:
finished folds, training units and Optuna trials are reused, so a second `make all` is quick.
On simulated data the submission is scored offline against the hidden solution; on real data
it is validated and left for `make submit`, since Kaggle counts every submission.

With `engine=local` each model trains in a fresh process of its own (`train_isolated`); with
`engine=ray` the engine is opened once for the whole flow and the models train from this process,
whose units (and the stacker's studies) run in fresh Ray worker processes: this process never
imports torch or TensorFlow to train.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from competition.config import CompetitionConfig
from competition.console import console, table
from competition.engine import Engine, open_engine
from competition.errors import MissingArtefactError
from competition.overrides import route


@dataclass
class Timings:
    """Wall seconds per step, in the order the steps ran."""

    steps: list[tuple[str, float]] = field(default_factory=list)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        console.rule(f"[bold]{name}")
        started = time.perf_counter()
        yield
        self.steps.append((name, time.perf_counter() - started))


def ensure_data(cfg: CompetitionConfig) -> None:
    """Use the competition files in `data_dir` (plain or archived); simulate the embedded default only
    into a folder that holds none. A folder with some but not all of the files is an error."""
    from competition.data import files

    found = files.locate(cfg.data_dir)
    if found:
        missing = [name for name in files.NAMES if name not in found]
        if missing:
            raise MissingArtefactError(files.missing_message(cfg, missing))
        return
    from competition.simulate import write_simulated

    console.print(f"no competition data in {cfg.data_dir}/: simulating the embedded default there (`make data` fetches the real one)")
    write_simulated(cfg)


def data_statement(cfg: CompetitionConfig, data: dict[str, str]) -> str:
    """One line saying which data a run uses: simulated or real, where, fingerprints."""
    what = "simulated competition (offline scoring on its hidden solution)" if data["kind"] == "simulated" else "real data (no offline scoring)"
    return f"data: {what} in {data['dir']} (train {data['train']}, test {data['test']})"


def run_all(cfg: CompetitionConfig, overrides: Sequence[str] = (), profile: str | None = None) -> dict[str, Any]:
    """data -> folds -> train each model -> stack -> (offline) submit -> report; returns what it did."""
    from competition.data.files import describe
    from competition.data.loader import load_competition
    from competition.folds import ensure_folds
    from competition.locks import folds_lock
    from competition.report import build_report
    from competition.stacking.pipeline import run_stack
    from competition.stacking.settings import load_stack_config
    from competition.training.trainer import train_isolated, train_model

    routed = route(overrides, "all")
    cfg = routed.apply_competition(cfg)
    scfg = load_stack_config(routed.stack)
    started = time.perf_counter()
    timings = Timings()
    with ExitStack() as opened:
        engine: Engine | None = None  # local: a process per model, the stack in this one
        if cfg.engine != "local":  # first: a cluster that cannot be reached is said within seconds, before the data loads
            with timings.step(f"engine {cfg.engine}"):
                engine = opened.enter_context(open_engine(cfg.engine, cfg.ray))
        with folds_lock(cfg.folds_json):  # what `simulate` and `folds` take; training, stack and report lock their own folders
            with timings.step("data"):
                ensure_data(cfg)
                train, test = load_competition(cfg)
                source = describe(cfg, train.fingerprint, test.fingerprint)
                console.print(data_statement(cfg, source))
            with timings.step("folds"):
                folds, written = ensure_folds(train, cfg)
                console.print(f"{'wrote' if written else 'reusing'} {cfg.folds_csv} ({folds.describe()})")
        cvs = {}
        for model in cfg.models:
            with timings.step(f"train {model}"):
                run_dir = (
                    train_isolated(cfg, model, profile, routed.trainer) if engine is None else train_model(cfg, model, profile, routed.trainer, engine=engine)
                )
                cvs[model] = _cv(run_dir)
        with timings.step("stack"):
            summary = run_stack(cfg, scfg.model_copy(update={"runs": list(cfg.models)}), train, test, engine=engine)
    with timings.step("submit"):
        scores = _submit_offline(cfg, Path(summary.submission), test.fingerprint)
    with timings.step("report"):
        report = build_report(cfg)
    result = {"data": source, "models": cvs, "summary": summary, "scores": scores, "report": str(report),
              "timings": timings.steps, "wall_s": time.perf_counter() - started}  # fmt: skip
    show(result)
    return result


def _cv(run_dir: Path) -> float:
    """The run's CV log loss, from its meta.json as `load_run` reads and checks it."""
    from competition.training.store import load_run

    return load_run(run_dir).meta.cv_logloss


def _submit_offline(cfg: CompetitionConfig, submission: Path, test_fingerprint: str) -> tuple[float, float] | None:
    """Score on the hidden solution (simulated data it belongs to only) and record it in the ledger."""
    from competition.data.files import simulated_solution

    if simulated_solution(cfg, test_fingerprint) is None:
        console.print(f"real data: {submission} is validated; send it with `make submit` (Kaggle counts every submission)")
        return None
    from competition.kaggle.submit import submit

    entry = submit(cfg, cfg.slug, submission, target="offline")
    if entry.public_score is None or entry.private_score is None:
        raise RuntimeError(f"{submission}: the offline submission was recorded without its scores")
    return entry.public_score, entry.private_score


def show(result: dict[str, Any]) -> None:
    """The closing tables: per-model CV, per-method CV, leaderboard scores, time per step."""
    summary = result["summary"]
    console.print(table("Models (CV log loss of the OOF predictions)", ["model", "CV"], sorted(result["models"].items(), key=lambda kv: kv[1])))
    methods = sorted(summary.methods.items(), key=lambda kv: kv[1].cv_mean)
    console.print(table("Methods (nested CV)", ["method", "kind", "CV mean", "sd"], [(n, m.kind, m.cv_mean, m.cv_std) for n, m in methods]))
    if result["scores"] is not None:
        public, private = result["scores"]
        console.print(table("Submission on the hidden leaderboard", ["file", "public", "private"], [(Path(summary.submission).name, public, private)]))
    steps = [*((name, f"{s:.0f}") for name, s in result["timings"]), ("total", f"{result['wall_s']:.0f}")]
    console.print(table("Wall time per step (s)", ["step", "seconds"], steps))
    console.print(f"[green]report[/] {result['report']}")
