"""`make lb`: sync Kaggle's scores into the ledger, compare CV with the boards, place each score.

A competitor watches three numbers per submission: local CV, the public score (what the
board shows during the competition, on about 30% of the scored rows) and the private score
(what decides the ranking). The table and the CV-vs-LB scatter show when the public board
misleads; the placement says where each score lands on the final private leaderboard.
"""

from __future__ import annotations

import io
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from rich.table import Table

from competition.atomic import atomic_path
from competition.config import CompetitionConfig
from competition.console import table
from competition.errors import DataError
from competition.kaggle.client import KaggleClientError, run_kaggle
from competition.kaggle.credentials import CredentialsError, has_credentials
from competition.kaggle.ledger import Entry, Ledger
from competition.kaggle.placement import Board, Placement, known_cutoffs, read_board
from competition.kaggle.submit import parse_message
from competition.plots import pyplot, save_figure


@dataclass(frozen=True)
class SyncResult:
    """What a sync changed in the ledger."""

    updated: int
    added: int


def _score(value: object) -> float | None:
    """Kaggle prints missing scores as empty or 'None'."""
    text = str(value).strip()
    if text in ("", "None", "nan"):
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _status(value: object) -> str:
    """'SubmissionStatus.COMPLETE' -> 'complete'."""
    return str(value).rsplit(".", 1)[-1].strip().lower() or "pending"


def fetch_submissions(slug: str) -> pd.DataFrame:
    """The user's submissions as Kaggle lists them (CSV from the official client)."""
    out = run_kaggle(["competitions", "submissions", "-c", slug, "-v", "--page-size", "200"])
    if out.strip().startswith("No submissions found"):
        return pd.DataFrame(columns=["ref", "fileName", "date", "description", "status", "publicScore", "privateScore"])
    start = out.find("ref,")
    if start < 0:
        raise DataError(f"`kaggle competitions submissions` printed no CSV header: {out[:200]!r}")
    return pd.read_csv(io.StringIO(out[start:]), dtype=str, keep_default_na=False)


def _match(entries: list[Entry], row: pd.Series, taken: set[int]) -> Entry | None:
    """The ledger entry a Kaggle row belongs to: by submission ref, else by file name and message."""
    ref = str(row["ref"])
    for entry in entries:
        if entry.kaggle_ref == ref:
            return entry
    for entry in entries:
        ours = entry.id not in taken and entry.score_source == "kaggle" and entry.kaggle_ref is None
        if ours and Path(entry.file).name == row["fileName"] and entry.message == row["description"]:
            return entry
    return None


def _external_entry(row: pd.Series) -> Entry:
    """A submission made outside this ledger (another machine, the web page), read from its message."""
    parsed = parse_message(str(row["description"])) or {}
    cv_mean, cv_std = (_score(parsed.get(k)) for k in ("cv_mean", "cv_std"))
    return Entry(
        file=str(row["fileName"]),
        submitted_at=str(row["date"]),
        experiment=parsed.get("experiment"),
        method=parsed.get("method"),
        cv_mean=cv_mean,
        cv_std=cv_std,
        config_hash=parsed.get("config_hash"),
        folds_fingerprint=None,
        data_fingerprint=None,
        message=str(row["description"]),
        score_source="kaggle",
        public_score=_score(row["publicScore"]),
        private_score=_score(row["privateScore"]),
        status=_status(row["status"]),
        kaggle_ref=str(row["ref"]),
    )


def sync(ledger: Ledger, submissions: pd.DataFrame) -> SyncResult:
    """Copy Kaggle's scores into the ledger; add Kaggle submissions it did not know."""
    entries = ledger.entries()
    taken: set[int] = set()
    updated = added = 0
    for _, row in submissions.iterrows():
        entry = _match(entries, row, taken)
        if entry is None:
            ledger.add(_external_entry(row))
            added += 1
            continue
        assert entry.id is not None
        taken.add(entry.id)
        ledger.set_scores(entry.id, _score(row["publicScore"]), _score(row["privateScore"]), _status(row["status"]), str(row["ref"]))
        updated += 1
    return SyncResult(updated=updated, added=added)


def board_cache(cfg: CompetitionConfig) -> Path:
    """Where the downloaded leaderboard is kept under its own name (the final board does not change)."""
    return cfg.leaderboard_dir


def download_board(cfg: CompetitionConfig, slug: str) -> Board:
    """Fetch the full leaderboard with the official client; cache its CSV under runs/ once it parses."""
    with tempfile.TemporaryDirectory() as tmp:
        run_kaggle(["competitions", "leaderboard", "-c", slug, "-d", "-p", tmp])
        archives = list(Path(tmp).glob("*.zip"))
        if not archives:
            raise DataError(f"`kaggle competitions leaderboard -d` wrote no zip file for {slug}")
        try:
            with zipfile.ZipFile(archives[0]) as zf:
                names = [n for n in zf.namelist() if n.endswith(".csv")]
                if not names:
                    raise DataError(f"{archives[0].name}: no CSV inside the leaderboard download")
                csv = Path(zf.extract(names[0], tmp))
        except zipfile.BadZipFile:
            raise DataError(f"{archives[0].name}: the leaderboard download is not a zip file") from None
        board = read_board(csv)
        with atomic_path(board_cache(cfg) / csv.name) as tmp_csv:
            shutil.copyfile(csv, tmp_csv)
    return Board(board.scores, f"{csv.name} (downloaded)")


def choose_board(cfg: CompetitionConfig, slug: str, leaderboard_file: Path | None, online: bool) -> Board:
    """A named file, else the cached or freshly downloaded table, else the known cut-offs."""
    if leaderboard_file is not None:
        return read_board(Path(leaderboard_file))
    cached = sorted(board_cache(cfg).glob("*.csv"))
    if cached:
        return read_board(cached[0])
    if online:
        try:
            return download_board(cfg, slug)
        except KaggleClientError:
            return known_cutoffs()
    return known_cutoffs()


def best_score(entry: Entry) -> tuple[float | None, str]:
    """The score to place: private when known (it decides the ranking), else public, else CV."""
    for value, kind in ((entry.private_score, "private"), (entry.public_score, "public"), (entry.cv_mean, "cv")):
        if value is not None:
            return value, kind
    return None, ""


def correlation(x: list[float | None], y: list[float | None]) -> tuple[float | None, int]:
    """Pearson correlation over the pairs where both are known (None below 3 pairs or no spread)."""
    pairs = np.array([(a, b) for a, b in zip(x, y, strict=True) if a is not None and b is not None], dtype=np.float64)
    if len(pairs) < 3 or np.ptp(pairs[:, 0]) == 0 or np.ptp(pairs[:, 1]) == 0:
        return None, len(pairs)
    return float(np.corrcoef(pairs[:, 0], pairs[:, 1])[0, 1]), len(pairs)


def plot_cv_vs_lb(entries: list[Entry], path: Path) -> dict[str, tuple[float | None, int]]:
    """Scatter CV against public and private scores with the y = x line; returns the correlations.
    Submissions with CV unknown (no sidecar) or no score yet are left out of both."""
    plt = pyplot()
    cv = [e.cv_mean for e in entries]
    stats = {board: correlation(cv, [getattr(e, f"{board}_score") for e in entries]) for board in ("public", "private")}
    fig, ax = plt.subplots(figsize=(6, 5))
    known: list[float] = []
    for board, marker in (("public", "o"), ("private", "s")):
        pts = [(e.cv_mean, getattr(e, f"{board}_score")) for e in entries if e.cv_mean is not None and getattr(e, f"{board}_score") is not None]
        r, n = stats[board]
        label = f"{board} (n={n}, r={r:.3f})" if r is not None else f"{board} (n={n}, r n/a)"
        if pts:
            ax.scatter(*zip(*pts, strict=True), marker=marker, label=label, alpha=0.8)
            known += [v for pair in pts for v in pair]
    if known:
        lo, hi = min(known), max(known)
        ax.plot([lo, hi], [lo, hi], color="grey", linestyle="--", linewidth=1, label="LB = CV")
    ax.set_xlabel("CV log loss (out of fold)")
    ax.set_ylabel("leaderboard log loss")
    ax.set_title("CV vs leaderboard")
    ax.legend(loc="upper left", fontsize=8)
    save_figure(fig, path)
    return stats


@dataclass(frozen=True)
class LbReport:
    """Everything `make lb` shows: rows with placements, correlations, the plot, the board used."""

    entries: list[Entry]
    placements: list[tuple[Placement | None, str]]
    correlations: dict[str, tuple[float | None, int]]
    plot: Path
    board: str
    synced: SyncResult | None
    sync_note: str


def leaderboard(cfg: CompetitionConfig, slug: str, leaderboard_file: Path | None = None, online: bool | None = None) -> LbReport:
    """Sync when credentials exist, then place every ledger entry and draw CV vs LB."""
    online = has_credentials() if online is None else online
    ledger = Ledger(cfg.ledger_path)
    synced, note = None, "not synced: no Kaggle credentials (offline scores only)"
    if online:
        try:
            synced = sync(ledger, fetch_submissions(slug))
            note = f"synced with Kaggle: {synced.updated} updated, {synced.added} added"
        except (KaggleClientError, CredentialsError) as exc:
            online, note = False, f"not synced, showing the ledger as it is: {exc}"
    entries = ledger.entries()
    board = choose_board(cfg, slug, leaderboard_file, online)
    placements = []
    for entry in entries:
        score, kind = best_score(entry)
        placements.append((board.place(score) if score is not None else None, kind))
    plot = cfg.lb_plot
    correlations = plot_cv_vs_lb(entries, plot)
    return LbReport(entries, placements, correlations, plot, board.source, synced, note)


def _cell(value: float | None) -> object:
    return "-" if value is None else value


def lb_table(report: LbReport) -> Table:
    """One row per submission: data kind, CV, public, private, where the score comes from, its placement ("-": unknown)."""
    columns = ["#", "submitted", "experiment", "method", "data", "CV", "CV sd", "public", "private", "from", "placed", "rank", "top %", "medal"]
    rows = []
    for entry, (place, kind) in zip(report.entries, report.placements, strict=True):
        rows.append(
            [
                entry.id,
                entry.submitted_at[:16],
                entry.experiment or "?",
                entry.method or "?",
                entry.data_kind or "-",
                _cell(entry.cv_mean),
                _cell(entry.cv_std),
                _cell(entry.public_score),
                _cell(entry.private_score),
                entry.score_source if entry.status == "complete" else f"{entry.score_source} ({entry.status})",
                kind or "-",
                f"{place.rank}/{place.teams}" if place else "-",
                f"{place.percentile:.1f}" if place else "-",
                place.medal if place and place.medal else "-",
            ]
        )
    return table(f"CV vs leaderboard; placement on the private board ({report.board})", columns, rows)
