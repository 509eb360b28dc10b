"""How the stacking methods compare: the terminal table, the bar plot and summary.json."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from competition.artefact import read_json
from competition.atomic import write_json
from competition.console import table
from competition.errors import FingerprintError, MissingArtefactError
from competition.plots import pyplot, save_figure
from competition.stacking.crossval import CVResult
from competition.submission import DataInfo
from competition.training.store import DataFingerprints

KIND_COLOURS = {"single": "#bdbdbd", "blend": "#6baed6", "stack": "#31a354"}
SUMMARY_FILE = "summary.json"


class MethodRecord(BaseModel):
    """One method in `summary.json`'s `methods`: its nested-CV score, eps and per-fold scores."""

    model_config = ConfigDict(extra="allow", frozen=True)

    kind: Literal["single", "blend", "stack"]
    cv_mean: float
    cv_std: float
    eps: float
    fold_scores: list[dict[str, float]]


class MethodScore(BaseModel):
    """A method named with its CV (`best_single`)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    method: str
    cv_mean: float
    cv_std: float


class ChosenMethod(MethodScore):
    """The method submitted, with the eps its predictions were clipped to."""

    eps: float


class ChoiceRecord(BaseModel):
    """`summary.json`'s `choice`: the rule that picked `chosen` (competition.stacking.choice), the
    method with the lowest mean CV (`best`), a standard error and the mean a method had to reach (under `hedge`:
    the farthest member's paired SE and mean), the methods that reached it (simplest first; under `hedge` the
    members, best first) and a one-line reason."""

    model_config = ConfigDict(extra="allow", frozen=True)

    rule: str
    method: str
    best: str
    best_cv_mean: float
    se: float
    threshold: float
    candidates: list[str]
    reason: str


class StackSummary(BaseModel):
    """`runs/<experiment>/stack/summary.json` (docs/architecture.md): written by `write_summary`, read by
    `read_summary`. `data` (which data, `files.describe`) and `choice` (why `chosen` was chosen) are
    optional: summaries written before they were recorded still read. Unknown keys are kept
    (`extra="allow"`)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    experiment: str
    created: str
    runs: list[str]
    config_hash: str
    folds_fingerprint: str
    data_fingerprint: DataFingerprints  # of the data the stacked runs were made on
    data: DataInfo | None = None
    methods: dict[str, MethodRecord]
    ranking: list[str]
    best_single: MethodScore | None
    chosen: ChosenMethod
    choice: ChoiceRecord | None = None
    eps: float
    submission: str
    trial_workers: int = 1  # stacker.trial_workers: >1, its studies were searched by several tasks at once (not reproducible); absent in older summaries


def read_summary(stack_dir: Path) -> StackSummary:
    """The stack's summary.json, validated; refused (one line) when missing, malformed or from another version."""
    path = Path(stack_dir) / SUMMARY_FILE
    if not path.is_file():
        raise MissingArtefactError(f"{path} not found: run `make stack` first")
    return read_json(path, StackSummary, "written by another version or edited; run `make stack` again", FingerprintError)


@dataclass(frozen=True)
class MethodResult:
    """One method's nested-CV result, its OOF-chosen eps and its clipped test predictions."""

    name: str
    kind: str  # single | blend | stack
    cv: CVResult
    eps: float
    test: np.ndarray

    def record(self) -> dict[str, Any]:
        return {"kind": self.kind, "cv_mean": self.cv.mean, "cv_std": self.cv.std, "eps": self.eps, "fold_scores": self.cv.fold_scores()}


def ranked(results: list[MethodResult]) -> list[MethodResult]:
    """Best (lowest mean CV log loss) first."""
    return sorted(results, key=lambda m: (m.cv.mean, m.cv.std))


def results_table(results: list[MethodResult], experiment: str, choice: ChoiceRecord | None = None) -> Any:
    """The terminal table, best mean CV first; with `choice`, a column marks the chosen method and the
    others within its rule's threshold, and the caption gives the reason."""
    rows = []
    for m in ranked(results):
        row = [m.name, m.kind, m.cv.mean, m.cv.std, float(m.cv.scores.min()), float(m.cv.scores.max()), f"{m.eps:g}"]
        if choice is not None:
            row.append("chosen" if m.name == choice.method else "within" if m.name in choice.candidates else "")
        rows.append(row)
    columns = ["method", "kind", "CV mean", "std", "best fold", "worst fold", "eps"] + ([] if choice is None else [f"choice ({choice.rule})"])
    out = table(f"Stacking {experiment}: nested CV log loss over the outer folds, best first", columns, rows)
    if choice is not None:
        out.caption = f"chosen by {choice.rule}: {choice.reason}"
        out.caption_justify = "left"
    return out


def plot_results(results: list[MethodResult], path: Path, chosen: str | None = None) -> Path:
    """Horizontal bars of each method's mean CV log loss with its spread over folds, best on top; the
    `chosen` method's bar is outlined in black and named in the title."""
    plt = pyplot()
    order = ranked(results)[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(order) + 1.2))
    ax.barh(
        [m.name for m in order],
        [m.cv.mean for m in order],
        xerr=[m.cv.std for m in order],
        color=[KIND_COLOURS[m.kind] for m in order],
        error_kw={"elinewidth": 1, "capsize": 2},
        edgecolor=["black" if m.name == chosen else "none" for m in order],
        linewidth=1.5,
    )
    ax.set_xlabel("CV log loss (mean over outer folds, bar: +-1 sd; lower is better)")
    ax.set_title("Single runs (grey), blends (blue), stacker (green)" + ("" if chosen is None else f"; submitted: {chosen}"))
    ax.set_xlim(left=max(0.0, min(m.cv.mean - m.cv.std for m in order) - 0.02))
    return save_figure(fig, path)


def write_summary(
    path: Path, results: list[MethodResult], chosen: MethodResult, submission: Path, context: dict[str, Any], choice: ChoiceRecord | None = None
) -> StackSummary:
    """runs/<experiment>/stack/summary.json: every method's CV, the best single run, what was submitted and why."""
    singles = [m for m in ranked(results) if m.kind == "single"]
    best_single = singles[0] if singles else None
    summary = {
        **context,
        "methods": {m.name: m.record() for m in results},
        "ranking": [m.name for m in ranked(results)],
        "best_single": None if best_single is None else {"method": best_single.name, "cv_mean": best_single.cv.mean, "cv_std": best_single.cv.std},
        "chosen": {"method": chosen.name, "cv_mean": chosen.cv.mean, "cv_std": chosen.cv.std, "eps": chosen.eps},
        **({} if choice is None else {"choice": choice.model_dump()}),
        "eps": chosen.eps,
        "submission": str(submission),
    }
    typed = StackSummary.model_validate(summary)  # what read_summary will require (a failure here is a bug in the stacker)
    write_json(path, summary)
    return typed
