"""Log-odds helpers of the stacking features and blenders.

The metric itself lives in `competition.metrics` (one definition for the whole harness); `logloss`
is imported here only so existing `from competition.stacking.metrics import logloss` keep working.
"""

from __future__ import annotations

import numpy as np

from competition.metrics import logloss

__all__ = ["logit", "logloss", "sigmoid"]


def logit(p: np.ndarray, floor: float = 1e-6) -> np.ndarray:
    """Log-odds, with probabilities kept away from 0 and 1 so one confident model cannot dominate."""
    q = np.clip(np.asarray(p, dtype=np.float64), floor, 1 - floor)
    return np.log(q) - np.log1p(-q)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Inverse of `logit`."""
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))
