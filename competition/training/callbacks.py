"""The fit loop's callbacks: early stopping, keep-best, learning-rate schedule, gradual unfreezing, weight EMA.

Each talks to the network only through `competition.training.loop.TrainableNetwork`, so one
implementation serves every framework. `competition.models.base.NetworkModel.fit` assembles them
from the model config (docs/training-loop.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from competition.models.policies import unfrozen_at_epoch
from competition.training.loop import Callback, FitLoop, TrainableState
from competition.training.schedules import ScheduleName, lr_multiplier, warmup_steps


class EarlyStopping(Callback):
    """Stop when the validation loss has not improved for `patience` epochs after the best one since the warm-up.

    The epochs of the learning-rate warm-up (`warmup_epochs`, as `LearningRateSchedule` counts its steps: the
    epochs until its last warm-up step, so 1 for the default 1.0) are not watched, as with Keras's
    `EarlyStopping(start_from_epoch=...)`, which also leaves them out of the best. A warm-up as long as the fit
    leaves nothing to watch: no early stop. Keep-best still keeps the best of all epochs.

    Why (session 9): on small data the first epochs at the full rate after the warm-up spike. MobileNetV2
    `all_but_stem` on the ladder's 200 images (160 fit rows per fold, 5 epochs, patience 2) validated 0.60-0.64
    after the warm-up epoch, then 0.89-2.39, and 0.24-0.45 by the fifth; watched from the warm-up epoch, patience
    stopped every fold at the third epoch (CV 0.615, worse than the class prior). Watched from the second epoch,
    every fold of those curves runs to the fifth, as a fit without early stopping does (CV 0.383). A spike
    longer than `patience` still stops the fit (docs/training-loop.md).
    """

    def __init__(self, patience: int, warmup_epochs: float = 0.0) -> None:
        self.patience, self.warmup_epochs = patience, warmup_epochs
        self.start, self.best_loss, self.best_epoch = 0, math.inf, 0

    def on_fit_start(self, loop: FitLoop) -> None:
        spe = loop.steps_per_epoch
        self.start = math.ceil(warmup_steps(self.warmup_epochs, spe) / spe) if spe else 0
        self.best_loss, self.best_epoch = math.inf, self.start

    def on_epoch_end(self, loop: FitLoop, metrics: dict[str, float]) -> None:
        if loop.epoch < self.start:
            return
        if metrics["val_loss"] < self.best_loss:
            self.best_loss, self.best_epoch = metrics["val_loss"], loop.epoch
        elif loop.epoch - self.best_epoch >= self.patience:
            loop.should_stop = True


class KeepBest(Callback):
    """Snapshot the trainable state at each new best epoch and put the best one back when the fit ends."""

    def __init__(self) -> None:
        self.state: TrainableState | None = None

    def on_epoch_end(self, loop: FitLoop, metrics: dict[str, float]) -> None:
        if loop.improved:
            self.state = loop.network.trainable_state()

    def on_fit_end(self, loop: FitLoop) -> None:
        if self.state is not None:
            loop.network.load_trainable_state(self.state)


class LearningRateSchedule(Callback):
    """Per step: the multiplier of `competition.training.schedules.lr_multiplier` on every group's rate.

    `warmup_epochs` may be a fraction; warm-up and annealing count the nominal steps (all epochs).
    """

    def __init__(self, name: ScheduleName, warmup_epochs: float, min_ratio: float) -> None:
        self.name, self.warmup_epochs, self.min_ratio = name, warmup_epochs, min_ratio

    def on_step_start(self, loop: FitLoop) -> None:
        warmup = warmup_steps(self.warmup_epochs, loop.steps_per_epoch)
        loop.network.set_lr_multiplier(lr_multiplier(self.name, loop.step, loop.total_steps, warmup, self.min_ratio))


class GradualUnfreezing(Callback):
    """Start with the head; every `every` epochs open one more of the policy's blocks, top-down (`policies.unfrozen_at_epoch`).

    The network's optimizer was built over all of `target` at the start, so opening a block keeps the
    state (moments, step counts) of the blocks already training.
    """

    def __init__(self, target: list[bool], every: int) -> None:
        self.target, self.every = list(target), every
        self.open: list[bool] | None = None

    def on_epoch_start(self, loop: FitLoop) -> None:
        flags = unfrozen_at_epoch(self.target, loop.epoch, self.every)
        if flags != self.open:
            loop.network.open_blocks(flags)
            self.open = flags


def _is_float(value: Any) -> bool:
    """A floating tensor or array (integer buffers such as batch norm's step count are not averaged)."""
    dtype = value.dtype
    return bool(getattr(dtype, "is_floating_point", False) or getattr(dtype, "kind", "") == "f")


class WeightEma(Callback):
    """Exponential moving average of the trainable weights; validation (and so keep-best) sees the average.

    After each step: average <- d * average + (1 - d) * weights with d = min(decay, (1 + t) / (10 + t))
    at update t, the warm-up of TensorFlow's `tf.train.ExponentialMovingAverage(num_updates=t)`, so
    short fits are not dominated by the starting weights. Before validation the average is swapped
    in; training resumes from the raw weights at the next epoch. Costs one copy of the trainable
    tensors per step.
    """

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.average: TrainableState = {}
        self.raw: TrainableState | None = None
        self.updates = 0

    def on_fit_start(self, loop: FitLoop) -> None:
        self.average, self.raw, self.updates = loop.network.trainable_state(), None, 0

    def on_epoch_start(self, loop: FitLoop) -> None:
        if self.raw is not None:
            loop.network.load_trainable_state(self.raw)
            self.raw = None

    def on_step_end(self, loop: FitLoop, loss: float) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        current = loop.network.trainable_state()
        self.average = {k: d * a + (1 - d) * current[k] if _is_float(a) else current[k] for k, a in self.average.items()}
        self.updates += 1

    def on_validation_start(self, loop: FitLoop) -> None:
        self.raw = loop.network.trainable_state()
        loop.network.load_trainable_state(self.average)


class EpochReport(Callback):
    """Pass each epoch's metrics to the caller's `on_epoch(epoch, metrics)`; what it raises ends the fit."""

    def __init__(self, on_epoch: Callable[[int, dict[str, float]], None]) -> None:
        self.on_epoch = on_epoch

    def on_epoch_end(self, loop: FitLoop, metrics: dict[str, float]) -> None:
        self.on_epoch(loop.epoch, metrics)
