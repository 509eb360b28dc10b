"""One fit loop for every network, in the manner of Lightning's loops and callbacks.

The loop owns what is the same for every framework: epochs, the batch order (drawn from the
fit's seed), the per-epoch validation log loss (`competition.metrics.logloss`), the best epoch so
far, and the hooks. What a callback does (early stopping, keeping the best epoch, learning-rate
schedules, gradual unfreezing, weight averaging: `competition.training.callbacks`) it does
through the hooks only; what differs per framework (building a batch, the forward/backward pass,
the optimizer) stays in the adapter behind `TrainableNetwork`. No framework is imported here.

Per epoch: `on_epoch_start`; per batch `on_step_start`, `network.train_step`, `on_step_end`;
`on_validation_start`; validation; `on_epoch_end(metrics)`. A callback stops the fit by setting
`loop.should_stop`. See docs/training-loop.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from competition.metrics import logloss
from competition.models.schema import Augment, FitResult, ModelInputs

TrainableState = dict[str, Any]  # name -> array-like copy (numpy array or framework tensor) supporting + and * by floats


class TrainableNetwork(Protocol):
    """What the loop and its callbacks need from a framework adapter (see `competition.models.base.NetworkModel`)."""

    def start_fit(self, train: ModelInputs, augment: Augment | None, seed: int) -> None:
        """Reset the head from `seed` and build the optimizer once, over every block the policy will ever train."""

    def open_blocks(self, flags: list[bool]) -> None:
        """Let block b train now iff flags[b] (a subset of the policy's blocks); the optimizer is kept."""

    def train_step(self, idx: np.ndarray, rng: np.random.Generator) -> float:
        """One optimizer step on the training rows `idx` (augmented with `rng`); returns the batch's mean loss."""

    def set_lr_multiplier(self, factor: float) -> None:
        """Scale every parameter group's configured learning rate by `factor` from the next step on."""

    def predict(self, inputs: ModelInputs, batch_size: int = 64) -> np.ndarray:
        """P(iceberg), shape (N,)."""

    def trainable_state(self) -> TrainableState:
        """Copies of every tensor training can change (the policy's blocks only: frozen ones never change)."""

    def load_trainable_state(self, state: TrainableState) -> None:
        """Put a `trainable_state` copy back."""


class Callback:
    """Hooks of the fit loop; each does nothing unless overridden."""

    def on_fit_start(self, loop: FitLoop) -> None:
        """After the network's `start_fit`, before the first epoch."""

    def on_epoch_start(self, loop: FitLoop) -> None:
        """Before the first batch of `loop.epoch`."""

    def on_step_start(self, loop: FitLoop) -> None:
        """Before optimizer step `loop.step` (counted over the whole fit from 0)."""

    def on_step_end(self, loop: FitLoop, loss: float) -> None:
        """After optimizer step `loop.step` with the batch's mean loss."""

    def on_validation_start(self, loop: FitLoop) -> None:
        """After the epoch's last batch, before the validation predictions."""

    def on_epoch_end(self, loop: FitLoop, metrics: dict[str, float]) -> None:
        """After validation; `loop.best_epoch` and `loop.improved` already count this epoch."""

    def on_fit_end(self, loop: FitLoop) -> None:
        """After the last epoch (also after an early stop); not called when the fit raises."""


def steps_per_epoch(n_rows: int, batch_size: int) -> int:
    """Batches per epoch: a last batch of one image is skipped (batch norm cannot train on it) unless it is all there is."""
    full, rest = divmod(n_rows, batch_size)
    return full + int(rest > 1 or (rest == 1 and n_rows == 1))


class FitLoop:
    """Runs a `TrainableNetwork` for up to `epochs` epochs of `batch_size` rows with `callbacks` (called in order)."""

    def __init__(self, network: TrainableNetwork, *, epochs: int, batch_size: int, callbacks: Sequence[Callback] = ()) -> None:
        self.network, self.epochs, self.batch_size, self.callbacks = network, epochs, batch_size, list(callbacks)
        self.epoch = 0
        self.step = 0
        self.steps_per_epoch = 0
        self.history: dict[str, list[float]] = {"train_loss": [], "val_loss": []}
        self.best_epoch = 0
        self.best_loss = math.inf
        self.improved = False
        self.should_stop = False

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the nominal fit (all epochs; early stopping may end sooner)."""
        return self.epochs * self.steps_per_epoch

    def run(self, train: ModelInputs, valid: ModelInputs, *, augment: Augment | None, seed: int) -> FitResult:
        """Fit on `train`, validate on `valid` (labels required) after each epoch; the best epoch is the lowest log loss."""
        if valid.y is None:
            raise ValueError("the fit loop needs validation labels")
        rng = np.random.default_rng(seed)  # batch order, then augmentation, in one stream
        self.steps_per_epoch = steps_per_epoch(len(train), self.batch_size)
        self.network.start_fit(train, augment, seed)
        self._call("on_fit_start")
        for epoch in range(self.epochs):
            self.epoch = epoch
            self._call("on_epoch_start")
            self._train_epoch(rng.permutation(len(train)), rng)
            self._call("on_validation_start")
            val_loss = logloss(np.asarray(valid.y), self.network.predict(valid, batch_size=max(self.batch_size, 64)))
            self.history["val_loss"].append(val_loss)
            self.improved = val_loss < self.best_loss
            if self.improved:
                self.best_loss, self.best_epoch = val_loss, self.epoch
            self._call("on_epoch_end", {"train_loss": self.history["train_loss"][-1], "val_loss": val_loss})
            if self.should_stop:
                break
        self._call("on_fit_end")
        return FitResult(history=self.history, best_epoch=self.best_epoch)

    def _train_epoch(self, order: np.ndarray, rng: np.random.Generator) -> None:
        total, rows = 0.0, 0
        for i in range(0, len(order), self.batch_size):
            idx = order[i : i + self.batch_size]
            if len(idx) < 2 and len(order) > 1:
                continue  # batch norm cannot train on a single image
            self._call("on_step_start")
            loss = self.network.train_step(idx, rng)
            self._call("on_step_end", loss)
            total, rows = total + loss * len(idx), rows + len(idx)
            self.step += 1
        self.history["train_loss"].append(total / max(rows, 1))

    def _call(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)
