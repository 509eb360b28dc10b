"""User-facing errors: the CLI prints them as one clear message and exits non-zero.

Anything that is the user's mistake (bad input file, bad config, stale artefact) raises a
subclass of `UserError`; everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json


class UserError(Exception):
    """A problem the user can fix; printed without a traceback."""

    exit_code = 2


class ConfigError(UserError):
    """A configuration file or override is invalid (names file, key and what was expected)."""


class DataError(UserError):
    """An input data file is malformed (names the record and the field)."""


class FingerprintError(UserError):
    """An artefact was produced from different data, folds or config than the current ones."""


class MissingArtefactError(UserError):
    """A step needs a file that an earlier step has not written yet."""


def as_json(value: object, limit: int = 60) -> str:
    """A value as JSON writes it (null, true, "text"), shortened to about `limit` characters, for messages
    about data the user handed in (which is JSON, not Python)."""
    try:
        text = json.dumps(value, allow_nan=True, default=repr)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def record_error(path: str, index: int, record_id: object, field: str, problem: str) -> DataError:
    """Build the one message format every record-level check uses."""
    rid = f"id {as_json(record_id)}" if record_id is not None else "no id"
    return DataError(f"{path}: record {index} ({rid}), field '{field}': {problem}")
