"""`make submit`: send a submission to Kaggle, or score it offline on simulated data, and record it.

The submission's sidecar JSON (written beside the CSV by the stacker, and by the Kaggle kernel
beside its `submission.csv`) says what produced it; the Kaggle message carries the experiment,
method, CV score and config hash, so the leaderboard's own list of submissions explains itself.
A file without a sidecar (made by hand, or elsewhere) is still submitted: it is recorded with CV
unknown and its message says `cv unknown`.

Where the target is chosen: `auto` scores offline exactly when the simulator's hidden solution
belongs to the test data the submission was made for (the sidecar's test fingerprint, else the
current test data's) and submits to Kaggle otherwise (simulated ids mean nothing to Kaggle, and
real data is never scored against a solution that is not its own); `kaggle` or `offline` force
one, and a forced `offline` without such a solution is refused.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

from competition.config import CompetitionConfig
from competition.errors import MissingArtefactError
from competition.kaggle.client import run_kaggle
from competition.kaggle.ledger import Entry, Ledger
from competition.kaggle.scoring import score_submission
from competition.kaggle.settings import Target
from competition.submission import Sidecar, read_sidecar, validate_submission


def newest_submission(cfg: CompetitionConfig) -> Path:
    """The latest submission CSV (names start with a sortable timestamp)."""
    found = sorted(cfg.submissions_dir.glob("*.csv"), key=lambda p: (p.name, p.stat().st_mtime))
    if not found:
        raise MissingArtefactError(f"no submission in {cfg.submissions_dir}/: run `make stack` first, or name one with FILE=...")
    return found[-1]


UNKNOWN_METHOD = "no sidecar"


def message(sidecar: Sidecar | None, submission: Path | None = None) -> str:
    """The submission description shown on Kaggle: enough to find the run again (`cv unknown` without a sidecar)."""
    if sidecar is None:
        name = submission.name if submission is not None else "?"
        return f"{name} | {UNKNOWN_METHOD} | cv unknown | cfg ?"
    return f"{sidecar.experiment} | {sidecar.method} | cv {sidecar.cv_mean:.5f} +/- {sidecar.cv_std:.5f} | cfg {sidecar.config_hash}"


_MESSAGE = re.compile(
    r"^(?P<experiment>.+?) \| (?P<method>.+?) \| cv (?:(?P<cv_mean>[-\d.eE]+) \+/- (?P<cv_std>[-\d.eE]+)|unknown) \| cfg (?P<config_hash>\S+)$"
)


def parse_message(text: str) -> dict[str, str | None] | None:
    """The fields `message` wrote, read back from a Kaggle description (None if not ours; unknown fields None)."""
    found = _MESSAGE.match(text.strip())
    if not found:
        return None
    fields: dict[str, str | None] = found.groupdict()
    if fields["method"] == UNKNOWN_METHOD:
        fields["experiment"] = fields["method"] = None
    if fields["config_hash"] == "?":
        fields["config_hash"] = None
    return fields


def matching_solution(cfg: CompetitionConfig, test_fingerprint: str | None) -> Path | None:
    """The simulator's hidden solution, only when it was written for the test data `test_fingerprint`."""
    from competition.data.files import simulated_solution

    return simulated_solution(cfg, test_fingerprint) if test_fingerprint else None


def submission_test_fingerprint(cfg: CompetitionConfig, sidecar: Sidecar | None) -> str | None:
    """The test data a submission was made for: the sidecar's, else the current test data's.

    Without a hidden solution file nothing can match, so the (possibly large) test data is not read.
    """
    recorded = sidecar.test_fingerprint() if sidecar is not None else None
    if recorded or not cfg.solution_csv.is_file():
        return recorded
    from competition.data.loader import load_test

    return load_test(cfg).fingerprint


def resolve_target(cfg: CompetitionConfig, target: Target, test_fingerprint: str | None, label: str = "the submission") -> tuple[Target, Path | None]:
    """Where to send a submission made for the test data `test_fingerprint`, and the solution to score it on.

    `auto` means offline exactly when the hidden solution belongs to that test data; a forced
    `offline` without one is refused (real data is never scored against another data set's answers).
    """
    if target == "kaggle":
        return "kaggle", None
    solution = matching_solution(cfg, test_fingerprint)
    if solution is not None:
        return "offline", solution
    if target == "auto":
        return "kaggle", None
    if not cfg.solution_csv.is_file():
        why = f"{cfg.solution_csv} does not exist (only simulated data has a hidden solution)"
    else:
        why = f"{cfg.solution_csv} belongs to other test data than the one {label} was made for (test {test_fingerprint or 'unknown'})"
    raise MissingArtefactError(f"no hidden solution to score {label} against offline: {why}; send it with kaggle.submit_target=kaggle")


def _fingerprint_text(sidecar: Sidecar) -> str | None:
    """The data fingerprint as the ledger stores it (the sidecar's `data` when it has no `data_fingerprint`)."""
    value = sidecar.data_fingerprint
    if value is None and sidecar.data is not None and (sidecar.data.train or sidecar.data.test):
        value = {"train": sidecar.data.train or "", "test": sidecar.data.test or ""}
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return value


def submit(cfg: CompetitionConfig, slug: str, file: Path | None = None, target: Target = "auto") -> Entry:
    """Send or score one submission and add it to the ledger; returns the ledger entry (CV None: no sidecar)."""
    from competition.data.files import sample_submission

    path = Path(file) if file is not None else newest_submission(cfg)
    if not path.is_file():
        raise MissingArtefactError(f"{path}: submission file not found")
    sidecar = read_sidecar(path)
    validate_submission(path, sample_submission(cfg))
    test_fp = None if target == "kaggle" else submission_test_fingerprint(cfg, sidecar)
    where, solution = resolve_target(cfg, target, test_fp, str(path))
    entry = Entry(
        file=str(path),
        submitted_at=datetime.now(UTC).isoformat(timespec="seconds"),
        experiment=sidecar.experiment if sidecar else None,
        method=sidecar.method if sidecar else None,
        cv_mean=sidecar.cv_mean if sidecar else None,
        cv_std=sidecar.cv_std if sidecar else None,
        config_hash=sidecar.config_hash if sidecar else None,
        folds_fingerprint=sidecar.folds_fingerprint if sidecar else None,
        data_fingerprint=_fingerprint_text(sidecar) if sidecar else None,
        message=message(sidecar, path),
        score_source=where,
        data_kind=sidecar.data_kind() if sidecar else None,
    )
    if solution is not None:
        score = score_submission(path, solution)
        entry.public_score, entry.private_score, entry.status = score.public, score.private, "complete"
    else:
        out = run_kaggle(["competitions", "submit", "-c", slug, "-f", str(path), "-m", entry.message])
        ref = re.search(r"Submission ref:\s*(\S+)", out)
        entry.kaggle_ref = ref.group(1) if ref else None
    entry.id = Ledger(cfg.ledger_path).add(entry)
    return entry
