"""Submission files: the writer, and the validator it always runs (and users can run on any file).

A submission is `id,is_iceberg`, one row per id of the sample submission, each exactly once,
with a finite probability in [0, 1]. The validator reads a file as Kaggle's reader does (a
standard CSV: UTF-8 with or without a byte-order mark, quoted or bare fields, LF or CRLF, the two
columns in either order, numbers in any float notation with surrounding spaces) and refuses the
rest with what to change (R's row names, pandas' index, semicolons or tabs, other columns). The writer validates the exact bytes it is about to
publish and renames them into place only if they pass; beside each CSV a JSON sidecar records
what the ledger needs (experiment, method, CV, eps, fingerprints).
"""

from __future__ import annotations

import csv
import io
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from competition.artefact import read_json
from competition.atomic import atomic_path, write_json
from competition.errors import DataError, MissingArtefactError

HEADER = "id,is_iceberg"
COLUMNS = ("id", "is_iceberg")
SHOWN = 5  # offending rows named per problem
DATA_KINDS = ("simulated", "real")


class DataInfo(BaseModel):
    """Which data a submission or a stack was made on (`data`: kind, folder, fingerprints; `files.describe`)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    kind: str | None = None
    dir: str | None = None
    train: str | None = None
    test: str | None = None


class Sidecar(BaseModel):
    """The JSON beside each submission CSV (docs/architecture.md): written by `write_submission`, read by
    `read_sidecar` (the ledger records it when the file is submitted). Keys it does not name (`runs`) are
    written and ignored on reading (`extra="ignore"`)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    experiment: str
    method: str
    cv_mean: float
    cv_std: float
    eps: float | None = None
    config_hash: str
    folds_fingerprint: str
    data_fingerprint: str | dict[str, str] | None = None
    data: DataInfo | None = None
    created: str | None = None

    def test_fingerprint(self) -> str | None:
        """The fingerprint of the test data the submission was made for, when the sidecar says."""
        if self.data is not None and self.data.test:
            return self.data.test
        if isinstance(self.data_fingerprint, dict):
            return self.data_fingerprint.get("test")
        return None

    def data_kind(self) -> str | None:
        """`simulated` or `real` when the sidecar records it, else None (unknown)."""
        kind = self.data.kind if self.data is not None else None
        return kind if kind in DATA_KINDS else None


def sidecar_path(submission: Path) -> Path:
    """Where a submission's sidecar sits: beside it, same name, `.json`."""
    return Path(submission).with_suffix(".json")


def read_sidecar(submission: Path) -> Sidecar | None:
    """The sidecar beside `submission`, validated (None when there is none: CV unknown); errors name the file and the field."""
    path = sidecar_path(submission)
    if not path.is_file():
        return None
    return read_json(path, Sidecar, f"fix or remove the sidecar of {Path(submission).name}", DataError)


class SubmissionError(DataError):
    """A submission file breaks the competition's format."""


def sample_ids(sample_submission: Path) -> np.ndarray:
    """The test ids every submission must hold, in the sample submission's order."""
    if not Path(sample_submission).is_file():
        raise MissingArtefactError(f"{sample_submission} not found: run `make data` (or `make simulate`) first")
    return read_table(Path(sample_submission), f"{sample_submission} (the sample submission)")["id"].to_numpy()


_COMPRESSED = ((b"\x1f\x8b", "gzip"), (b"PK\x03\x04", "zip"), (b"7z\xbc\xaf\x27\x1c", "7z"), (b"BZh", "bzip2"))


def _decode(raw: bytes, label: str) -> str:
    """The file's text: UTF-8 with or without a byte-order mark (Excel's "CSV UTF-8" writes one)."""
    packed = next((kind for magic, kind in _COMPRESSED if raw.startswith(magic)), None)
    if packed is not None:
        raise SubmissionError(f"{label}: a {packed} archive, not a CSV: unpack it and give the .csv inside")
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise SubmissionError(f"{label}: UTF-16 text (Excel's 'Unicode Text'): save it as 'CSV UTF-8 (comma delimited)'")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SubmissionError(f"{label}: not UTF-8 text (byte {exc.start + 1}): save it as 'CSV UTF-8 (comma delimited)'") from None


def _check_header(header: list[str], first_line: str, label: str) -> None:
    """Kaggle matches the columns by name, in either order; anything else is refused with what to change."""
    if len(header) == 1 and (";" in header[0] or "\t" in header[0]):
        sep = "semicolons" if ";" in header[0] else "tabs"
        raise SubmissionError(
            f"{label}: line 1: columns separated by {sep} ({first_line!r}): save it as CSV with commas "
            "(in Excel: 'CSV UTF-8 (comma delimited)'; decimals with a point: 0.5, not 0,5)"
        )
    if len(header) > len(COLUMNS) and (header[0] == "" or header[0].startswith("Unnamed: ")):
        if first_line.startswith('""'):
            raise SubmissionError(f"{label}: line 1: the first column has no name ({first_line!r}): R's row names; write it with row.names = FALSE")
        raise SubmissionError(f"{label}: line 1: the first column is a row index ({first_line!r}): pandas' index; write it with index=False")
    twice = sorted({h for h in header if header.count(h) > 1})
    missing = [c for c in COLUMNS if c not in header]
    extra = [h for h in header if h not in COLUMNS]
    if not (twice or missing or extra):
        return
    changes = [f"name column {h!r} once" for h in twice]
    for name in extra:
        near = next((c for c in missing if name.strip().lower() == c), None)
        if near is not None:
            missing.remove(near)
            changes.append(f"rename {name!r} to {near!r}")
        else:
            changes.append(f"remove column {name!r}")
    changes += [f"add column {c!r}" for c in missing]
    raise SubmissionError(f"{label}: line 1: the header must name the columns {HEADER} (in either order), got {first_line!r}: " + "; ".join(changes))


def read_table(path: Path, label: str) -> pd.DataFrame:
    """A submission-shaped CSV read as Kaggle's reader reads it: columns `id`, `is_iceberg` (strings, as
    written) and `line` (the row's line in the file). Accepted: a UTF-8 byte-order mark, quoted fields,
    CRLF line ends, the two columns in either order, a missing final newline, blank lines. Refused with
    what to change: other separators, an index or row-name column, other column names, rows with
    another number of fields, broken quoting."""
    text = _decode(Path(path).read_bytes(), label)
    if not text.strip():
        raise SubmissionError(f"{label}: empty file: expected the header {HEADER!r} and one row per test id")
    first_line = text.splitlines()[0]
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[list[str]] = []
    lines: list[int] = []
    try:
        header = next(reader)
        for row in reader:
            if row:
                rows.append(row)
                lines.append(reader.line_num)
    except csv.Error as exc:
        raise SubmissionError(f"{label}: line {reader.line_num}: not readable as CSV ({exc}): check the quotes on that line") from None
    _check_header(header, first_line, label)
    if not rows:
        raise SubmissionError(f"{label}: the header {HEADER!r} and no rows: expected one row per test id")
    wrong = [(line, len(row)) for line, row in zip(lines, rows, strict=True) if len(row) != len(header)]
    if wrong:
        shown = ", ".join(f"line {line} ({n} field{'s' if n != 1 else ''})" for line, n in wrong[:SHOWN])
        more = f" and {len(wrong) - SHOWN} more" if len(wrong) > SHOWN else ""
        hint = "; decimal commas? write 0.5, not 0,5" if any(n > len(header) for _, n in wrong) else ""
        raise SubmissionError(f"{label}: {len(wrong)} rows do not have the header's {len(header)} fields: {shown}{more}{hint}")
    columns = [header.index(c) for c in COLUMNS]
    return pd.DataFrame({"id": [r[columns[0]] for r in rows], "is_iceberg": [r[columns[1]] for r in rows], "line": np.asarray(lines, dtype=np.int64)})


def _rows(lines: pd.Series, frame: pd.DataFrame) -> str:
    """'line 3 (id 'ab12')' for the first offending rows (line 1 is the header)."""
    numbers = frame["line"] if "line" in frame else pd.Series(frame.index + 2, index=frame.index)
    shown = [f"line {numbers.loc[i]} (id {frame['id'].loc[i]!r})" for i in lines.index[:SHOWN]]
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
    empty = raw.str.lower().isin(["nan", "", "-nan", "na"])
    not_number = raw[values.isna() & ~empty]
    if len(not_number):
        comma = " (decimal commas: write 0.5, not 0,5)" if not_number.str.contains(",", regex=False).any() else ""
        found.append(f"is_iceberg is not a number{comma}: {_rows(not_number, frame)}")
    nan = raw[values.isna() & empty]
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
    frame = read_table(path, label)
    found = problems(frame, expected_ids)
    if found and len(frame) and frame["is_iceberg"].isin(pd.Index(expected_ids)).mean() > 0.5:
        found.insert(0, "the values under 'is_iceberg' are test ids: the header names the two columns in the other order than the rows hold them")
    elif found and len(frame) and not frame["id"].isin(pd.Index(expected_ids)).any():
        found.insert(
            0, "none of its ids is a test id of the sample submission: it was made for other test data (point data_dir=... at the data it was made for)"
        )
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
        record = {**sidecar, "experiment": experiment, "method": method, "cv_mean": cv_mean, "created": when.isoformat(timespec="seconds")}
        Sidecar.model_validate(record)  # what read_sidecar will require (a failure here is a bug in the caller)
        write_json(sidecar_path(path), record)
    return path
