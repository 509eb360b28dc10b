"""Clipping final probabilities to [eps, 1 - eps], eps chosen on out-of-fold predictions.

Log loss punishes a confident mistake without bound; the winners clipped to [0.001, 0.999].
Which eps is best depends on how often the ensemble is confidently wrong, so it is chosen on
OOF predictions from a small grid rather than fixed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from competition.metrics import logloss


def clip(p: np.ndarray, eps: float) -> np.ndarray:
    """Probabilities clipped to [eps, 1 - eps]."""
    return np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)


def eps_scores(p: np.ndarray, y: np.ndarray, grid: Sequence[float]) -> dict[float, float]:
    """Log loss of the clipped predictions for every eps of the grid."""
    return {float(eps): logloss(y, clip(p, eps)) for eps in grid}


def choose_eps(p: np.ndarray, y: np.ndarray, grid: Sequence[float]) -> float:
    """The eps of the grid with the lowest OOF log loss (the smallest one on ties: clip no more than needed)."""
    scores = eps_scores(p, y, grid)
    best = min(scores.values())
    return min(eps for eps, score in scores.items() if score <= best + 1e-12)
