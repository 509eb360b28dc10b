"""The competition metric, once: binary log loss as Kaggle scores it (a leaf module, numpy only).

Every score in the harness comes from `logloss`: a network's validation loss for early stopping
(`models/timm_net.py`, `models/keras_vgg.py`), a unit's and a run's CV (`training/trainer.py`,
`training/store.cv_logloss`), the blenders, the stacker, the clipping search and nested CV
(`stacking/`), and the offline leaderboard (`kaggle/scoring.py`). Artefact keys keep their names
(`logloss` in fold scores, `cv_logloss` in meta.json, `cv_mean` in a submission's sidecar).
"""

from __future__ import annotations

import numpy as np

EPS = 1e-15  # Kaggle clips submitted probabilities to [EPS, 1 - EPS] before taking logs


def logloss(y: np.ndarray, p: np.ndarray) -> float:
    """Binary log loss of probabilities `p` of class 1 against labels `y` in {0, 1}, Kaggle's definition:

        p <- min(max(p, 1e-15), 1 - 1e-15);  logloss = -mean(y * log(p) + (1 - y) * log(1 - p))

    Source: Kaggle's metric page for log loss (the Kaggle wiki "LogLoss", https://www.kaggle.com/wiki/LogLoss,
    which gives the 1e-15 clipping) as referenced by the competition's evaluation page
    (https://www.kaggle.com/competitions/statoil-iceberg-classifier-challenge/overview/evaluation:
    "Submissions are evaluated on the log loss between the predicted values and the ground truth").
    So a certain mistake (p = 0 for an iceberg) costs -log(1e-15) = 34.54 for its row, not infinity.

    `p` is one probability per row, or a classifier's (n, 2) `predict_proba` (column 1 is class 1).
    """
    return float(np.mean(row_logloss(y, p)))


def row_logloss(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Each row's term of `logloss` (shape (N,), same clipping and inputs); its mean is `logloss(y, p)`.

    For paired comparisons of two models on the same rows (`paired_difference`: the policy race, the ladder's targets).
    Raises ValueError when the lengths differ or there are no rows.
    """
    q = np.asarray(p, dtype=np.float64)
    if q.ndim == 2 and q.shape[1] == 2:
        q = q[:, 1]
    q = np.clip(q.ravel(), EPS, 1.0 - EPS)
    t = np.asarray(y, dtype=np.float64).ravel()
    if q.shape != t.shape:
        raise ValueError(f"logloss: {t.size} labels but {q.size} predictions")
    if t.size == 0:
        raise ValueError("logloss: no rows to score")
    return -(t * np.log(q) + (1.0 - t) * np.log(1.0 - q))


def paired_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean and standard error of `a - b`, two models' per-row losses (shape (N,)) paired over the same rows.

    SE = sd(a - b) / sqrt(N) with the sample sd (ddof 1); 0.0 for one row. Pairing removes what the rows
    share (hard rows are hard for both), so it is the error of a *difference* of two log losses, far smaller
    than either's own. Raises ValueError when the shapes differ or there are no rows.
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"paired_difference: two per-row loss vectors of one length needed, got shapes {x.shape} and {y.shape}")
    if x.size == 0:
        raise ValueError("paired_difference: no rows")
    d = x - y
    se = float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else 0.0
    return float(d.mean()), se
