"""The run report: one HTML page with PNG plots that says how good each model and the stack are.

It only reads artefacts (runs, stack summary, ledger) and never trains anything, so it can be
rebuilt at any time with `competition report`.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from competition.atomic import replaced_folder, write_text
from competition.config import CompetitionConfig
from competition.locks import report_lock
from competition.plots import pyplot, save_figure
from competition.stacking.summary import StackSummary, read_summary

if TYPE_CHECKING:
    from competition.training.store import Run


def plot_fold_scores(scores: pd.DataFrame, path: Path) -> Path:
    """Log loss of every fold (dots) and the mean (bar) per model: spread shows how much CV can be trusted."""
    plt = pyplot()
    order = scores.groupby("model")["logloss"].mean().sort_values().index.tolist()
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(order)), 3.6))
    means = [scores.loc[scores["model"] == m, "logloss"].mean() for m in order]
    ax.bar(range(len(order)), means, color="#9ecae1", label="mean over folds")
    for i, m in enumerate(order):
        vals = scores.loc[scores["model"] == m, "logloss"].to_numpy()
        ax.scatter(np.full(len(vals), i) + np.linspace(-0.15, 0.15, len(vals)), vals, color="#08519c", s=14, zorder=3)
    ax.set_xticks(range(len(order)), order, rotation=30, ha="right")
    ax.set_ylabel("log loss (lower is better)")
    ax.set_title("Fold scores per model")
    ax.legend(loc="upper right", fontsize=8)
    return save_figure(fig, path)


def plot_calibration(oof: pd.DataFrame, labels: np.ndarray, path: Path, bins: int = 10) -> Path:
    """Reliability curves of each column's OOF predictions: a curve under the diagonal is over-confident."""
    from sklearn.calibration import calibration_curve

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
    for col in oof.columns:
        frac, mean_pred = calibration_curve(labels, oof[col].to_numpy(), n_bins=bins, strategy="quantile")
        ax.plot(mean_pred, frac, marker="o", markersize=3, label=col)
    ax.set_xlabel("mean predicted P(iceberg)")
    ax.set_ylabel("observed iceberg rate")
    ax.set_title("OOF calibration")
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_correlation(oof: pd.DataFrame, path: Path) -> Path:
    """Correlation of the models' OOF predictions: diverse (less correlated) models stack better."""
    plt = pyplot()
    corr = oof.corr()
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(corr), 0.8 + 0.7 * len(corr)))
    im = ax.imshow(corr.to_numpy(), vmin=min(0.5, float(corr.to_numpy().min())), vmax=1, cmap="viridis")
    ax.set_xticks(range(len(corr)), corr.columns, rotation=30, ha="right")
    ax.set_yticks(range(len(corr)), corr.index)
    for i in range(len(corr)):
        for j in range(len(corr)):
            ax.text(j, i, f"{corr.iat[i, j]:.2f}", ha="center", va="center", color="white", fontsize=8)
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_title("Correlation of OOF predictions")
    return save_figure(fig, path)


def plot_importances(importances: pd.Series, path: Path, top: int = 20) -> Path:
    """The stacker's feature importances (gain), largest first."""
    plt = pyplot()
    imp = importances.sort_values(ascending=True).tail(top)
    fig, ax = plt.subplots(figsize=(5.5, 0.3 * len(imp) + 1))
    ax.barh(imp.index, imp.to_numpy(), color="#31a354")
    ax.set_xlabel("importance (total gain)")
    ax.set_title("Stacker feature importances")
    return save_figure(fig, path)


def html_table(frame: pd.DataFrame) -> str:
    """A DataFrame as a plain HTML table with 4-decimal floats."""
    return frame.to_html(index=False, float_format=lambda v: f"{v:.4f}", border=0, classes="t")


def write_page(path: Path, title: str, sections: Sequence[tuple[str, str]]) -> Path:
    """One self-contained HTML page: sections are (heading, html body); images are referenced relatively."""
    body = "\n".join(f"<h2>{html.escape(h)}</h2>\n{content}" for h, content in sections)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}}
table.t{{border-collapse:collapse}} table.t td,table.t th{{padding:3px 10px;border-bottom:1px solid #ddd;text-align:right}}
img{{max-width:100%;border:1px solid #eee;margin:6px 0}}</style></head>
<body><h1>{html.escape(title)}</h1>
{body}
</body></html>
"""
    return write_text(path, page)


def img(path: Path, page_dir: Path) -> str:
    return f'<img src="{html.escape(str(path.relative_to(page_dir)))}" alt="{html.escape(path.stem)}">'


def _fold_scores(summary: StackSummary) -> pd.DataFrame:
    """Long table (model, repeat, fold, logloss) of every method's nested-CV fold scores."""
    rows = [{"model": name, **score} for name, rec in summary.methods.items() for score in rec.fold_scores]
    return pd.DataFrame(rows)


def _load_runs(exp_dir: Path) -> list[Run]:
    """Every run folder of the experiment, each read by `load_run`."""
    from competition.stacking.collect import run_dirs
    from competition.training.store import load_run

    return [load_run(path) for path in run_dirs(exp_dir, [])]


def _runs_table(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per run (folder): its model, CV, weights, fine-tuning policy and wall time."""
    rows = []
    for run in runs:
        meta = run.meta
        rows.append({
            "run": run.name,
            "model": meta.model,
            "CV log loss": meta.cv_logloss,
            "weights": meta.weight_source,
            "policy": f"{meta.policy} (asked: {meta.policy_requested or meta.policy})",
            "units": len(meta.fold_scores),
            "fit s (all units)": round(sum(t.get("fit_s", 0.0) for t in meta.timings.units.values()), 1),
        })  # fmt: skip
    return pd.DataFrame(rows)


def _race_sections(runs: Sequence[Run]) -> list[tuple[str, str]]:
    """One section per run whose `auto` policy a race decided (competition.training.policy_race): its candidates, rule and cost."""
    from competition.training.policy_race import race_columns, race_table, seconds_unit

    sections = []
    for run in runs:
        race = ((run.meta.model_extra or {}).get("policy_numbers") or {}).get("race")
        if race is None:
            continue
        text = (
            f"<p>{html.escape(race['rule'])}. Cost: {race['race_s']:.1f} {seconds_unit(race)} = {race['spent_fraction']:.0%} of one policy's run "
            f"(budget {race['budget']:.0%}); the class prior scores {race['class_prior_loss']:.4f} on the {race['valid_rows']} "
            f"inner-validation rows. (table) = the 2 x 2 table's pick, * = the policy trained.</p>"
        )
        sections.append((f"Policy race: {run.name}", text + html_table(pd.DataFrame(race_table(race), columns=race_columns(race)))))
    return sections


def build_report(cfg: CompetitionConfig) -> Path:
    """runs/<experiment>/report/index.html from the runs, the stack and the ledger of `cfg`.

    Holds the report folder's lock; the new folder is built beside the old one and replaces it
    whole, so a failure leaves the previous report as it was.
    """
    target = cfg.report_dir
    with report_lock(target), replaced_folder(target) as out:
        _build(cfg, cfg.experiment_dir, out)
    return target / "index.html"


def _data_line(summary: StackSummary) -> str:
    """Which data the stack was made on (simulated or real, where, fingerprints), from its summary."""
    data = summary.data
    if data is None:
        return f"Data: fingerprints {summary.data_fingerprint.model_dump()} (made before the data was recorded)."
    kind = "the simulated competition (scored offline on its hidden solution)" if data.kind == "simulated" else "real data"
    return f"Data: {kind} in {data.dir} (train {data.train}, test {data.test})."


def _build(cfg: CompetitionConfig, exp_dir: Path, out: Path) -> Path:
    """The page and its plots, written into `out` (the staging folder that replaces the report folder)."""
    from competition.data.loader import load_train
    from competition.kaggle.leaderboard import plot_cv_vs_lb
    from competition.kaggle.ledger import Ledger

    stack = cfg.stack_dir
    summary = read_summary(stack)
    oof = pd.read_csv(stack / "oof.csv", dtype={"id": str})
    train = load_train(cfg)
    labels = pd.Series(train.labels, index=train.ids).loc[oof["id"]].to_numpy()
    singles = [name for name, rec in summary.methods.items() if rec.kind == "single"]
    chosen = summary.chosen.method
    best = summary.best_single
    best_text = "none" if best is None else f"{best.method} {best.cv_mean:.4f}"
    runs = _load_runs(exp_dir)

    methods = pd.DataFrame([
        {"method": name, "kind": rec.kind, "CV mean": rec.cv_mean, "CV sd": rec.cv_std, "eps": rec.eps}
        for name, rec in summary.methods.items()
    ]).sort_values("CV mean")  # fmt: skip
    sections = [
        ("Summary", f"<p>{html.escape(_data_line(summary))}</p>"
                    f"<p>Experiment <b>{html.escape(cfg.experiment)}</b>: submitted <b>{html.escape(chosen)}</b>, "
                    f"CV log loss {summary.chosen.cv_mean:.4f} &plusmn; {summary.chosen.cv_std:.4f} "
                    f"(best single run: {html.escape(best_text)}); "
                    f"clipped to [{summary.eps:g}, {1 - summary.eps:g}]. File: <code>{html.escape(summary.submission)}</code>.</p>"),
        ("Models", html_table(_runs_table(runs))),
        *_race_sections(runs),
        ("Methods (nested CV over the same outer folds)", html_table(methods)),
        ("Fold scores", img(plot_fold_scores(_fold_scores(summary), out / "fold_scores.png"), out)),
        ("OOF calibration", img(plot_calibration(oof[list(dict.fromkeys([*singles, chosen]))], labels, out / "calibration.png"), out)),
        ("Correlation of the models' OOF predictions", img(plot_correlation(oof[singles], out / "correlation.png"), out)),
    ]  # fmt: skip
    if (stack / "importances.csv").is_file():
        imp = pd.read_csv(stack / "importances.csv", index_col=0).iloc[:, 0]
        sections.append(("Stacker feature importances", img(plot_importances(imp, out / "importances.png"), out)))
    entries = Ledger(cfg.ledger_path).entries() if cfg.ledger_path.is_file() else []
    if entries:
        plot_cv_vs_lb(entries, out / "cv_vs_lb.png")
        ledger = pd.DataFrame([{"file": Path(e.file).name, "method": e.method, "CV": e.cv_mean, "public": e.public_score,
                                "private": e.private_score, "scored by": e.score_source} for e in entries])  # fmt: skip
        sections.append(("CV against the leaderboard (ledger)", img(out / "cv_vs_lb.png", out) + html_table(ledger)))
    return write_page(out / "index.html", f"Iceberg harness report: {cfg.experiment}", sections)
