"""The fit loop and each callback, once, through a framework-free network (numpy logistic regression).

Adapters (timm, Keras) are tested for their few hooks in tests/test_models_timm.py and tests/test_models_keras.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from competition.models.schema import Augment, ModelInputs
from competition.training.callbacks import EarlyStopping, EpochReport, GradualUnfreezing, KeepBest, LearningRateSchedule, WeightEma
from competition.training.loop import Callback, FitLoop, TrainableState, steps_per_epoch
from competition.training.schedules import ONE_CYCLE_START, lr_multiplier


class LogisticNet:
    """Blocks w0, w1, w2 (one weight each) and the head (bias); SGD with momentum built once per fit."""

    def __init__(self, val_losses: list[float] | None = None) -> None:
        self.w = np.zeros(4)  # w0, w1, w2, bias
        self.velocity = np.zeros(4)
        self.open = [True] * 4
        self.lr, self.factor = 0.5, 1.0
        self.builds = 0
        self.factors: list[float] = []
        self.batches: list[np.ndarray] = []
        self.val_losses, self.predictions = val_losses, 0
        self.train: ModelInputs | None = None

    def start_fit(self, train: ModelInputs, augment: Augment | None, seed: int) -> None:
        self.train, self.builds, self.velocity = train, self.builds + 1, np.zeros(4)

    def open_blocks(self, flags: list[bool]) -> None:
        self.open = list(flags)

    def _design(self, x: np.ndarray) -> np.ndarray:
        return np.column_stack([x, np.ones(len(x))])

    def train_step(self, idx: np.ndarray, rng: np.random.Generator) -> float:
        assert self.train is not None and self.train.y is not None
        self.batches.append(idx.copy())
        self.factors.append(self.factor)
        a, y = self._design(self.train.x[idx]), self.train.y[idx]
        p = 1 / (1 + np.exp(-a @ self.w))
        grad = a.T @ (p - y) / len(idx) * np.asarray(self.open, float)
        self.velocity = 0.9 * self.velocity + grad
        self.w -= self.lr * self.factor * self.velocity * np.asarray(self.open, float)
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))

    def set_lr_multiplier(self, factor: float) -> None:
        self.factor = factor

    def predict(self, inputs: ModelInputs, batch_size: int = 64) -> np.ndarray:
        if self.val_losses is not None:  # scripted validation: all labels are 1, so log loss = -log p
            self.predictions += 1
            return np.full(len(inputs), math.exp(-self.val_losses[self.predictions - 1]))
        return 1 / (1 + np.exp(-self._design(inputs.x) @ self.w))

    def trainable_state(self) -> TrainableState:
        return {"w": self.w.copy(), "step": np.array(len(self.batches))}

    def load_trainable_state(self, state: TrainableState) -> None:
        self.w = state["w"].copy()


class Record(Callback):
    """Keeps the network's state at each hook it is asked for."""

    def __init__(self) -> None:
        self.epoch_end: list[np.ndarray] = []
        self.epoch_start: list[np.ndarray] = []
        self.step_end: list[np.ndarray] = []
        self.open: list[list[bool]] = []

    def on_epoch_start(self, loop: FitLoop) -> None:
        net = loop.network
        assert isinstance(net, LogisticNet)
        self.epoch_start.append(net.w.copy())
        self.open.append(list(net.open))

    def on_step_end(self, loop: FitLoop, loss: float) -> None:
        assert isinstance(loop.network, LogisticNet)
        self.step_end.append(loop.network.w.copy())

    def on_epoch_end(self, loop: FitLoop, metrics: dict[str, float]) -> None:
        assert isinstance(loop.network, LogisticNet)
        self.epoch_end.append(loop.network.w.copy())


def _data(n: int, seed: int = 0, ones: bool = False) -> ModelInputs:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    y = np.ones(n) if ones else (x @ np.array([2.0, -1.0, 0.5]) + rng.normal(scale=0.5, size=n) > 0).astype(float)
    return ModelInputs(x, np.zeros(n), y, is_features=True)


def _fit(net: LogisticNet, callbacks: list[Callback], *, epochs: int, n: int = 40, batch_size: int = 8, seed: int = 0, ones: bool = False) -> FitLoop:
    loop = FitLoop(net, epochs=epochs, batch_size=batch_size, callbacks=callbacks)
    loop.run(_data(n, ones=ones), _data(20, seed=1, ones=ones), augment=None, seed=seed)
    return loop


def test_batches_follow_the_seed_and_skip_a_single_image_batch() -> None:
    assert [steps_per_epoch(n, 4) for n in (1, 8, 9, 10)] == [1, 2, 2, 3]
    first, again, other = LogisticNet(), LogisticNet(), LogisticNet()
    for net, seed in ((first, 5), (again, 5), (other, 6)):
        _fit(net, [], epochs=2, n=9, batch_size=4, seed=seed)
    assert [len(b) for b in first.batches] == [4, 4, 4, 4]  # the ninth row of each epoch is a batch of one: skipped
    assert all(np.array_equal(a, b) for a, b in zip(first.batches, again.batches, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first.batches, other.batches, strict=True))
    loop = _fit(LogisticNet(), [], epochs=3)
    assert loop.history["val_loss"][-1] < math.log(2)  # it learns: better than the constant 0.5


def test_early_stopping_stops_patience_epochs_after_the_best() -> None:
    net = LogisticNet(val_losses=[0.5, 0.4, 0.45, 0.46, 0.47, 0.3])
    loop = _fit(net, [EarlyStopping(patience=2)], epochs=6, ones=True)
    assert loop.history["val_loss"] == pytest.approx([0.5, 0.4, 0.45, 0.46])  # epoch 3 is 2 epochs after the best (1)
    assert loop.best_epoch == 1


def test_early_stopping_does_not_watch_the_warm_up_epochs() -> None:
    """A warm-up epoch's loss (0.62) followed by the spike of the first full-rate epochs: watched from epoch 0, patience 2
    stops at epoch 2 with the warm-up epoch the best; with the warm-up's epoch left out, the recovery is reached."""
    curve = [0.62, 1.66, 1.70, 0.65, 0.26]
    stopped = _fit(LogisticNet(val_losses=curve), [EarlyStopping(patience=2)], epochs=5, ones=True)
    assert stopped.history["val_loss"] == pytest.approx(curve[:3])
    kept = _fit(LogisticNet(val_losses=curve), [EarlyStopping(patience=2, warmup_epochs=1.0)], epochs=5, ones=True)
    assert kept.history["val_loss"] == pytest.approx(curve) and kept.best_epoch == 4
    longer = [0.62, 1.66, 1.70, 1.80, 0.1]  # from the warm-up's end on, patience counts as before: 2 epochs after 1.66
    assert len(_fit(LogisticNet(val_losses=longer), [EarlyStopping(patience=2, warmup_epochs=1.0)], epochs=5, ones=True).history["val_loss"]) == 4


@pytest.mark.parametrize(
    ("warmup_epochs", "steps", "start"),
    [(0.0, 5, 0), (0.5, 5, 1), (1.0, 5, 1), (1.1, 5, 2), (1.1, 4, 1), (0.1, 3, 0), (2.0, 5, 2)],
)
def test_the_epochs_left_out_are_those_of_the_warm_up_steps(warmup_epochs: float, steps: int, start: int) -> None:
    """As `LearningRateSchedule` counts them: round(warmup_epochs x steps per epoch) steps (1.1 x 4 = 4 steps: one epoch;
    0.1 x 3 = 0 steps: none), and the epochs until the last of them."""
    stopping = EarlyStopping(patience=1, warmup_epochs=warmup_epochs)
    _fit(LogisticNet(), [stopping], epochs=1, n=steps * 8, batch_size=8)
    assert stopping.start == start


def test_fit_gives_early_stopping_the_warm_up() -> None:
    """`NetworkModel.fit` builds early stopping with the optimizer's `warmup_epochs`."""
    from types import SimpleNamespace

    from competition.models.base import NetworkModel

    optimizer = SimpleNamespace(schedule="warmup_cosine", warmup_epochs=1.5, min_lr_ratio=0.01)
    model = SimpleNamespace(config=SimpleNamespace(optimizer=optimizer, train=SimpleNamespace(unfreeze_every=None, ema_decay=None)))
    callbacks = NetworkModel._callbacks(model, [True], 3, None)  # type: ignore[arg-type]
    [stopping] = [c for c in callbacks if isinstance(c, EarlyStopping)]
    assert (stopping.patience, stopping.warmup_epochs) == (3, 1.5)


def test_keep_best_restores_the_best_epochs_state() -> None:
    net, record = LogisticNet(val_losses=[0.6, 0.4, 0.5, 0.45]), Record()
    loop = _fit(net, [record, KeepBest()], epochs=4, ones=True)
    assert loop.best_epoch == 1
    np.testing.assert_array_equal(net.w, record.epoch_end[1])
    assert not np.array_equal(net.w, record.epoch_end[-1])


def test_schedule_values_at_known_steps() -> None:
    total, warmup, floor = 100, 10, 0.01
    ramp = [lr_multiplier("warmup_cosine", s, total, warmup, floor) for s in range(warmup)]
    assert ramp == pytest.approx([(s + 1) / warmup for s in range(warmup)])  # linear warm-up, 1 at its last step
    assert lr_multiplier("warmup_cosine", warmup, total, warmup, floor) == 1.0
    assert lr_multiplier("warmup_cosine", 55, total, warmup, floor) == pytest.approx((1 + floor) / 2)  # halfway down the cosine
    assert lr_multiplier("warmup_cosine", total, total, warmup, floor) == pytest.approx(floor)  # the floor at the nominal end
    assert lr_multiplier("one_cycle", 0, total, warmup, floor) == pytest.approx(ONE_CYCLE_START)
    assert lr_multiplier("one_cycle", warmup, total, warmup, floor) == 1.0  # the peak
    assert lr_multiplier("one_cycle", 5, total, warmup, floor) == pytest.approx((1 + ONE_CYCLE_START) / 2)
    assert lr_multiplier("one_cycle", total, total, warmup, floor) == pytest.approx(floor)
    assert [lr_multiplier("constant", s, total, 2, floor) for s in (0, 1, 2, 99)] == [0.5, 1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="unknown learning-rate schedule"):
        lr_multiplier("step", 0, total, 0, floor)  # type: ignore[arg-type]


def test_schedule_callback_sets_each_steps_multiplier() -> None:
    net = LogisticNet()
    _fit(net, [LearningRateSchedule("warmup_cosine", 0.5, 0.0)], epochs=4, n=40, batch_size=8)  # 5 steps an epoch, warm-up 2 or 3 steps
    warmup = round(0.5 * 5)
    assert net.factors == pytest.approx([lr_multiplier("warmup_cosine", s, 20, warmup, 0.0) for s in range(20)])
    assert net.factors[0] == pytest.approx(1 / warmup) and max(net.factors) == 1.0 and net.factors[-1] < 0.01


def test_gradual_unfreezing_opens_blocks_top_down_with_one_optimizer() -> None:
    net, record = LogisticNet(), Record()
    target = [False, True, True, True]  # w0 frozen by the policy
    _fit(net, [GradualUnfreezing(target, every=2), record], epochs=6)
    assert record.open == [[False, False, False, True]] * 2 + [[False, False, True, True]] * 2 + [[False, True, True, True]] * 2
    assert net.builds == 1  # the optimizer (its momentum) was built once and kept across each unfreeze
    starts = np.array(record.epoch_start)
    assert np.all(starts[:, 0] == 0) and np.all(starts[:3, 1] == 0) and starts[4, 1] == 0 and starts[5, 1] != 0
    assert np.all(starts[:2, 2] == 0) and starts[3, 2] != 0


def test_weight_ema_validates_the_average_and_trains_on_from_the_raw_weights() -> None:
    net, record = LogisticNet(), Record()
    decay = 0.8
    ema = WeightEma(decay)
    _fit(net, [ema, record], epochs=2, n=24, batch_size=8)  # 3 steps an epoch
    average = np.zeros(4)
    for t, raw in enumerate(record.step_end):
        d = min(decay, (1 + t) / (10 + t))
        average = d * average + (1 - d) * raw
        if t == 2:
            np.testing.assert_allclose(record.epoch_end[0], average)  # validated with the average
            np.testing.assert_array_equal(record.epoch_start[1], raw)  # the next epoch trains on from the raw weights
    np.testing.assert_allclose(record.epoch_end[1], average)
    assert not np.allclose(average, record.step_end[-1])


def test_an_exception_in_on_epoch_propagates() -> None:
    class Stop(Exception):
        pass

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        assert set(metrics) == {"train_loss", "val_loss"}
        if epoch == 1:
            raise Stop

    net = LogisticNet()
    with pytest.raises(Stop):
        _fit(net, [EpochReport(on_epoch), KeepBest()], epochs=4)
    assert len(net.batches) == 2 * 5  # two epochs ran, no more
