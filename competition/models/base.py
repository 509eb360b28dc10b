"""The contract between the model zoo and the fold trainer.

Every model (Keras or timm) is an `ImageModel`: built from a `ModelConfig` by
`competition.models.registry.create_model`, fitted on arrays, saved to and loaded from a
directory. The trainer and the tests treat all models alike through this interface only.

Frozen prefix: after `apply_policy`, the bottom `frozen_prefix()` blocks are frozen *and*
run in inference mode (batch-norm uses its running statistics, no dropout), so their output
depends only on the image. The trainer may compute `prefix_features` once and pass them to
`fit` / `predict` with `ModelInputs(is_features=True)`; only the blocks above the prefix then
run. Both paths give the same predictions for the same weights.

Input statistics (channel standardiser, angle scaling): `prepare(images, angle)` fits them;
`fit` on raw images fits them on `train` when `prepare` was not called before. A caller that
caches prefix features calls `prepare` once first, so the cached and the raw paths see the same
statistics; `fit` never refits them.

Beyond the first published sketch: `prepare`, `domain_divergence` (what `auto` measures),
`load_dir` (used by `load`), and the module helpers `check_fit_inputs` and `log_loss`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from competition.config import Strict
from competition.models.inputs import InputPipeline

# (x_batch, row_indices_into_train, rng) -> augmented x_batch; applied per batch inside fit, raw images only.
Augment = Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]


class HeadConfig(Strict):
    """The fusion head: pooled features + angle (+ missing flag) -> MLP -> P(iceberg)."""

    pooling: Literal["max", "avg"] = "avg"
    hidden: list[int] = Field(default_factory=lambda: [256])
    dropout: float = Field(0.3, ge=0.0, lt=1.0)


class OptimizerConfig(Strict):
    """Optimiser of the trainable blocks; `block_lr_decay` < 1 gives lower blocks smaller rates."""

    name: Literal["sgd", "adam", "adamw"] = "adamw"
    lr: float = Field(1e-3, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = True
    weight_decay: float = Field(0.0, ge=0.0)
    block_lr_decay: float = Field(1.0, gt=0.0, le=1.0, description="lr of block b = lr * decay ** (blocks above b); 1 = one rate")


class AutoPolicyConfig(Strict):
    """Thresholds of the `auto` policy (the seed's 2 x 2 table: dataset size x domain similarity)."""

    large_n: int = Field(5000, ge=1, description="training sets with at least this many images count as large")
    different_above: float = Field(1.5, gt=0.0, description="domain counts as different when its divergence exceeds this many times that of natural photos")
    top_k: int = Field(3, ge=1, description="K of `top:K` for large, similar data")
    sample: int = Field(256, ge=8, description="training images used to measure similarity")


class TrainDefaults(Strict):
    """Per-model defaults for the trainer (its profile may override them)."""

    epochs: int = Field(30, ge=1)
    batch_size: int = Field(32, ge=1)
    patience: int | None = Field(8, ge=1)
    unfreeze_every: int | None = Field(None, ge=1, description="gradual unfreezing: one more block every N epochs (None = off)")


class ModelConfig(Strict):
    """One model's YAML (configs/models/<name>.yaml); any key can be overridden as KEY=VALUE."""

    name: str
    framework: Literal["keras", "timm"]
    architecture: str = Field(description="timm model name, or 'vgg16' for Keras")
    weights: Literal["pretrained", "none"] = "pretrained"
    weights_file: Path | None = Field(None, description="a local weight file; first in the resolution order")
    channels: list[Literal["hh", "hv", "mean", "ratio", "difference"]] = Field(default_factory=lambda: ["hh", "hv", "mean"], min_length=1)
    image_size: int = Field(75, ge=32, description="images are resized to this inside the model (75 = as they are)")
    policy: str = Field("auto", pattern=r"^(head|top:[1-9][0-9]*|all_but_stem|all|auto)$", description="head | top:K | all_but_stem | all | auto")
    auto: AutoPolicyConfig = AutoPolicyConfig()
    head: HeadConfig = HeadConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    train: TrainDefaults = TrainDefaults()
    seed: int = Field(0, description="initialises what has no pretrained weights when the model is built")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="timm: cuda when present under auto; Keras uses TensorFlow's device placement")
    mixed_precision: bool = Field(False, description="bfloat16 autocast (timm, CUDA only) / mixed_float16 policy (Keras, GPU only)")


@dataclass
class ModelInputs:
    """What fit/predict take. The model builds the angle and missing-flag inputs itself (imputing inside)."""

    x: np.ndarray  # raw images N x 75 x 75 x 2 float32 (HH, HV in dB), or cached prefix features when is_features
    angle: np.ndarray  # N floats, NaN = missing
    y: np.ndarray | None = None  # N labels in {0, 1} (1 = iceberg)
    is_features: bool = False

    def __len__(self) -> int:
        return len(self.angle)


@dataclass
class PolicyDecision:
    """Which fine-tuning case was applied and why (recorded in the run's meta.json)."""

    name: str  # "head" | "top:K" | "all_but_stem" | "all"
    requested: str  # what the config asked for, e.g. "auto"
    reason: str
    numbers: dict[str, Any] = field(default_factory=dict)  # n_train, similarity, thresholds


@dataclass
class FitResult:
    """Learning curves (per epoch) and the epoch whose weights were kept."""

    history: dict[str, list[float]]  # train_loss, val_loss
    best_epoch: int


class ImageModel(ABC):
    """A two-input (image, angle) binary classifier with a declared block structure.

    Subclasses (one per framework) build the network in `__init__` (resolving weights unless
    `pretrained=False`, which `load` uses) and implement the framework hooks at the bottom.
    Policy bookkeeping, input statistics and saving are shared here.
    """

    framework: ClassVar[str]
    divergence_measure: ClassVar[str]

    def __init__(self, config: ModelConfig) -> None:
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
        from competition.models import policies

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
        from competition.models import policies, similarity

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
        from competition.models.policies import frozen_prefix

        return frozen_prefix(self._trainable) if self._trainable else 0

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
        from competition.models.registry import MODEL_FILE

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
    def load(cls, path: Path) -> ImageModel:
        """Read a directory written by `save` (any registered model)."""
        from competition.models.registry import load_model

        return load_model(Path(path))

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

    @abstractmethod
    def _set_trainable(self, flags: list[bool]) -> None:
        """Make block b trainable (and in training mode) iff flags[b]; frozen blocks run in inference mode."""

    @abstractmethod
    def _save_weights(self, directory: Path) -> None:
        """Write every weight of the network into `directory`."""

    @abstractmethod
    def _load_weights(self, directory: Path) -> None:
        """Read the weights `_save_weights` wrote."""


def check_fit_inputs(train: ModelInputs, valid: ModelInputs, augment: Augment | None) -> None:
    """Programming errors of the caller, caught before any training time is spent."""
    if train.y is None or valid.y is None:
        raise ValueError("fit needs labels in both train.y and valid.y")
    if train.is_features != valid.is_features:
        raise ValueError("train and valid must both be raw images or both be prefix features")


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Binary log loss (the competition metric) with probabilities clipped to [1e-7, 1 - 1e-7]."""
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
