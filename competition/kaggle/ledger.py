"""The submission ledger: every submission with its CV and, once known, its leaderboard scores.

One SQLite file (`runs/ledger.sqlite`), one row per submission. SQLite transactions make
each change atomic, and the file survives `make clean` of a single experiment. Scores come
from Kaggle (`kaggle competitions submissions`) or from the offline scorer when the data is
simulated; `score_source` says which. `cv_mean` is NULL for a file submitted without a sidecar
(CV unknown); `data_kind` says which data a submission was made on (simulated, real, NULL:
unknown). A ledger written before a column existed gets it (NULL in old rows) when opened.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path


@dataclass
class Entry:
    """One submission as the ledger stores it (scores None until known)."""

    file: str
    submitted_at: str
    experiment: str | None
    method: str | None
    cv_mean: float | None
    cv_std: float | None
    config_hash: str | None
    folds_fingerprint: str | None
    data_fingerprint: str | None
    message: str
    score_source: str
    public_score: float | None = None
    private_score: float | None = None
    status: str = "pending"
    kaggle_ref: str | None = None
    data_kind: str | None = None  # "simulated" / "real" from the sidecar's `data`; None: unknown
    id: int | None = None


_COLUMNS = [f.name for f in fields(Entry) if f.name != "id"]
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS submissions (id INTEGER PRIMARY KEY AUTOINCREMENT, "
    "file TEXT NOT NULL, submitted_at TEXT NOT NULL, experiment TEXT, method TEXT, cv_mean REAL, cv_std REAL, "
    "config_hash TEXT, folds_fingerprint TEXT, data_fingerprint TEXT, message TEXT NOT NULL, "
    "score_source TEXT NOT NULL CHECK (score_source IN ('kaggle', 'offline')), public_score REAL, private_score REAL, "
    "status TEXT NOT NULL, kaggle_ref TEXT, data_kind TEXT)"
)
_ADDED = {"data_kind": "TEXT"}  # columns newer than the first ledgers: added to older files when opened


def _migrate(con: sqlite3.Connection) -> None:
    """Add the columns an older ledger file lacks (existing rows get NULL: unknown)."""
    have = {row[1] for row in con.execute("PRAGMA table_info(submissions)")}
    for name, kind in _ADDED.items():
        if name not in have:
            try:
                con.execute(f"ALTER TABLE submissions ADD COLUMN {name} {kind}")
            except sqlite3.OperationalError as exc:  # another process added it in the meantime
                if "duplicate column" not in str(exc):
                    raise


class Ledger:
    """Read and write the submissions table."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection whose block is one transaction (committed on success, rolled back on error)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(self.path)) as con:
            con.row_factory = sqlite3.Row
            with con:
                con.execute(_SCHEMA)
                _migrate(con)
                yield con

    def add(self, entry: Entry) -> int:
        """Record a submission; returns its ledger id."""
        values = asdict(entry)
        with self._connect() as con:
            cur = con.execute(
                f"INSERT INTO submissions ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})",
                [values[c] for c in _COLUMNS],
            )
            return int(cur.lastrowid or 0)

    def entries(self) -> list[Entry]:
        """All submissions, oldest first."""
        if not self.path.exists():
            return []
        with self._connect() as con:
            rows = con.execute("SELECT * FROM submissions ORDER BY submitted_at, id").fetchall()
        return [Entry(**dict(row)) for row in rows]

    def set_scores(self, entry_id: int, public: float | None, private: float | None, status: str, kaggle_ref: str | None) -> None:
        """Store the leaderboard's answer for one submission."""
        with self._connect() as con:
            con.execute(
                "UPDATE submissions SET public_score = ?, private_score = ?, status = ?, kaggle_ref = COALESCE(?, kaggle_ref) WHERE id = ?",
                (public, private, status, kaggle_ref, entry_id),
            )
