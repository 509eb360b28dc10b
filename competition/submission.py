"""Submission files: the writer, and the validator it always runs (and users can run on any file).

A submission is `id,is_iceberg`, one row per id of the sample submission, each exactly once,
with a finite probability in [0, 1]. The writer validates the exact bytes it is about to
publish and renames them into place only if they pass; beside each CSV a JSON sidecar records
what the ledger needs (experiment, method, CV, eps, fingerprints).
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from competition.atomic import atomic_path, write_json
from competition.errors import DataError, MissingArtefactError

HEADER = "id,is_iceberg"
SHOWN = 5  # offending rows named per problem


class SubmissionError(DataError):
    """A submission file breaks the competition's format."""


def sample_ids(sample_submission: Path) -> np.ndarray:
    """The test ids every submission must hold, in the sample submission's order."""
    if not Path(sample_submission).is_file():
        raise MissingArtefactError(f"{sample_submission} not found: run `make data` (or `make simulate`) first")
    return pd.read_csv(sample_submission, dtype=str, keep_default_na=False)["id"].to_numpy()


def _rows(lines: pd.Series, frame: pd.DataFrame) -> str:
    """'line 3 (id 'ab12')' for the first offending rows (line 1 is the header)."""
    shown = [f"line {i + 2} (id {frame['id'].iloc[i]!r})" for i in lines.index[:SHOWN]]
    more = f" and {len(lines) - SHOWN} more" if len(lines) > SHOWN else ""
    return ", ".join(shown) + more


def problems(frame: pd.DataFrame, expected_ids: np.ndarray) -> list[str]:
    """Every way `frame` (read as strings) breaks the format, each naming its first offending rows."""
    found: list[str] = []
    ids = frame["id"]
    dupes = ids[ids.duplicated(keep="first")]
    if len(dupes):
        found.append(f"{dupes.nunique()} ids appear more than once: {_rows(dupes, frame)}")
    extra = ids[~ids.isin(pd.Index(expected_ids))]
    if len(extra):
        found.append(f"{len(extra)} ids are not test ids of the sample submission: {_rows(extra, frame)}")
    missing = pd.Index(expected_ids).difference(pd.Index(ids))
    if len(missing):
        found.append(f"{len(missing)} test ids are missing, e.g. {', '.join(repr(m) for m in missing[:SHOWN])}")
    raw = frame["is_iceberg"].str.strip()
    values = pd.to_numeric(raw, errors="coerce")
    not_number = raw[values.isna() & ~raw.str.lower().isin(["nan", "", "-nan"])]
    if len(not_number):
        found.append(f"is_iceberg is not a number: {_rows(not_number, frame)}")
    nan = raw[values.isna() & raw.str.lower().isin(["nan", "", "-nan"])]
    if len(nan):
        found.append(f"is_iceberg is empty or NaN: {_rows(nan, frame)}")
    outside = values[values.notna() & ~values.between(0.0, 1.0)]
    if len(outside):
        found.append(f"is_iceberg is not a finite probability in [0, 1]: {_rows(outside, frame)}")
    return found


def validate_submission(path: Path | str, sample_submission: Path | str) -> int:
    """Check a submission file against the sample submission; return its row count or raise
    SubmissionError listing every problem with the first offending rows."""
    path = Path(path)
    if not path.is_file():
        raise MissingArtefactError(f"{path}: submission file not found")
    return _validate(path, sample_ids(Path(sample_submission)), str(path))


def _validate(path: Path, expected_ids: np.ndarray, label: str) -> int:
    with open(path, encoding="utf-8", errors="replace", newline="") as fh:
        header = fh.readline().rstrip("\r\n")
    if header != HEADER:
        raise SubmissionError(f"{label}: line 1: header must be exactly {HEADER!r}, got {header!r}")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise SubmissionError(f"{label}: not a readable CSV of two columns ({exc})") from None
    found = problems(frame, expected_ids)
    if found:
        raise SubmissionError(f"{label}: not a valid submission:\n  - " + "\n  - ".join(found))
    return len(frame)


def _slug(text: str) -> str:
    """A file-name-safe part; '_' separates the name's fields, so it becomes '-' inside one."""
    return re.sub(r"[^A-Za-z0-9.-]+", "-", text).strip("-") or "x"


def submission_name(experiment: str, method: str, cv: float, when: datetime) -> str:
    return f"{when:%Y%m%d-%H%M%S}_{_slug(experiment)}_{_slug(method)}_cv{cv:.4f}.csv"


def write_submission(
    directory: Path,
    ids: np.ndarray,
    probabilities: np.ndarray,
    sample_submission: Path,
    experiment: str,
    method: str,
    cv_mean: float,
    sidecar: dict[str, Any],
) -> Path:
    """Write `submissions/<time>_<experiment>_<method>_cv<score>.csv` (in the sample's id order) and
    its JSON sidecar; a file that fails validation is not written."""
    when = datetime.now()
    path = Path(directory) / submission_name(experiment, method, cv_mean, when)
    expected = sample_ids(sample_submission)
    frame = pd.DataFrame({"id": np.asarray(ids), "is_iceberg": np.asarray(probabilities, dtype=np.float64)})
    if frame["id"].is_unique and len(frame) == len(expected):
        order = pd.Index(frame["id"]).get_indexer(expected)
        if (order >= 0).all():
            frame = frame.iloc[order]
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.8g")
        _validate(tmp, expected, f"{path} (not written)")
        write_json(
            path.with_suffix(".json"),
            {**sidecar, "experiment": experiment, "method": method, "cv_mean": cv_mean, "created": when.isoformat(timespec="seconds")},
        )
    return path
