"""Learning-rate schedules as multipliers of the configured rate, one value per optimizer step.

A schedule maps step `s` of `total` nominal steps (epochs x batches per epoch; early stopping may
end the fit sooner) to a factor in (0, 1] that multiplies every parameter group's own rate, so
discriminative per-block rates keep their ratios. `warmup` steps come first:

- `constant`: a linear warm-up (s + 1) / warmup, then 1.
- `warmup_cosine`: the same linear warm-up, then cosine annealing from 1 to `min_ratio` at step
  `total` (SGDR without restarts: Loshchilov & Hutter, 2017, eq. 5; timm's CosineLRScheduler).
- `one_cycle`: cosine rise from 1/25 to 1 over the warm-up, then cosine fall to `min_ratio`
  (Smith & Topin, 2019, "Super-convergence"; the shape and the start 1/25 of
  `torch.optim.lr_scheduler.OneCycleLR` with `anneal_strategy="cos"`, `div_factor=25`).
"""

from __future__ import annotations

import math
from typing import Literal

ScheduleName = Literal["warmup_cosine", "one_cycle", "constant"]
ONE_CYCLE_START = 1 / 25  # OneCycleLR's default div_factor


def _cosine(start: float, end: float, progress: float) -> float:
    """Cosine interpolation from `start` (progress 0) to `end` (progress 1)."""
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def lr_multiplier(name: ScheduleName, step: int, total: int, warmup: int, min_ratio: float) -> float:
    """The factor on the base learning rates at optimizer step `step` (0-based) of `total` nominal steps.

    `warmup` steps (0 = none) ramp up first; `min_ratio` is the floor the annealing ends on.
    Raises ValueError for an unknown schedule name.
    """
    if name == "one_cycle":
        if step < warmup:
            return _cosine(ONE_CYCLE_START, 1.0, step / warmup)
        return _cosine(1.0, min_ratio, (step - warmup) / max(1, total - warmup))
    if step < warmup:
        return (step + 1) / warmup
    if name == "constant":
        return 1.0
    if name == "warmup_cosine":
        return _cosine(1.0, min_ratio, (step - warmup) / max(1, total - warmup))
    raise ValueError(f"unknown learning-rate schedule {name!r}; expected warmup_cosine, one_cycle or constant")


def warmup_steps(warmup_epochs: float, steps_per_epoch: int) -> int:
    """Optimizer steps of a warm-up of `warmup_epochs` epochs (fractions allowed) at `steps_per_epoch` steps each."""
    return round(warmup_epochs * steps_per_epoch)
