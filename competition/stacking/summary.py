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


class StackSummary(BaseModel):
    """`runs/<experiment>/stack/summary.json` (docs/architecture.md): written by `write_summary`, read by
    `read_summary`. `data` (which data, `files.describe`) is optional: summaries written before it was
    recorded still read. Unknown keys are kept (`extra="allow"`)."""

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
    eps: float
    submission: str


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


def results_table(results: list[MethodResult], experiment: str) -> Any:
    rows = [
        (m.name, m.kind, m.cv.mean, m.cv.std, float(m.cv.scores.min()), float(m.cv.scores.max()), f"{m.eps:g}")
        for m in ranked(results)
    ]  # fmt: skip
    return table(
        f"Stacking {experiment}: nested CV log loss over the outer folds, best first",
        ["method", "kind", "CV mean", "std", "best fold", "worst fold", "eps"],
        rows,
    )


def plot_results(results: list[MethodResult], path: Path) -> Path:
    """Horizontal bars of each method's mean CV log loss with its spread over folds, best on top."""
    plt = pyplot()
    order = ranked(results)[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(order) + 1.2))
    ax.barh(
        [m.name for m in order],
        [m.cv.mean for m in order],
        xerr=[m.cv.std for m in order],
        color=[KIND_COLOURS[m.kind] for m in order],
        error_kw={"elinewidth": 1, "capsize": 2},
    )
    ax.set_xlabel("CV log loss (mean over outer folds, bar: +-1 sd; lower is better)")
    ax.set_title("Single runs (grey), blends (blue), stacker (green)")
    ax.set_xlim(left=max(0.0, min(m.cv.mean - m.cv.std for m in order) - 0.02))
    return save_figure(fig, path)


def write_summary(path: Path, results: list[MethodResult], chosen: MethodResult, submission: Path, context: dict[str, Any]) -> StackSummary:
    """runs/<experiment>/stack/summary.json: every method's CV, the best single run and what was submitted."""
    singles = [m for m in ranked(results) if m.kind == "single"]
    best_single = singles[0] if singles else None
    summary = {
        **context,
        "methods": {m.name: m.record() for m in results},
        "ranking": [m.name for m in ranked(results)],
        "best_single": None if best_single is None else {"method": best_single.name, "cv_mean": best_single.cv.mean, "cv_std": best_single.cv.std},
        "chosen": {"method": chosen.name, "cv_mean": chosen.cv.mean, "cv_std": chosen.cv.std, "eps": chosen.eps},
        "eps": chosen.eps,
        "submission": str(submission),
    }
    typed = StackSummary.model_validate(summary)  # what read_summary will require (a failure here is a bug in the stacker)
    write_json(path, summary)
    return typed
