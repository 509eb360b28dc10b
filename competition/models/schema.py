"""The models' value types and config schemas: what the trainer, the registry and every adapter share.

A leaf module (no other module of `competition.models` is imported here): `ModelConfig` and its
parts (one YAML under configs/models/), the inputs and results of `ImageModel.fit`, and
`PolicyDecision` (recorded in a run's meta.json).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, PositiveFloat, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from competition.config import Strict

MODEL_FILE = "model.json"  # what `ImageModel.save` writes beside the weights; `registry.load_model` reads it

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
    block_lr_decay: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="lr of a parameter = lr * decay ** (its depth below the head, from timm's group_matcher or the block list); 1 = one rate",
    )
    schedule: Literal["warmup_cosine", "one_cycle", "constant"] = Field(
        "warmup_cosine", description="per-step multiplier on every rate (competition.training.schedules); cosine runs over the nominal epochs"
    )
    warmup_epochs: float = Field(1.0, ge=0.0, description="epochs of warm-up (a fraction is allowed); 0 = none")
    min_lr_ratio: float = Field(0.01, ge=0.0, le=1.0, description="floor of the annealing, as a fraction of the rates")


RACE_CANDIDATE = r"^(probe|head|top:[1-9][0-9]*|all_but_stem|all)$"


def _default_race_candidates() -> list[str]:
    return ["probe", "head", "top:3", "all_but_stem", "all"]


class PolicyRaceConfig(Strict):
    """The `auto` policy's race: the table's pick against other policies on inner validation data (docs/policy-race.md)."""

    enabled: bool = Field(True, description="race the candidates (pretrained weights only); false = the 2 x 2 table decides alone")
    candidates: list[Annotated[str, Field(pattern=RACE_CANDIDATE)]] = Field(
        default_factory=_default_race_candidates, min_length=1, description="probe | head | top:K | all_but_stem | all; the table's pick always races"
    )
    budget: float = Field(0.3, gt=0.0, description="seconds the race may spend, as a fraction of one policy's full run (units x epochs x seconds per epoch)")
    floor_steps: int = Field(
        400,
        ge=0,
        description="the race may always spend as long as this many optimizer steps, priced by what the table's pick's race steps cost, "
        "everything included (re-priced after each of its epochs; at least a whole network's step): on tiny data a fraction of a run of "
        "seconds cannot train one candidate; counted in steps, not seconds, so the floor is about the same work on any machine, loaded or not",
    )
    eta: int = Field(3, ge=2, description="successive halving: past a rung only a candidate among the best 1/eta there trains on")
    min_epochs: int = Field(1, ge=1, description="epochs of the first rung; rung i is at min_epochs x eta^i epochs")
    halving: Literal["needed", "always"] = Field(
        "needed",
        description="needed: a rung stops a candidate only when the budget cannot also pay for it and every later candidate to finish; "
        "always: at every rung (ASHA's rule alone)",
    )
    max_epochs: int = Field(9, ge=1, description="most epochs a candidate trains in the race (and at most train.epochs)")
    min_valid: int = Field(200, ge=1, description="inner validation predictions wanted per candidate: inner folds (of 5) are added until reached")
    prior_margin_se: float = Field(
        1.0,
        ge=0.0,
        allow_inf_nan=False,
        description="the table's pick stays unless the lowest beats it by more than this many standard errors of the paired difference; 0: off",
    )
    margin_se: float = Field(
        0.0, ge=0.0, description="the simplest candidate within this many standard errors of the best wins; 0: the lowest loss (1: the one-standard-error rule)"
    )


class AutoPolicyConfig(Strict):
    """Thresholds of the `auto` policy (the seed's 2 x 2 table: dataset size x domain similarity) and its race."""

    race: PolicyRaceConfig = PolicyRaceConfig()
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
    ema_decay: float | None = Field(None, gt=0.0, lt=1.0, description="validate and keep an exponential moving average of the weights (None = off)")


class ProbeConfig(Strict):
    """The linear probe's logistic regression (framework `probe`; the other frameworks ignore this section)."""

    c_grid: list[PositiveFloat] = Field(
        default_factory=lambda: [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0],
        min_length=1,
        description="inverse regularisation strengths C tried; the one with the best inner-CV log loss is kept",
    )
    inner_folds: int = Field(5, ge=2, description="stratified inner folds that choose C (fewer when a class is smaller)")
    max_iter: int = Field(1000, ge=1, description="L-BFGS iterations per fit")


Channel = Literal["hh", "hv", "mean", "ratio", "difference"]
PROBE_POLICIES = ("head", "auto")  # a linear probe trains no network: only its logistic regression is fitted (auto = head)


def _default_channels() -> list[Channel]:
    return ["hh", "hv", "mean"]


class ModelConfig(Strict):
    """One model's YAML (configs/models/<name>.yaml); any key can be overridden as KEY=VALUE."""

    name: str
    framework: Literal["keras", "timm", "probe"] = Field(
        description="keras | timm | probe (a logistic regression on frozen timm features: competition.models.linear_probe)"
    )
    architecture: str = Field(description="timm model name, or 'vgg16' for Keras")
    weights: Literal["pretrained", "none"] = "pretrained"
    weights_file: Path | None = Field(None, description="a local weight file; first in the resolution order")
    channels: list[Channel] = Field(default_factory=_default_channels, min_length=1)
    image_size: int = Field(75, ge=32, description="images are resized to this inside the model (75 = as they are)")
    policy: str = Field("auto", pattern=r"^(head|top:[1-9][0-9]*|all_but_stem|all|auto)$", description="head | top:K | all_but_stem | all | auto")
    auto: AutoPolicyConfig = AutoPolicyConfig()
    head: HeadConfig = HeadConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    train: TrainDefaults = TrainDefaults()
    probe: ProbeConfig = ProbeConfig()
    seed: int = Field(0, description="initialises what has no pretrained weights when the model is built")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="timm: cuda when present under auto; Keras uses TensorFlow's device placement")
    mixed_precision: bool = Field(False, description="bfloat16 autocast (timm, CUDA only) / mixed_bfloat16 policy (Keras, GPU only)")

    @field_validator("policy")
    @classmethod
    def _probe_fine_tunes_nothing(cls, policy: str, info: ValidationInfo) -> str:
        """Refuse a fine-tuning policy for a linear probe when the config is read (before any run folder is made),
        not when its first unit starts; the message names the allowed ones (`competition.config.validate` adds the
        file or source, the key and the value)."""
        if info.data.get("framework") == "probe" and policy not in PROBE_POLICIES:
            raise PydanticCustomError(  # not ValueError: its message would start "Value error, "
                "probe_policy",
                f"a linear probe (framework probe) fine-tunes no network, it only fits a logistic regression: expected {' or '.join(PROBE_POLICIES)}",
            )
        return policy


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
