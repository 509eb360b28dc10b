"""`make submit`: send a submission to Kaggle, or score it offline on simulated data, and record it.

The submission's sidecar JSON (written by the stacker beside the CSV) says what produced it;
the Kaggle message carries the experiment, method, CV score and config hash, so the
leaderboard's own list of submissions explains itself. Where the target is chosen:
`auto` scores offline when the hidden solution of simulated data exists (simulated ids mean
nothing to Kaggle) and submits to Kaggle otherwise; `kaggle` or `offline` force one.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from competition.config import CompetitionConfig
from competition.errors import DataError, MissingArtefactError
from competition.kaggle.client import run_kaggle
from competition.kaggle.ledger import Entry, Ledger, ledger_path
from competition.kaggle.scoring import score_submission
from competition.kaggle.settings import Target
from competition.submission import validate_submission


class Sidecar(BaseModel):
    """What the stacker records beside each submission CSV (see docs/architecture.md)."""

    model_config = ConfigDict(extra="ignore")

    experiment: str
    method: str
    cv_mean: float
    cv_std: float
    eps: float | None = None
    config_hash: str
    folds_fingerprint: str
    data_fingerprint: str | dict[str, str] | None = None
    created: str | None = None


def newest_submission(cfg: CompetitionConfig) -> Path:
    """The latest submission CSV (names start with a sortable timestamp)."""
    found = sorted(cfg.submissions_dir.glob("*.csv"), key=lambda p: (p.name, p.stat().st_mtime))
    if not found:
        raise MissingArtefactError(f"no submission in {cfg.submissions_dir}/: run `make stack` first, or name one with FILE=...")
    return found[-1]


def read_sidecar(submission: Path) -> Sidecar:
    """The sidecar beside `submission`, validated; errors name the file and the field."""
    path = submission.with_suffix(".json")
    if not path.is_file():
        raise MissingArtefactError(f"{path}: sidecar of {submission.name} not found (the stacker writes it beside each submission)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Sidecar.model_validate(data)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON (line {exc.lineno})") from None
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise DataError(f"{path}: field '{key}': {err['msg']}") from None


def message(sidecar: Sidecar) -> str:
    """The submission description shown on Kaggle: enough to find the run again."""
    return f"{sidecar.experiment} | {sidecar.method} | cv {sidecar.cv_mean:.5f} +/- {sidecar.cv_std:.5f} | cfg {sidecar.config_hash}"


_MESSAGE = re.compile(r"^(?P<experiment>.+?) \| (?P<method>.+?) \| cv (?P<cv_mean>[-\d.eE]+) \+/- (?P<cv_std>[-\d.eE]+) \| cfg (?P<config_hash>\S+)$")


def parse_message(text: str) -> dict[str, str] | None:
    """The fields `message` wrote, read back from a Kaggle description (None if not ours)."""
    found = _MESSAGE.match(text.strip())
    return found.groupdict() if found else None


def resolve_target(cfg: CompetitionConfig, target: Target) -> Target:
    """`auto` means offline exactly when the hidden solution of simulated data is present."""
    if target == "auto":
        return "offline" if cfg.solution_csv.is_file() else "kaggle"
    if target == "offline" and not cfg.solution_csv.is_file():
        raise MissingArtefactError(f"{cfg.solution_csv}: no hidden solution to score against (only simulated data has one); use target kaggle")
    return target


def _fingerprint_text(value: str | dict[str, str] | None) -> str | None:
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return value


def submit(cfg: CompetitionConfig, slug: str, file: Path | None = None, target: Target = "auto") -> Entry:
    """Send or score one submission and add it to the ledger; returns the ledger entry."""
    path = Path(file) if file is not None else newest_submission(cfg)
    if not path.is_file():
        raise MissingArtefactError(f"{path}: submission file not found")
    sidecar = read_sidecar(path)
    validate_submission(path, cfg.sample_submission)
    where = resolve_target(cfg, target)
    entry = Entry(
        file=str(path),
        submitted_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        experiment=sidecar.experiment,
        method=sidecar.method,
        cv_mean=sidecar.cv_mean,
        cv_std=sidecar.cv_std,
        config_hash=sidecar.config_hash,
        folds_fingerprint=sidecar.folds_fingerprint,
        data_fingerprint=_fingerprint_text(sidecar.data_fingerprint),
        message=message(sidecar),
        score_source=where,
    )
    if where == "offline":
        score = score_submission(path, cfg.solution_csv)
        entry.public_score, entry.private_score, entry.status = score.public, score.private, "complete"
    else:
        out = run_kaggle(["competitions", "submit", "-c", slug, "-f", str(path), "-m", entry.message])
        ref = re.search(r"Submission ref:\s*(\S+)", out)
        entry.kaggle_ref = ref.group(1) if ref else None
    entry.id = Ledger(ledger_path(cfg)).add(entry)
    return entry

