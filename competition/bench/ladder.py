"""`competition bench-ladder`: the quality benchmark's recipes on small data, rung by rung.

Fine-tuned CNNs can be worse than the class prior on small training sets. The ladder measures the
harness there: the same recipes (configs/quality.yaml `ladder.recipes`: (c) grid recipes, i.e.
every fine-tuning policy and `auto`, plus `ladder.models` under their own policy, e.g. a linear
probe) on simulated competitions of `ladder.sizes` training images (`ladder.n_test` test images
each) and on a real small image set, two classes of scikit-learn's digits
(competition.simulate.digits). Each rung is its own competition folder,
runs/<ladder.experiment>/data/<rung>/ (data and work folder: its folds file made by the normal
folds step from the competition's `folds:` settings), trained by the normal trainer into
runs/<ladder.experiment>-<rung>/<recipe>/ (resumable) and stacked by the normal stack step, all
through the quality benchmark (`competition.bench.quality.bench_data`). Every rung also gets the
class prior (the training iceberg rate as every prediction) as a baseline. Results: a Rich table
per rung, one summary table, the targets, runs/<ladder.experiment>/ladder.json and the ladder
section of docs/benchmarks.md.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from competition.atomic import write_json
from competition.bench.doc import markdown_table, replace_section
from competition.bench.quality import Recipe, all_recipes, auto_verdicts, bench_data, choose_budget, fmt, score, select, terminal_rows
from competition.bench.settings import QUALITY_CONFIG, DigitsConfig, LadderConfig, QualityConfig
from competition.config import CompetitionConfig, load
from competition.console import console, table
from competition.data.files import read_marker, simulated_solution
from competition.errors import ConfigError, DataError
from competition.metrics import paired_difference
from competition.overrides import route

START, END = "<!-- ladder:start -->", "<!-- ladder:end -->"
DIGITS = "digits"
SMALL = 100  # "every pretrained model beats the class prior" is checked on rungs of at most this many training images
AUTO_TOLERANCE = 0.01  # log loss: `auto` within this of the best policy of its model
NOISE_SE = 2.0  # a verdict needs the gap this many paired standard errors clear of its tolerance (one-sided, ~97.7%)
VERDICTS = {"holds": "green", "within noise": "yellow", "FAILS": "red", "not measured": "yellow"}  # and their terminal colours

Losses = dict[str, pd.Series]  # per-row private log losses (indexed by test id) by submission file


@dataclass(frozen=True)
class Rung:
    """One rung: a simulated training set of `size` images, or the digits (`digits` set, size None)."""

    name: str
    size: int | None
    digits: DigitsConfig | None = None


def rungs(lad: LadderConfig) -> list[Rung]:
    """The simulated sizes, smallest first, then the digits (when configured)."""
    out = [Rung(str(n), n) for n in sorted(lad.sizes)]
    return out + ([Rung(DIGITS, None, lad.digits)] if lad.digits is not None else [])


def rung_config(cfg: CompetitionConfig, lad: LadderConfig, rung: Rung) -> CompetitionConfig:
    """The competition config of one rung: its own data and work folder and experiment; the simulator sized to the rung."""
    folder = cfg.runs_dir / lad.experiment / "data" / rung.name
    update: dict[str, Any] = {"data_dir": folder, "work_dir": folder, "experiment": f"{lad.experiment}-{rung.name}"}
    if rung.size is not None:
        update["simulate"] = cfg.simulate.model_copy(update={"n_train": rung.size, "n_test": lad.n_test, "seed": lad.seed})
    return cfg.model_copy(update=update)


def ladder_recipes(q: QualityConfig, skip: Sequence[str]) -> list[Recipe]:
    """The (c)-style recipes of every rung: `ladder.recipes` from the quality recipes, then each `ladder.models` under its own policy.

    An extra model gets the budget's `head` epochs (it is meant for a head on frozen features: a linear probe).
    """
    chosen = select(all_recipes(q), q.ladder.recipes, skip)
    return chosen + [Recipe(model, "c", model, "head", []) for model in q.ladder.models]


def rung_params(cfg: CompetitionConfig, rung: Rung) -> dict[str, Any]:
    """What the rung's data is made from, as its folder's marker records it."""
    from competition.simulate.digits import digits_params

    if rung.digits is None:
        return cfg.simulate.model_dump()
    d = rung.digits
    return digits_params((d.classes[0], d.classes[1]), d.n_train, d.seed, d.public_fraction)


def write_rung_data(cfg: CompetitionConfig, rung: Rung) -> None:
    """Write the rung's competition folder unless it already holds this rung's data; then a folds file for the config's `folds:`.

    A folder written with other parameters (or not finished) is written again; a folds file made with
    other `folds:` settings or for other data is made again (the trainer then refuses the old runs).
    """
    from competition.data.loader import load_train
    from competition.errors import FingerprintError, MissingArtefactError
    from competition.folds import load_folds, write_folds
    from competition.locks import folds_lock
    from competition.simulate import write_simulated
    from competition.simulate.digits import write_digits

    params = rung_params(cfg, rung)
    with folds_lock(cfg.folds_json):
        marker = read_marker(cfg)
        if marker is None or marker.test_fingerprint is None or marker.simulate != params:
            console.print(f"[bold]ladder rung {rung.name}[/]: writing its competition folder {cfg.data_dir}")
            if rung.digits is None:
                write_simulated(cfg)
            else:
                d = rung.digits
                write_digits(cfg, (d.classes[0], d.classes[1]), d.n_train, d.seed, d.public_fraction)
        train = load_train(cfg)
        try:
            current = load_folds(cfg, train).params == cfg.folds
        except (MissingArtefactError, FingerprintError):
            current = False
        if not current:
            folds = write_folds(train, cfg)
            console.print(f"[green]wrote[/] {cfg.folds_csv} ({folds.describe()})")


def prior_row(cfg: CompetitionConfig) -> dict[str, Any]:
    """The class prior as a recipe: each fold predicts its training part's iceberg rate (OOF log loss, averaged over
    repeats as the trainer does), the test set gets the whole training set's rate (scored on the hidden solution)."""
    from competition.data.loader import load_competition
    from competition.folds import load_folds
    from competition.training.store import cv_logloss

    train, test = load_competition(cfg)
    labels = train.labels
    if labels is None:
        raise DataError(f"{cfg.data_dir}: the training data has no labels; the class prior needs them")
    folds = load_folds(cfg, train)
    oof = []
    for repeat in range(folds.params.repeats):
        fold = folds.assignment(train.ids, repeat)
        rates = {f: float(labels[fold != f].mean()) for f in np.unique(fold)}
        oof.append(pd.DataFrame({"id": train.ids, "repeat": repeat, "prediction": [rates[f] for f in fold]}))
    cv = cv_logloss(pd.concat(oof), pd.Series(labels, index=train.ids))
    rate = float(labels.mean())
    path = cfg.experiment_submissions_dir / "prior.csv"
    scores = score(test.ids, np.full(len(test), rate), path, simulated_solution(cfg, test.fingerprint))
    return {"name": "prior", "rate": rate, "cv_logloss": cv, **scores}


def run_rung(cfg: CompetitionConfig, q: QualityConfig, rung: Rung, recipes: list[Recipe], budget: Any, routed: Any) -> tuple[dict[str, Any], Losses]:
    """One rung from its data to its scores: data, folds, recipes, stack, prior (all resumable); and its rows' `private_losses`."""
    console.rule(f"[bold]ladder rung {rung.name}")
    rcfg = rung_config(cfg, q.ladder, rung)
    write_rung_data(rcfg, rung)
    started = time.perf_counter()
    result = bench_data(rcfg, rcfg.experiment, recipes, budget, routed)
    result = {
        "rung": rung.name, "experiment": rcfg.experiment, **result,
        "prior": prior_row(rcfg), "auto": auto_verdicts(result["recipes"], q.grid.models), "wall_s": time.perf_counter() - started,
    }  # fmt: skip
    return result, private_losses(rcfg, result)


def private_losses(cfg: CompetitionConfig, rung: dict[str, Any]) -> Losses:
    """Each scored row's per-row log losses on the hidden Private rows (a Series by test id, the solution's order), by
    its submission file; empty without a hidden solution (then the targets compare CV and have no noise figure)."""
    from competition.kaggle.scoring import private_row_losses

    solution = simulated_solution(cfg, rung["data_fingerprint"]["test"])
    if solution is None:
        return {}
    rows = [*rung["recipes"], *rung["methods"], rung["prior"]]
    return {r["submission"]: private_row_losses(Path(r["submission"]), solution) for r in rows}


def metric(row: dict[str, Any]) -> float:
    """The score a ladder comparison uses: the hidden private score where there is one, else the OOF CV log loss."""
    return float(row["private"] if row.get("private") is not None else row["cv_logloss"])


def stacker(rung: dict[str, Any]) -> dict[str, Any] | None:
    """The rung's stacker row (kind `stack`), None when it was not run."""
    return next((m for m in rung["methods"] if m["kind"] == "stack"), None)


def submitted(rung: dict[str, Any]) -> dict[str, Any] | None:
    """The row of what the rung's stack step submitted (a method, or the recipe of `single:<run>`), None when not run."""
    name = rung.get("stack_submitted")
    if name is None:
        return None
    rows = rung["recipes"] if name.startswith("single:") else rung["methods"]
    return next(x for x in rows if x["name"] == name.removeprefix("single:"))


def within(a: dict[str, Any], b: dict[str, Any], tolerance: float, losses: Losses) -> tuple[str, str]:
    """Whether row `a` scores within `tolerance` log loss of row `b` (by `metric`), and the gap as text.

    With both rows' losses on the same hidden Private rows, the gap's standard error is that of their paired
    difference (`competition.metrics.paired_difference`), and a verdict needs the gap NOISE_SE standard errors
    clear of the tolerance: `holds` when gap + 2 SE <= tolerance, `FAILS` when gap - 2 SE > tolerance, else
    `within noise` (this test set cannot tell). The SE counts the sampling of the test rows only, not the
    training's seed-to-seed spread; and a `b` picked as the best of several on these same rows makes the gap
    read larger (against `a`). Without private losses (CV compared) the point estimate decides.
    Raises DataError when the two rows' losses are not on the same test ids.
    """
    gap = metric(a) - metric(b)
    la, lb = losses.get(a.get("submission", "")), losses.get(b.get("submission", ""))
    if la is None or lb is None or a.get("private") is None:
        return ("holds" if gap <= tolerance else "FAILS"), f"gap {gap:+.4f}"
    if not la.index.equals(lb.index):
        raise DataError(f"{a['submission']} and {b['submission']}: their private rows are not the same test ids; score both against one solution")
    se = paired_difference(la.to_numpy(), lb.to_numpy())[1]
    text = f"gap {gap:+.4f}, paired SE {se:.4f} over {len(la)} private rows"
    if gap + NOISE_SE * se <= tolerance:
        return "holds", text
    return ("FAILS" if gap - NOISE_SE * se > tolerance else "within noise"), text


def check_targets(rung_results: list[dict[str, Any]], losses: Losses | None = None) -> list[dict[str, Any]]:
    """The ladder's targets per rung, each {target, rung, verdict, detail}; verdict one of VERDICTS.

    - auto: `auto` within AUTO_TOLERANCE log loss of the best of its candidates that were benchmarked: the concrete
      policies of its model and the linear probe on the same backbone (`<model>_probe`), which `auto` races too;
    - prior: at most SMALL training images: every single run better than the class prior (point estimates);
    - stack: what the stack step submitted (its `choice` rule among blenders, the stacker and single runs) not worse
      than the best single run; the LightGBM stacker's own gap is in the detail.
    Compared by `metric` (private where the hidden solution exists, else CV); `losses` (`private_losses`, by
    submission file) gives auto and stack their noise figure (`within`).
    """
    losses = losses or {}
    out = []
    for r in rung_results:
        rows = r["recipes"]
        for v in r["auto"]:
            mine = [x for x in rows if x["model"] == v["model"]]
            auto = next(x for x in mine if x["policy_requested"] == "auto")
            candidates = [x for x in rows if x["model"] == f"{v['model']}_probe" or (x in mine and x["policy_requested"] != "auto")]
            best = min(candidates, key=metric)
            verdict, gap = within(auto, best, AUTO_TOLERANCE, losses)
            out.append({"target": "auto", "rung": r["rung"], "verdict": verdict,
                        "detail": f"{v['model']}: auto -> {auto['policy']} {metric(auto):.4f}, best {best['policy'] if best in mine else 'probe'} {metric(best):.4f} ({gap})"})  # fmt: skip
        if r["n_train"] <= SMALL:
            prior = metric(r["prior"])
            worse = [x["name"] for x in rows if metric(x) >= prior]
            out.append({"target": "prior", "rung": r["rung"], "verdict": "FAILS" if worse else "holds",
                        "detail": f"prior {prior:.4f}; " + (f"not better: {', '.join(worse)}" if worse else "every run is better")})  # fmt: skip
        stack, sub = stacker(r), submitted(r)
        best_single = min(rows, key=metric)
        if stack is None or sub is None:
            out.append({"target": "stack", "rung": r["rung"], "verdict": "not measured", "detail": "not run"})
            continue
        verdict, gap = within(sub, best_single, 0.0, losses)
        lgbm_verdict, lgbm_gap = within(stack, best_single, 0.0, losses)
        out.append({"target": "stack", "rung": r["rung"], "verdict": verdict,
                    "detail": f"submitted {r['stack_submitted']} {metric(sub):.4f}, best single {best_single['name']} {metric(best_single):.4f} ({gap}); "
                              f"the LightGBM stacker {metric(stack):.4f}: {lgbm_verdict} ({lgbm_gap})"})  # fmt: skip
    return out


def column_label(recipe: dict[str, Any], grid_models: set[str]) -> str:
    """A summary column: the policy for the one grid model, else the recipe name."""
    return recipe["policy_requested"] if len(grid_models) == 1 and recipe["model"] in grid_models else recipe["name"]


def cell(row: dict[str, Any] | None) -> str:
    """`CV / private` of one row."""
    return "-" if row is None else f"{fmt(row['cv_logloss'])} / {fmt(row.get('private'))}"


def summary(result: dict[str, Any]) -> tuple[list[str], list[tuple[str, ...]]]:
    """The summary table: one row per rung; columns the prior, each recipe (auto with its choice), the stacker and what
    the stack step submitted (with its name)."""
    rungs_ = result["rungs"]
    names = list(dict.fromkeys(x["name"] for r in rungs_ for x in r["recipes"]))
    grid = {x["model"] for r in rungs_ for x in r["recipes"] if x["policy_requested"] == "auto"}
    example = {x["name"]: x for r in rungs_ for x in r["recipes"]}
    columns = ["rung", "train / test", "prior", *(column_label(example[n], grid) for n in names), "stack (lgbm)", "stack submitted"]
    rows = []
    for r in rungs_:
        by_name = {x["name"]: x for x in r["recipes"]}
        cells = []
        for n in names:
            x = by_name.get(n)
            chose = f" ({x['policy']})" if x is not None and x["policy_requested"] == "auto" else ""
            cells.append(cell(x) + chose)
        sub = submitted(r)
        chose = "" if sub is None else f" ({r['stack_submitted']})"
        rows.append((r["rung"], f"{r['n_train']} / {r['n_test']}", cell(r["prior"]), *cells, cell(stacker(r)), cell(sub) + chose))
    return columns, rows


def markdown(result: dict[str, Any]) -> str:
    """The ladder section of docs/benchmarks.md."""
    columns, rows = summary(result)
    b = result["budget"]
    lines = [
        START,
        "## Small-data ladder: the recipes on small simulated training sets and on a real small image set",
        "",
        f"Command: `{result['command']}` ({result['created']}, {result['wall_s'] / 60:.0f} min). Machine: {result['machine']}. "
        f"Budget `{result['budget_name']}` (trainer profile `{b['profile']}`, batch {b['batch_size']}, epochs per unit: "
        + ", ".join(f"{k} {v}" for k, v in b["epochs"].items())
        + (f"; min_steps {b['min_steps']}: raised on the small rungs, docs/training-loop.md" if b.get("min_steps") else "")
        + ").",
        "",
        "Each rung is its own competition folder (`runs/<experiment>/data/<rung>/`) with its own folds file; simulated rungs: "
        f"the embedded simulator with that many training images and {result['n_test']} test images; `digits`: two classes of "
        "scikit-learn's handwritten digits (8 x 8 resized to 75 x 75, two dB-like bands, no angle), about 100 training images and "
        "the rest of the two classes as the scored test set. Cells: OOF CV log loss / hidden private log loss; `prior`: the "
        "training iceberg rate as every prediction; `auto (x)`: what auto chose; stack (lgbm): the LightGBM stacker on the rung's runs "
        "(nested CV); stack submitted: what the stack step submits by configs/stack.yaml's `choice` rule among the blenders, the stacker and the "
        f"single runs (named; `hedge`: the mean of those within noise of the best). Figures: `runs/{result['experiment']}/ladder.json`.",
        "",
        *markdown_table(columns, rows),
        "",
        f"Targets (by the private score where there is one, else CV). On the private score a verdict needs the gap {NOISE_SE:g} "
        "standard errors of the paired difference on the hidden Private rows clear of the target; `within noise`: this test set "
        "cannot tell (the SE counts the test rows' sampling, not the training's seed-to-seed spread):",
        "",
        *(f"- {t['target']} @ {t['rung']}: **{t['verdict']}** - {t['detail']}" for t in result["targets"]),
    ]
    if result["skipped"]:
        lines += ["", f"Not run: {', '.join(result['skipped'])}."]
    lines.append(END)
    return "\n".join(lines) + "\n"


def show(result: dict[str, Any]) -> None:
    """A table per rung, the summary table and the targets, on the terminal."""
    for r in result["rungs"]:
        rows = [("prior", "-", fmt(r["prior"]["cv_logloss"]), fmt(r["prior"]["public"]), fmt(r["prior"]["private"]), "0"), *terminal_rows(r)]
        console.print(table(f"Ladder rung {r['rung']}: {r['n_train']} train / {r['n_test']} test, {r['folds']['describe']}",
                            ["recipe", "policy", "OOF CV", "public", "private", "train s"], rows))  # fmt: skip
    columns, rows = summary(result)
    console.print(table("Small-data ladder (CV / private)", columns, rows))
    for t in result["targets"]:
        console.print(f"[{VERDICTS[t['verdict']]}]{t['target']} @ {t['rung']}: {t['verdict']}[/] - {t['detail']}")


def run_ladder(cfg: CompetitionConfig, overrides: Sequence[str] = (), config: Path = QUALITY_CONFIG) -> dict[str, Any]:
    """Every rung of configs/quality.yaml's `ladder:`; writes runs/<ladder.experiment>/ladder.json and the ladder section of the docs."""
    from competition.bench.speed import machine

    routed = route(overrides, "bench-ladder", QualityConfig.model_fields)
    cfg = routed.apply_competition(cfg)
    q = load(config, QualityConfig, routed.quality)
    budget_name, budget = choose_budget(q)
    recipes = ladder_recipes(q, budget.skip)
    if not recipes:
        raise ConfigError(f"{config}: key 'ladder.recipes': no recipe left to run (recipes={q.ladder.recipes}, budget skip={budget.skip})")
    started = time.perf_counter()
    measured = [run_rung(cfg, q, rung, recipes, budget, routed) for rung in rungs(q.ladder)]
    results = [result for result, _ in measured]
    losses = {file: rows for _, rung_losses in measured for file, rows in rung_losses.items()}
    result = {
        "command": " ".join(["competition bench-ladder", *overrides]),
        "created": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "experiment": q.ladder.experiment,
        "n_test": q.ladder.n_test,
        "budget_name": budget_name,
        "budget": budget.model_dump(mode="json"),
        "rungs": results,
        "targets": check_targets(results, losses),
        "skipped": [r.name for r in all_recipes(q) if r.model in {x.model for x in recipes} and r not in recipes],
        "wall_s": time.perf_counter() - started,
    }
    out = cfg.runs_dir / q.ladder.experiment / "ladder.json"
    write_json(out, result)
    replace_section(q.output, START, END, markdown(result))
    show(result)
    console.print(f"[green]wrote[/] {out} and the ladder section of {q.output}")
    return result
