"""The contract between the model zoo and the fold trainer.

Every model (Keras or timm) is an `ImageModel`: built from a `ModelConfig` by
`competition.models.registry.create_model`, fitted on arrays, saved to a directory (`save`) and
read back by `competition.models.registry.load_model`. The trainer and the tests treat all
models alike through this interface only. Its value types and config live in
`competition.models.schema`.

Frozen prefix: after `apply_policy`, the bottom `frozen_prefix()` blocks are frozen *and*
run in inference mode (batch-norm uses its running statistics, no dropout), so their output
depends only on the image. The trainer may compute `prefix_features` once and pass them to
`fit` / `predict` with `ModelInputs(is_features=True)`; only the blocks above the prefix then
run. Both paths give the same predictions for the same weights.

Input statistics (channel standardiser, angle scaling): `prepare(images, angle)` fits them;
`fit` on raw images fits them on `train` when `prepare` was not called before. A caller that
caches prefix features calls `prepare` once first, so the cached and the raw paths see the same
statistics; `fit` never refits them.

Networks trained by gradient steps subclass `NetworkModel`, whose `fit` runs the shared fit loop
(`competition.training.loop`, callbacks in `competition.training.callbacks`, docs/training-loop.md);
a model that fits otherwise (the linear probe) implements `ImageModel.fit` itself.

Beyond the first published sketch: `prepare`, `domain_divergence` (what `auto` measures),
`load_dir` (used by `registry.load_model`), and the module helper `check_fit_inputs` (the metric is `competition.metrics.logloss`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from competition.models import policies, similarity
from competition.models.inputs import InputPipeline
from competition.models.schema import MODEL_FILE, Augment, FitResult, ModelConfig, ModelInputs, PolicyDecision
from competition.training.callbacks import EarlyStopping, EpochReport, GradualUnfreezing, KeepBest, LearningRateSchedule, WeightEma
from competition.training.loop import Callback, FitLoop, TrainableState


class ImageModel(ABC):
    """A two-input (image, angle) binary classifier with a declared block structure.

    Subclasses build the network in `__init__` (resolving weights unless `pretrained=False`,
    which `load_dir` uses) and implement the framework hooks at the bottom.
    Policy bookkeeping, input statistics and saving are shared here.
    """

    framework: ClassVar[str]
    divergence_measure: ClassVar[str]

    def __init__(self, config: ModelConfig, *, pretrained: bool = True) -> None:
        # `pretrained` is for the subclasses, which resolve weights when it is True (see the class doc)
        self.config = config
        self.name = config.name
        self.weight_source = "none"  # "file:<path>", "package:<pip name>", "hub:...", "hed-bsds500", "none"
        self.policy: PolicyDecision | None = None
        self.inputs = InputPipeline(list(config.channels))
        self._trainable: list[bool] = []

    # --- the interface the trainer uses -------------------------------------------------

    @abstractmethod
    def blocks(self) -> list[str]:
        """Block names from bottom (stem) to top (head); policies are expressed over this list."""

    def apply_policy(self, policy: str, images: np.ndarray | None = None) -> PolicyDecision:
        """Freeze/unfreeze blocks per `policy`; "auto" measures similarity on `images` (training images)."""
        policies.check_policy(policy)
        if policy == "auto" and self.weight_source == "none":
            decision = PolicyDecision(name="all", requested="auto", reason="random init (weights: none): nothing pretrained to keep, every block trains")
        elif policy == "auto":
            decision = self._auto_policy(images)
        else:
            decision = PolicyDecision(name=policy, requested=policy, reason=f"policy {policy!r} set in the config")
        self._trainable = policies.trainable_blocks(decision.name, self.blocks())
        self._set_trainable(self._trainable)
        self.policy = decision
        return decision

    def _auto_policy(self, images: np.ndarray | None) -> PolicyDecision:
        """Measure the training images' divergence in units of natural photos' and apply the 2 x 2 table."""
        if images is None or len(images) == 0:
            raise ValueError("policy 'auto' needs the training images to measure domain similarity")
        sample = np.sort(np.random.default_rng(0).permutation(len(images))[: self.config.auto.sample])
        fitted = self.inputs
        if not fitted.fitted:  # measure with statistics of these images, leaving the model unprepared
            self.inputs = InputPipeline(list(self.config.channels)).fit(images)
        try:
            divergence = self.domain_divergence(images[sample])
        finally:
            self.inputs = fitted
        photos = similarity.natural_patches(similarity.BASELINE_PHOTOS, similarity.BASELINE_N, seed=1)
        baseline = self.domain_divergence(photos, rgb=True)
        return policies.choose_auto(len(images), divergence, baseline, self.config.auto, self.divergence_measure)

    def frozen_prefix(self) -> int:
        """How many bottom blocks are frozen and in inference mode (0 = none); their output can be cached."""
        return policies.frozen_prefix(self._trainable) if self._trainable else 0

    def prepare(self, images: np.ndarray, angle: np.ndarray | None = None) -> None:
        """Fit the input statistics (channel standardiser, angle scaling) on training rows only."""
        self.inputs.fit(images, angle)

    @abstractmethod
    def trainable_parameter_names(self) -> list[str]:
        """Names of the parameters that train under the current policy."""

    @abstractmethod
    def domain_divergence(self, images: np.ndarray, *, rgb: bool = False) -> float:
        """Divergence of these images from the pretraining domain (raw SAR images, or RGB photos in [0, 1] when `rgb`)."""

    @abstractmethod
    def prefix_features(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Output of the frozen prefix for raw images (channel building and normalisation inside)."""

    @abstractmethod
    def fit(
        self,
        train: ModelInputs,
        valid: ModelInputs,
        *,
        epochs: int,
        batch_size: int,
        augment: Augment | None = None,
        seed: int = 0,
        patience: int | None = None,
        on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    ) -> FitResult:
        """Train; early-stop on validation log loss and restore the best epoch's weights.

        Raw images: the input statistics are fitted on `train` unless `prepare` came first.
        Features: only the blocks above the frozen prefix run, `augment` must be None. The head is re-initialised from
        `seed`, which also drives batch order, dropout and augmentation.
        """

    @abstractmethod
    def predict(self, inputs: ModelInputs, batch_size: int = 64) -> np.ndarray:
        """P(iceberg), shape (N,), in [0, 1]."""

    def save(self, path: Path) -> None:
        """Write the model to directory `path` atomically (a temporary directory, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        try:
            self._save_weights(tmp)
            meta = {
                "framework": self.framework,
                "config": self.config.model_dump(mode="json"),
                "weight_source": self.weight_source,
                "policy": None if self.policy is None else asdict(self.policy),
                "trainable_blocks": self._trainable,
                "inputs": self.inputs.state(),
            }
            (tmp / MODEL_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            old = path.with_name(f".{path.name}.old") if path.exists() else None
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
                os.replace(path, old)
            os.replace(tmp, path)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @classmethod
    def load_dir(cls, path: Path, meta: dict[str, Any]) -> ImageModel:
        """Rebuild from `save`'s metadata without resolving pretrained weights, then read the saved ones."""
        model = cls(ModelConfig.model_validate(meta["config"]), pretrained=False)
        model._load_weights(path)
        model.weight_source = meta["weight_source"]
        model.inputs = InputPipeline.from_state(meta["inputs"])
        model.policy = None if meta["policy"] is None else PolicyDecision(**meta["policy"])
        model._trainable = list(meta["trainable_blocks"])
        if model._trainable:
            model._set_trainable(model._trainable)
        return model

    # --- framework hooks ------------------------------------------------------------------

    @classmethod
    @abstractmethod
    def computes_on_gpu(cls, config: ModelConfig) -> bool:
        """Whether a model of this config trains and predicts on a GPU here (its framework's device placement)."""

    @abstractmethod
    def _set_trainable(self, flags: list[bool]) -> None:
        """Make block b trainable (and in training mode) iff flags[b]; frozen blocks run in inference mode."""

    @abstractmethod
    def _save_weights(self, directory: Path) -> None:
        """Write every weight of the network into `directory`."""

    @abstractmethod
    def _load_weights(self, directory: Path) -> None:
        """Read the weights `_save_weights` wrote."""


class NetworkModel(ImageModel):
    """An `ImageModel` trained by gradient steps: `fit` runs `competition.training.loop.FitLoop`.

    The callbacks come from the config: gradual unfreezing (`train.unfreeze_every`), the
    learning-rate schedule (`optimizer.schedule`, `warmup_epochs`, `min_lr_ratio`), weight EMA
    (`train.ema_decay`), keep-best, early stopping (`patience`) and the caller's `on_epoch`.
    Subclasses implement the `TrainableNetwork` hooks below (the framework part of one step).
    """

    def fit(
        self,
        train: ModelInputs,
        valid: ModelInputs,
        *,
        epochs: int,
        batch_size: int,
        augment: Augment | None = None,
        seed: int = 0,
        patience: int | None = None,
        on_epoch: Callable[[int, dict[str, float]], None] | None = None,
        callbacks: Sequence[Callback] = (),
    ) -> FitResult:
        """`ImageModel.fit`; `callbacks` run after the configured ones (see `competition.training.callbacks`)."""
        check_fit_inputs(train, valid, augment)
        if not self.inputs.fitted:
            self.prepare(train.x, train.angle)
        if not self._trainable or self.policy is None:
            self.apply_policy(self.config.policy, None if train.is_features else train.x)
        target = list(self._trainable)
        loop = FitLoop(self, epochs=epochs, batch_size=batch_size, callbacks=[*self._callbacks(target, patience, on_epoch), *callbacks])
        try:
            return loop.run(train, valid, augment=augment, seed=seed)
        finally:
            self._set_trainable(target)

    def _callbacks(self, target: list[bool], patience: int | None, on_epoch: Callable[[int, dict[str, float]], None] | None) -> list[Callback]:
        opt, train = self.config.optimizer, self.config.train
        out: list[Callback] = [LearningRateSchedule(opt.schedule, opt.warmup_epochs, opt.min_lr_ratio)]
        if train.unfreeze_every is not None:
            out.insert(0, GradualUnfreezing(target, train.unfreeze_every))
        if train.ema_decay is not None:
            out.append(WeightEma(train.ema_decay))
        out.append(KeepBest())
        if patience is not None:
            out.append(EarlyStopping(patience, opt.warmup_epochs))  # the warm-up's epochs are not watched
        if on_epoch is not None:
            out.append(EpochReport(on_epoch))
        return out

    def open_blocks(self, flags: list[bool]) -> None:
        """Gradual unfreezing: let only these blocks train for now; the policy (`frozen_prefix`) stays as applied."""
        self._set_trainable(flags)

    # --- the framework part of the fit loop (competition.training.loop.TrainableNetwork) ---

    @abstractmethod
    def start_fit(self, train: ModelInputs, augment: Augment | None, seed: int) -> None:
        """Reset the head from `seed`; build the optimizer once over every block of the policy, with per-block rates."""

    @abstractmethod
    def train_step(self, idx: np.ndarray, rng: np.random.Generator) -> float:
        """One optimizer step on rows `idx` of the fit's training inputs; returns the batch's mean loss."""

    @abstractmethod
    def set_lr_multiplier(self, factor: float) -> None:
        """Every parameter group's configured rate times `factor` from the next step on."""

    @abstractmethod
    def trainable_state(self) -> TrainableState:
        """Copies of every tensor training can change: all but those of the blocks the policy freezes."""

    @abstractmethod
    def load_trainable_state(self, state: TrainableState) -> None:
        """Put a `trainable_state` copy back (the frozen blocks never changed)."""


def check_fit_inputs(train: ModelInputs, valid: ModelInputs, augment: Augment | None) -> None:
    """Programming errors of the caller, caught before any training time is spent."""
    if train.y is None or valid.y is None:
        raise ValueError("fit needs labels in both train.y and valid.y")
    if train.is_features != valid.is_features:
        raise ValueError("train and valid must both be raw images or both be prefix features")
