"""Reading the harness's JSON artefacts through their typed owners.

Every JSON file one step writes for a later one has a pydantic model beside its writer:
`training.store.RunMeta` (a run's `meta.json`), `stacking.summary.StackSummary` (`summary.json`),
`folds.FoldsMeta` (`folds.json`) and `submission.Sidecar` (a submission's `.json`). The writer
validates what it writes against the model, and each artefact has one read function (beside the
model) that goes through `read_json` here and then checks the fingerprints. A missing, wrong-typed
or unreadable field is one line naming the file, the field and what to do, never a KeyError.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from competition.errors import UserError

M = TypeVar("M", bound=BaseModel)
Fix = str | Callable[[Any], str]  # what to do; a callable is given the file's parsed JSON (None if unreadable)


def problems(exc: ValidationError) -> str:
    """The validation errors as one line: `field 'a.b' missing; field 'c': <expectation>, got 1`."""
    parts = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "missing":
            parts.append(f"field '{key}' missing")
        else:
            parts.append(f"field '{key}': {err['msg']}, got {json.dumps(err.get('input'), default=str)[:60]}")
    return "; ".join(parts)


def validated(model: type[M], data: Any, path: Path | str, fix: Fix, error: type[UserError]) -> M:
    """`data` (what `path` holds) as `model`; else `error` naming the file, the fields and `fix`."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error(f"{path}: {problems(exc)}: {fix(data) if callable(fix) else fix}") from None


def read_json(path: Path | str, model: type[M], fix: Fix, error: type[UserError]) -> M:
    """The JSON file at `path` as `model` (the file must exist: callers say what a missing one means)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f" (line {exc.lineno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise error(f"{path}: not valid JSON{where}: {fix(None) if callable(fix) else fix}") from None
    return validated(model, data, path, fix, error)
