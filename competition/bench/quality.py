"""`make bench-quality`: how good the harness is against the classic recipes, on the same data and folds.

Recipes (configs/quality.yaml): (a) the classic Kaggle VGG16 transfer recipe, (b) a small CNN
from scratch with the same augmentation, (c) each pretrained model of the harness under each
fine-tuning policy and `auto`, (d) each blender and the stacker on the (c) runs. Every recipe
trains through the normal trainer with an explicit budget (epochs per unit, batch size, seeds,
TTA views; the folds file's K x R folds) into runs/<experiment>/<recipe>/ (a named run), so a
rerun reuses finished units. Each recipe is scored by its OOF log loss and, on simulated data,
by the Kaggle scorer on the hidden solution (public and private). Results: a Rich table (best
first), runs/<experiment>/quality.json and a section of docs/benchmarks.md between markers.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from competition.atomic import atomic_path, write_json
from competition.bench.doc import markdown_table, replace_section
from competition.bench.settings import QUALITY_CONFIG, Budget, QualityConfig
from competition.config import CompetitionConfig, load
from competition.console import console, table
from competition.data.files import simulated_solution
from competition.errors import ConfigError
from competition.overrides import Overrides, route

START, END = "<!-- quality:start -->", "<!-- quality:end -->"
GROUPS = {"a": "classic", "b": "scratch", "c": "grid"}


@dataclass(frozen=True)
class Recipe:
    """A recipe as the trainer runs it."""

    name: str
    group: str  # a | b | c
    model: str
    kind: str  # the PerKind field that sets its budget
    overrides: list[str]


def policy_slug(policy: str) -> str:
    return policy.replace(":", "")


def epochs_kind(policy: str) -> str:
    return "top" if policy.startswith("top:") else policy


def all_recipes(q: QualityConfig) -> list[Recipe]:
    """(a), (b) and the (c) grid, in that order, with their own trainer overrides."""
    augment = [f"augment.{k}={v}" for k, v in q.classic_augment.model_dump().items()]
    recipes = [
        Recipe(f"classic-{q.classic.model}", "a", q.classic.model, "classic", [*q.classic.overrides, *augment]),
        Recipe(f"scratch-{q.scratch.model}", "b", q.scratch.model, "scratch", [*q.scratch.overrides, *augment]),
    ]
    for model in q.grid.models:
        for policy in q.grid.policies:
            extra = q.grid.overrides.get(policy, [])
            recipes.append(Recipe(f"{model}-{policy_slug(policy)}", "c", model, epochs_kind(policy), [f"policy={policy}", *extra]))
    return recipes


def select(recipes: list[Recipe], wanted: Sequence[str] | None, skip: Sequence[str]) -> list[Recipe]:
    """The recipes named (by name, group letter, group name or model; None = all), minus `skip`."""

    def matches(r: Recipe, token: str) -> bool:
        return token in (r.name, r.group, GROUPS[r.group], r.model)

    known = {tok for r in recipes for tok in (r.name, r.group, GROUPS[r.group], r.model)}
    unknown = [tok for tok in [*(wanted or []), *skip] if tok not in known]
    if unknown:
        raise ConfigError(
            f"quality config, key 'recipes' or 'skip': unknown recipe(s) {unknown}; known: {', '.join(r.name for r in recipes)} (or a, b, c, classic, scratch, grid, a model name)"
        )
    chosen = [r for r in recipes if wanted is None or any(matches(r, t) for t in wanted)]
    return [r for r in chosen if not any(matches(r, t) for t in skip)]


def budget_overrides(budget: Budget, kind: str) -> list[str]:
    """Trainer overrides that set a recipe's budget."""
    out = [f"epochs={getattr(budget.epochs, kind)}", f"batch_size={budget.batch_size}", f"seeds={budget.seeds}"]
    if budget.tta is not None:
        out.append(f"tta=[{','.join(budget.tta)}]")
    if budget.patience is not None:
        out.append(f"patience={getattr(budget.patience, kind)}")
    if budget.min_steps is not None:
        out.append(f"min_steps={budget.min_steps}")
    return out


def choose_budget(q: QualityConfig) -> tuple[str, Budget]:
    """The named budget, or the one named after this machine's trainer profile."""
    from competition.training.profiles import hardware_profile

    name = q.budget or hardware_profile()[0]
    if name not in q.budgets:
        raise ConfigError(f"quality config, key 'budget': no budget {name!r} (known: {', '.join(q.budgets)})")
    return name, q.budgets[name]


def score(ids: np.ndarray, predictions: np.ndarray, path: Path, solution: Path | None) -> dict[str, Any]:
    """Write `id,is_iceberg` to `path` and score it with the Kaggle scorer; the row's fields `submission` (the file),
    `public` and `private` (both None without a hidden solution of this data)."""
    with atomic_path(path) as tmp:
        pd.DataFrame({"id": ids, "is_iceberg": predictions}).to_csv(tmp, index=False, float_format="%.8g")
    if solution is None:
        return {"submission": str(path), "public": None, "private": None}
    from competition.kaggle.scoring import score_submission

    s = score_submission(path, solution)
    return {"submission": str(path), "public": s.public, "private": s.private}


def train_recipe(cfg: CompetitionConfig, exp: str, recipe: Recipe, budget: Budget, trainer_overrides: Sequence[str]) -> dict[str, Any]:
    """Train (or resume) one recipe; its row of the results: budget as run, policy, CV, times, scores."""
    from competition.training.store import load_run
    from competition.training.trainer import train_isolated

    console.rule(f"[bold]({recipe.group}) {recipe.name}")
    overrides = [*budget_overrides(budget, recipe.kind), *recipe.overrides, *trainer_overrides]
    started = time.perf_counter()
    exp_cfg = cfg.model_copy(update={"experiment": exp})
    run_dir = train_isolated(exp_cfg, recipe.model, budget.profile, overrides, run_name=recipe.name)
    wall = time.perf_counter() - started
    run = load_run(run_dir)  # meta.json and the tables, checked against each other
    meta, test = run.meta, run.test
    units = meta.timings.units.values()
    scores = score(
        test["id"].to_numpy(),
        test["mean"].to_numpy(),
        exp_cfg.experiment_submissions_dir / f"{recipe.name}.csv",
        simulated_solution(cfg, meta.data_fingerprint.test),
    )
    train_cfg = meta.config["model"]["train"]
    return {
        **asdict(recipe), "overrides": overrides, "run_dir": str(run_dir),
        "epochs": train_cfg["epochs"], "batch_size": train_cfg["batch_size"], "seeds": meta.config["profile"]["seeds"],
        "tta": meta.tta, "units": len(meta.units), "weight_source": meta.weight_source, "augment": meta.augment,
        "policy_requested": meta.policy_requested, "policy": meta.policy, "policy_reason": meta.policy_reason,
        "cv_logloss": meta.cv_logloss, "units_s": sum(sum(t.values()) for t in units),
        "cache_s": sum(t.get("cache_s", 0.0) for t in units), "wall_s_this_run": wall,
        **scores,
    }  # fmt: skip


def stack_methods(
    cfg: CompetitionConfig, exp: str, runs: list[str], budget: Budget, stack_overrides: Sequence[str], train: Any, test: Any
) -> tuple[list[dict[str, Any]], float, str]:
    """(d): every blender and the stacker on the (c) runs by nested CV, each method's test predictions scored; the
    wall seconds; the method the stack step submitted (`single:<run>` when its choice was one run)."""
    from competition.stacking.pipeline import run_stack
    from competition.stacking.settings import load_stack_config

    console.rule("[bold](d) blenders and stacker on the (c) runs")
    scfg = load_stack_config([*budget.stack, *stack_overrides]).model_copy(update={"runs": runs})
    exp_cfg = cfg.model_copy(update={"experiment": exp})
    scfg_cfg = exp_cfg.model_copy(update={"submissions_dir": exp_cfg.experiment_submissions_dir})
    started = time.perf_counter()
    summary = run_stack(scfg_cfg, scfg, train, test)
    wall = time.perf_counter() - started
    preds = pd.read_csv(exp_cfg.stack_dir / "test.csv", dtype={"id": str})
    rows = []
    for name, rec in summary.methods.items():
        if rec.kind == "single":
            continue
        scores = score(
            preds["id"].to_numpy(), preds[name].to_numpy(), exp_cfg.experiment_submissions_dir / f"method-{name}.csv", simulated_solution(cfg, test.fingerprint)
        )
        rows.append({"name": name, "group": "d", "kind": rec.kind, "cv_logloss": rec.cv_mean, "cv_std": rec.cv_std,
                     "eps": rec.eps, **scores})  # fmt: skip
    return rows, wall, summary.chosen.method


def auto_verdicts(rows: list[dict[str, Any]], models: list[str]) -> list[dict[str, Any]]:
    """Per model: the winning concrete policy (by CV and by private score) and what `auto` chose."""
    out = []
    for model in models:
        mine = [r for r in rows if r["group"] == "c" and r["model"] == model]
        concrete = [r for r in mine if r["policy_requested"] != "auto"]
        auto = next((r for r in mine if r["policy_requested"] == "auto"), None)
        if not concrete or auto is None:
            continue
        by_cv = min(concrete, key=lambda r: r["cv_logloss"])
        benchmarked = [r["policy"] for r in concrete]
        by_private = min(concrete, key=lambda r: r["private"]) if all(r["private"] is not None for r in concrete) else None
        out.append({
            "model": model, "best_by_cv": by_cv["policy"], "best_by_private": None if by_private is None else by_private["policy"],
            "auto_chose": auto["policy"], "auto_picks_cv_best": auto["policy"] == by_cv["policy"] if auto["policy"] in benchmarked else None,
            "auto_reason": auto["policy_reason"],
            "benchmarked": benchmarked,
        })  # fmt: skip
    return out


GAP_TARGET, SPEARMAN_TARGET = 0.01, 0.9  # issue 13: median gap (private - CV) <= 0.01, Spearman(CV, private) >= 0.9


def cv_against_private(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """How well the OOF CV foretells the hidden private score, over every row (recipe or stack method) that has both.

    `median_gap`: the median of private - CV (log loss; > 0: the CV is optimistic), `median_abs_gap` the median of
    its absolute value, `spearman`: Spearman's rank correlation of CV and private (scipy.stats.spearmanr), `rows`:
    how many pairs (None when either side is constant). None with fewer than 3 pairs (real data has no hidden
    solution). The targets are issue 13's. A recipe's CV is its OOF log loss, a stack method's the mean of its outer
    folds' log loss (nested CV): both stand for the score on unseen rows, which the private score measures.
    """
    from scipy.stats import spearmanr

    pairs = np.array([(r["cv_logloss"], r["private"]) for r in rows if r["private"] is not None and r["cv_logloss"] is not None], dtype=float)
    if len(pairs) < 3:
        return None
    gap = pairs[:, 1] - pairs[:, 0]
    rho = float(spearmanr(pairs[:, 0], pairs[:, 1]).statistic)  # NaN when either side is constant
    return {
        "rows": len(pairs),
        "median_gap": float(np.median(gap)),
        "median_abs_gap": float(np.median(np.abs(gap))),
        "spearman": None if np.isnan(rho) else rho,
        "targets": {"median_gap": GAP_TARGET, "spearman": SPEARMAN_TARGET},
    }


def agreement_text(fit: dict[str, Any]) -> str:
    """One sentence of `cv_against_private`'s figures, against the targets."""
    met = {True: "met", False: "missed"}
    return (
        f"CV against the hidden private score over {fit['rows']} rows (recipes and stack methods): median gap (private - CV) "
        f"{fit['median_gap']:+.4f} (median |gap| {fit['median_abs_gap']:.4f}; target <= {GAP_TARGET}: {met[fit['median_gap'] <= GAP_TARGET]}), "
        + (
            "Spearman undefined (constant scores)."
            if fit["spearman"] is None
            else f"Spearman {fit['spearman']:.3f} (target >= {SPEARMAN_TARGET}: {met[fit['spearman'] >= SPEARMAN_TARGET]})."
        )
    )


def ranked(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Best first: by private score where the hidden solution exists, else by CV."""
    return sorted(rows, key=lambda r: (r["private"] if r["private"] is not None else r["cv_logloss"], r["cv_logloss"]))


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def describe(row: dict[str, Any]) -> str:
    """What a row is, in a few words."""
    if row["group"] == "d":
        return f"{row['kind']} of the (c) runs (nested CV)"
    policy = row["policy"] if row["policy"] == row["policy_requested"] else f"{row['policy_requested']} -> {row['policy']}"
    return f"{row['model']}, {policy}, {row['weight_source']}"


def budget_text(row: dict[str, Any]) -> str:
    if row["group"] == "d":
        return "-"
    return f"{row['epochs']} ep x bs {row['batch_size']}, {row['units']} units, TTA {len(row['tta'])}"


def seconds(row: dict[str, Any], stack_s: float) -> str:
    return f"{stack_s:.0f} (all methods)" if row["group"] == "d" else f"{row['units_s']:.0f}"


def result_rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    """The results table's rows, best first (shared by the terminal and the markdown)."""
    stack_s = result["stack_wall_s"] or 0.0
    return [
        (f"({r['group']}) {r['name']}", describe(r), budget_text(r), fmt(r["cv_logloss"]), fmt(r["public"]), fmt(r["private"]), seconds(r, stack_s))
        for r in ranked(result["recipes"] + result["methods"])
    ]  # fmt: skip


COLUMNS = ["recipe", "what", "budget", "OOF CV log loss", "public", "private", "train s"]
AUTO_COLUMNS = ["model", "best policy by CV", "best by private", "auto chose", "auto picks the CV winner"]


def auto_rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    verdict = {True: "yes", False: "no", None: "its choice was not benchmarked"}
    return [(v["model"], v["best_by_cv"], v["best_by_private"] or "-", v["auto_chose"], verdict[v["auto_picks_cv_best"]]) for v in result["auto"]]


def markdown(result: dict[str, Any]) -> str:
    """The quality section of docs/benchmarks.md."""
    b, folds = result["budget"], result["folds"]
    tta = "the profile's" if b["tta"] is None else ", ".join(b["tta"])
    lines = [
        START,
        "## Quality: classic recipes vs the harness's policies, blenders and stacker",
        "",
        f"Command: `{result['command']}` ({result['created']}, {result['wall_s'] / 60:.0f} min). Machine: {result['machine']}.",
        f"Data: {result['data']}; folds file {folds['describe']} (the same for every recipe). Budget `{result['budget_name']}`, "
        f"trainer profile `{b['profile']}`: batch {b['batch_size']}, {b['seeds']} seed(s) per fold, TTA views: {tta}; epochs per unit: "
        + ", ".join(f"{k} {v}" for k, v in b["epochs"].items())
        + "; early-stopping patience: "
        + (", ".join(f"{k} {v}" for k, v in b["patience"].items()) if b.get("patience") else "the profile's")
        + " (each unit keeps its best epoch).",
        "",
        "Best first (by the hidden private score on simulated data, else by CV). (a) the classic Kaggle VGG16 transfer recipe "
        "(all layers trainable, flips + rotation + zoom on images, SGD); (b) a small CNN from scratch with the same augmentation; "
        "(c) each pretrained model under each fine-tuning policy with the profile's augmentation; (d) blenders and the LightGBM "
        "stacker on the (c) runs, scored by nested CV on the same outer folds. Train s: the units' own time (set-up, prefix "
        "cache, fit, predict) when they were trained; a prefix cache reused from another run costs nothing here. Runs: "
        f"`runs/{result['experiment']}/`, figures: `runs/{result['experiment']}/quality.json`.",
        "",
        *markdown_table(COLUMNS, result_rows(result)),
    ]
    if result.get("cv_vs_private"):
        lines += ["", agreement_text(result["cv_vs_private"])]
    if result["auto"]:
        lines += ["", "Which fine-tuning policy wins per model, and what `auto` chose (its reason is in each run's meta.json):", "",
                  *markdown_table(AUTO_COLUMNS, auto_rows(result))]  # fmt: skip
        lines += ["", *(f"- {v['model']}: {v['auto_reason']}" for v in result["auto"])]
    if result["skipped"]:
        lines += ["", f"Not run (budget `{result['budget_name']}` or the recipe selection): {', '.join(result['skipped'])}."]
    lines.append(END)
    return "\n".join(lines) + "\n"


def terminal_rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    """The results table narrowed to fit a terminal: recipe, policy (or method kind), scores, seconds."""
    stack_s = result["stack_wall_s"] or 0.0
    return [
        (f"({r['group']}) {r['name']}", r["kind"] if r["group"] == "d" else r["policy"], fmt(r["cv_logloss"]), fmt(r["public"]), fmt(r["private"]),
         f"{stack_s:.0f}*" if r["group"] == "d" else f"{r['units_s']:.0f}")
        for r in ranked(result["recipes"] + result["methods"])
    ]  # fmt: skip


def show(result: dict[str, Any]) -> None:
    """The terminal tables; the markdown section holds the budgets and descriptions as well."""
    b = result["budget"]
    title = f"Quality benchmark, best first: budget {result['budget_name']} (profile {b['profile']}, batch {b['batch_size']}, {result['folds']['describe']})"
    console.print(table(title, ["recipe", "policy", "OOF CV", "public", "private", "train s"], terminal_rows(result)))
    if result["methods"]:
        console.print("* (d): the whole stack step, every method together")
    if result.get("cv_vs_private"):
        console.print(agreement_text(result["cv_vs_private"]))
    if result["auto"]:
        console.print(table("Fine-tuning policies: the winner and auto's choice", AUTO_COLUMNS, auto_rows(result)))


def ensure_folds_file(cfg: CompetitionConfig, train: Any) -> Any:
    """The existing folds file (never rewritten here); made from the competition config only when there is none."""
    from competition.errors import MissingArtefactError
    from competition.folds import load_folds, write_folds

    try:
        return load_folds(cfg, train)
    except MissingArtefactError:
        folds = write_folds(train, cfg)
        console.print(f"[green]wrote[/] {cfg.folds_csv} ({folds.describe()})")
        return folds


def bench_data(cfg: CompetitionConfig, experiment: str, chosen: list[Recipe], budget: Budget, routed: Overrides) -> dict[str, Any]:
    """Train `chosen` on `cfg`'s data and folds file into runs/<experiment>/, stack the (c) runs, score everything.

    Returns the result's data part: `data`, `data_fingerprint`, `n_train`, `n_test`, `folds`, `recipes` (rows), `methods`
    (the (d) rows) and `stack_wall_s` (None without two (c) runs). The data must be in `cfg.data_dir`.
    """
    from competition.data.files import describe
    from competition.data.loader import load_competition

    train, test = load_competition(cfg)
    source = describe(cfg, train.fingerprint, test.fingerprint)
    folds = ensure_folds_file(cfg, train)
    rows = [train_recipe(cfg, experiment, recipe, budget, routed.trainer) for recipe in chosen]
    grid = [r["name"] for r in rows if r["group"] == "c"]
    if len(grid) == 1:
        console.print("one (c) recipe only: (d) needs two or more runs to blend and stack")
    methods, stack_s, submitted = stack_methods(cfg, experiment, grid, budget, routed.stack, train, test) if len(grid) >= 2 else ([], None, None)
    return {
        "data": f"{source['kind']} ({source['dir']}), {len(train)} train / {len(test)} test images"
        + ("" if source["kind"] == "simulated" else " (no hidden solution: CV only)"),
        "data_fingerprint": {"train": train.fingerprint, "test": test.fingerprint},
        "n_train": len(train),
        "n_test": len(test),
        "folds": {"describe": folds.describe(), "k": folds.params.k, "repeats": folds.params.repeats, "fingerprint": folds.fingerprint},
        "recipes": rows,
        "methods": methods,
        "stack_submitted": submitted,
        "stack_wall_s": stack_s,
    }


def run_quality(cfg: CompetitionConfig, overrides: Sequence[str] = (), config: Path = QUALITY_CONFIG) -> dict[str, Any]:
    """Train every selected recipe, stack the (c) runs, score everything; write quality.json and the docs section."""
    from competition.bench.speed import machine
    from competition.pipeline import ensure_data

    routed = route(overrides, "bench-quality", QualityConfig.model_fields)
    cfg = routed.apply_competition(cfg)
    q = load(config, QualityConfig, routed.quality)
    budget_name, budget = choose_budget(q)
    recipes = all_recipes(q)
    chosen = select(recipes, q.recipes if q.recipes is not None else budget.recipes, budget.skip)
    if not chosen:
        raise ConfigError(f"{config}: no recipe left to run (recipes={q.recipes or budget.recipes}, skip={budget.skip})")
    started = time.perf_counter()
    ensure_data(cfg)
    result = bench_data(cfg, q.experiment, chosen, budget, routed)
    exp_dir = cfg.model_copy(update={"experiment": q.experiment}).experiment_dir
    result = {
        "command": " ".join(["competition bench-quality", *overrides]),
        "created": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "experiment": q.experiment,
        **result,
        "budget_name": budget_name,
        "budget": budget.model_dump(mode="json"),
        "auto": auto_verdicts(result["recipes"], q.grid.models),
        "cv_vs_private": cv_against_private(result["recipes"] + result["methods"]),
        "skipped": [r.name for r in recipes if r not in chosen],
        "wall_s": time.perf_counter() - started,
    }
    write_json(exp_dir / "quality.json", result)
    replace_section(q.output, START, END, markdown(result))
    show(result)
    console.print(f"[green]wrote[/] {exp_dir / 'quality.json'} and the quality section of {q.output}")
    return result
