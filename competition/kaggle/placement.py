"""Where a score would have landed on the competition's final private leaderboard.

With the full table (the client's leaderboard download, or a file the user names) the rank
is exact: one plus the number of teams that scored strictly better. Without it the rank is
interpolated between the published cut-offs below, which are facts of this competition
(final private leaderboard, 3,330 teams). Each placement says which basis it used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from competition.errors import DataError

TEAMS = 3330
# (rank, private log loss) on the final private leaderboard.
CUTOFFS: tuple[tuple[float, float], ...] = (
    (1, 0.08227),
    (5, 0.08883),
    (16, 0.11374),  # gold cut
    (166, 0.13753),  # silver cut
    (333, 0.14552),  # bronze cut
    ((TEAMS + 1) / 2, 0.20371),  # median
    (3078, 0.6931),  # a constant 0.5
)
MEDAL_RANKS = (("gold", 16), ("silver", 166), ("bronze", 333))
INTERPOLATED = "interpolated on the known cut-offs"


@dataclass(frozen=True)
class Placement:
    """A score's rank out of the teams, its percentile (lower is better) and medal."""

    score: float
    rank: int
    teams: int
    percentile: float
    medal: str
    basis: str


def medal(rank: int) -> str:
    """The medal a rank earned by this competition's cut-offs ('' for none)."""
    return next((name for name, cut in MEDAL_RANKS if rank <= cut), "")


def _placement(score: float, rank: float, teams: int, basis: str) -> Placement:
    r = int(min(max(round(rank), 1), teams))
    return Placement(score=score, rank=r, teams=teams, percentile=100.0 * r / teams, medal=medal(r), basis=basis)


class Board:
    """A leaderboard: every team's score, or only the published cut-offs."""

    def __init__(self, scores: np.ndarray | None, source: str) -> None:
        self.scores = None if scores is None else np.sort(np.asarray(scores, dtype=np.float64))
        self.source = source

    @property
    def teams(self) -> int:
        return TEAMS if self.scores is None else len(self.scores)

    def place(self, score: float) -> Placement:
        """Rank `score` among the teams (ties go to the submission being placed)."""
        if self.scores is None:
            ranks, scores = zip(*CUTOFFS, strict=True)
            return _placement(score, float(np.interp(score, scores, ranks)), TEAMS, INTERPOLATED)
        rank = 1 + int(np.searchsorted(self.scores, score, side="left"))
        return _placement(score, rank, self.teams, f"leaderboard {self.source}")


def known_cutoffs() -> Board:
    """The board used when no full table is at hand."""
    return Board(None, INTERPOLATED)


def read_board(path: Path) -> Board:
    """Read a leaderboard CSV: Kaggle's download (TeamId,...,Score) or `rank,score`."""
    try:
        frame = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable leaderboard CSV ({exc.__class__.__name__})") from None
    column = next((c for c in frame.columns if str(c).strip().lower() == "score"), None)
    if column is None:
        raise DataError(f"{path}: no 'Score' column; header is {','.join(map(str, frame.columns))}")
    scores = pd.to_numeric(frame[column], errors="coerce").dropna().to_numpy()
    if len(scores) == 0:
        raise DataError(f"{path}: column '{column}' holds no numeric scores")
    return Board(scores, path.name)
