"""Kaggle's scorer, run offline: a submission against a hidden solution file.

The solution file has Kaggle's layout, `id,is_iceberg,Usage` with Usage Public, Private or
Ignored (machine-generated test images are Ignored). The score is log loss with Kaggle's
clipping of probabilities to [1e-15, 1 - 1e-15] (`competition.metrics.logloss`, the harness's one
metric), computed separately on the Public and the Private rows, as the two leaderboards do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from competition.errors import DataError
from competition.metrics import logloss, row_logloss
from competition.submission import read_table

USAGES = ("Public", "Private", "Ignored")


@dataclass(frozen=True)
class Score:
    """Public and private log loss of one submission, and how many rows each used."""

    public: float
    private: float
    n_public: int
    n_private: int


def _read_csv(path: Path, columns: tuple[str, ...], what: str) -> pd.DataFrame:
    """Read a CSV whose header must hold `columns`; ids stay strings."""
    try:
        frame = pd.read_csv(path, dtype={"id": str})
    except FileNotFoundError:
        raise DataError(f"{path}: {what} not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: {what} is not a readable CSV ({exc.__class__.__name__})") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: {what} lacks column(s) {', '.join(missing)}; header is {','.join(map(str, frame.columns))}")
    return frame


def read_submission(path: Path) -> pd.DataFrame:
    """A submission as Kaggle reads it (quotes, byte-order mark, CRLF, columns in either order: see
    `competition.submission.read_table`): unique ids, probabilities in [0, 1]."""
    if not Path(path).is_file():
        raise DataError(f"{path}: submission not found")
    sub = read_table(Path(path), str(path))
    dup = sub["id"][sub["id"].duplicated()]
    if len(dup):
        raise DataError(f"{path}: line {sub['line'][dup.index[0]]}: id {dup.iloc[0]!r} appears more than once")
    values = pd.to_numeric(sub["is_iceberg"].str.strip(), errors="coerce")
    bad = ~np.isfinite(values) | (values < 0) | (values > 1)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"{path}: line {sub['line'].iloc[row]} (id {sub['id'].iloc[row]!r}), field 'is_iceberg': {sub['is_iceberg'].iloc[row]!r} is not a probability in [0, 1]"
        )
    return sub.drop(columns="line").assign(is_iceberg=values.astype(np.float64))


def read_solution(path: Path) -> pd.DataFrame:
    """The hidden answers with their leaderboard usage."""
    sol = _read_csv(path, ("id", "is_iceberg", "Usage"), "solution file")
    unknown = sorted(set(sol["Usage"]) - set(USAGES))
    if unknown:
        raise DataError(f"{path}: field 'Usage' has value(s) {unknown}; expected one of {', '.join(USAGES)}")
    return sol


def score_submission(submission: Path, solution: Path) -> Score:
    """Score like Kaggle: every solution id must be predicted; Ignored rows do not count."""
    public, private = _scored_rows(submission, solution)
    return Score(
        public=logloss(public["is_iceberg"], public["prediction"]),
        private=logloss(private["is_iceberg"], private["prediction"]),
        n_public=len(public),
        n_private=len(private),
    )


def private_row_losses(submission: Path, solution: Path) -> pd.Series:
    """Each Private row's log loss term (`competition.metrics.row_logloss`), indexed by id in the solution's order:
    its mean is `score_submission(...).private`. For paired comparisons of two submissions on the same hidden rows.
    Raises DataError as `score_submission` does."""
    _, private = _scored_rows(submission, solution)
    return pd.Series(row_logloss(private["is_iceberg"], private["prediction"]), index=private.index, name="logloss")


def _scored_rows(submission: Path, solution: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The solution's Public and Private rows joined with the submission's `prediction`, indexed by id."""
    sub = read_submission(submission).set_index("id")
    sol = read_solution(solution).set_index("id")
    if sol.index.duplicated().any():
        raise DataError(f"{solution}: id {sol.index[sol.index.duplicated()][0]!r} appears more than once in the solution file")
    missing = sol.index.difference(sub.index)
    extra = sub.index.difference(sol.index)
    if len(missing) or len(extra):
        parts = [f"{len(missing)} test id(s) of the solution missing, e.g. {missing[0]!r}" if len(missing) else "",
                 f"{len(extra)} id(s) not in the solution, e.g. {extra[0]!r}" if len(extra) else ""]  # fmt: skip
        raise DataError(
            f"{submission}: its ids are not the ids of the hidden solution {solution} ({'; '.join(p for p in parts if p)}): "
            "it was made for other test data than the one this solution belongs to"
        )
    joined = sol.join(sub.rename(columns={"is_iceberg": "prediction"}))
    by_usage = {usage: joined[joined["Usage"] == usage] for usage in ("Public", "Private")}
    for usage, rows in by_usage.items():
        if rows.empty:
            raise DataError(f"{solution}: no {usage} rows to score")
    return by_usage["Public"], by_usage["Private"]
