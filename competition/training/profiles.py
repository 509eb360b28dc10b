"""Hardware profiles (configs/profiles/<name>.yaml): how much training the machine can afford.

`cpu` fine-tunes small networks for a few epochs and gives big ones (`per_model:`) a head on a
frozen prefix computed once; `gpu` fine-tunes longer with all eight views and mixed precision.
The profile is picked from the hardware found unless the user names one; its `per_model:` entry
for the model being trained applies on top of it. Which command-line keys reach the profile, and
what wins over what: competition.overrides (docs/architecture.md, "Override routing").
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from competition.config import CONFIG_DIR, Strict, apply_overrides, read_yaml, validate
from competition.errors import ConfigError
from competition.training.augment import AugmentConfig
from competition.training.dihedral import Variant

PROFILES_DIR = CONFIG_DIR / "profiles"
ProfileName = Literal["cpu", "gpu"]


def _default_tta() -> list[Variant]:
    return ["id"]


def every_core() -> float:
    """The CPU cores this process may use (its affinity mask, not the machine's count when a scheduler limits it)."""
    return float(len(os.sched_getaffinity(0)))


class UnitResources(Strict):
    """What one training unit holds while it runs (`resources:` of a profile; per model through `per_model:`).

    `engine: ray` schedules units by these counts (competition.engine.Resources); both engines run
    a unit's torch with `threads()` threads, since the thread count changes the last bits of a fit
    (2.3e-5 on the tiny fine-tuning test) and the artefacts must not depend on the engine. Ray counts
    fractions of a GPU, it does not cap their memory: units sharing a GPU must fit in it together.
    """

    cpus: float = Field(
        default_factory=lambda: every_core(),
        gt=0,
        description="CPU cores per unit; null: every core of the machine the run is planned on; torch runs max(1, floor(cpus)) threads",
    )
    gpus: float = Field(0.0, ge=0, description="GPUs per unit; a fraction (0.25) runs that many units on one GPU at once, memory not capped")

    @field_validator("cpus", mode="before")
    @classmethod
    def _every_core(cls, value: float | None) -> float | None:
        """null: every core this process may use (Kaggle's CPU kernel has 4, this project's machines 2), as torch's default was."""
        return every_core() if value is None else value

    @field_validator("cpus", "gpus")
    @classmethod
    def _whole_above_one(cls, value: float) -> float:
        """Ray's rule: a quantity above 1 must be a whole number (fractions only below one)."""
        if value > 1 and not float(value).is_integer():
            raise ValueError("a quantity above 1 must be a whole number (Ray's rule)")
        return value

    def threads(self) -> int:
        """Threads of the unit's torch, or TensorFlow for a Keras unit (at least one; trainer.unit_threads)."""
        return max(1, int(self.cpus))


class Profile(Strict):
    """Trainer settings that depend on the hardware; None = the model's own default (its `train:` section)."""

    epochs: int | None = Field(None, ge=1)
    batch_size: int | None = Field(None, ge=1)
    patience: int | None = Field(None, ge=1, description="early-stopping patience in epochs")
    min_steps: int = Field(
        0,
        ge=0,
        description="at least this many optimizer steps per fit: on small data epochs (and patience, gradual unfreezing) are raised "
        "in proportion (trainer.scale_to_data); 0: epochs as given",
    )
    policy: str | None = Field(None, description="fine-tuning policy (replaces the model's): head | top:K | all_but_stem | all | auto")
    mixed_precision: bool | None = None
    seeds: int = Field(1, ge=1, description="seeds per fold (seed, seed + 1, ...); more seeds are added without redoing the others")
    seed: int = Field(0, ge=0, description="first seed")
    tta: list[Variant] = Field(default_factory=_default_tta, min_length=1, description="dihedral views averaged at prediction time")
    augment: AugmentConfig = AugmentConfig()
    predict_unscored: bool = Field(
        True,
        description="predict the test rows Kaggle does not score (machine-generated: angle with more than 4 decimals); "
        "false gives them the training iceberg rate instead, saving the CNN time they would cost",
    )
    cache_prefix: bool = Field(True, description="compute the frozen prefix once per image and view, shared by all folds")
    predict_batch_size: int = Field(128, ge=1)
    save_models: bool = Field(True, description="keep each unit's best weights under units/")
    resources: UnitResources = Field(default_factory=UnitResources, description="CPU cores and GPUs per unit (scheduling and torch threads)")
    per_model: dict[str, list[str]] = Field(
        default_factory=dict, description="per model name, KEY=VALUE settings of this profile for that model (what the machine affords it)"
    )

    def seed_values(self) -> list[int]:
        return [self.seed + i for i in range(self.seeds)]


@dataclass(frozen=True)
class ChosenProfile:
    name: str
    profile: Profile
    reason: str


def _runs_on(arch: str, major: int, minor: int) -> bool:
    """Whether code built for `arch` (sm_XY: binary, same major and lower minor runs; compute_XY: PTX, newer devices JIT it) runs on the device."""
    kind, _, digits = arch.partition("_")
    if not digits.isdigit() or len(digits) < 2:
        return False
    a_major, a_minor = int(digits[:-1]), int(digits[-1])
    if kind == "sm":
        return a_major == major and a_minor <= minor
    return kind == "compute" and (a_major, a_minor) <= (major, minor)


def hardware_profile() -> tuple[ProfileName, str]:
    """`gpu` when torch can run on the CUDA device found, else `cpu`, with the reason (torch imported here only, lazily).

    A device whose compute capability is not among the torch build's architectures (Kaggle's P100,
    sm_60, under a torch built for sm_75 and later) counts as none: torch would fail on it.
    """
    try:
        import torch
    except ImportError:
        return "cpu", "torch is not installed"
    if not torch.cuda.is_available():
        return "cpu", "no CUDA device found"
    name = torch.cuda.get_device_name(0)
    major, minor = torch.cuda.get_device_capability(0)
    arch = f"sm_{major}{minor}"
    built = [a for a in torch.cuda.get_arch_list() if a.startswith("sm_")]
    runs = any(_runs_on(a, major, minor) for a in torch.cuda.get_arch_list())
    if built and not runs:
        span = built[0] if len(built) == 1 else f"{built[0]}..{built[-1]}"
        return "cpu", f"CUDA device {name} ({arch}) is not supported by this torch build ({span}); using cpu"
    return "gpu", f"CUDA device found ({name}, {arch})"


def load_profile(name: str | None = None, overrides: Sequence[str] = (), profiles_dir: Path = PROFILES_DIR, model: str | None = None) -> ChosenProfile:
    """The named profile (or the hardware's) as it applies to `model`: its `per_model:` entry for `model`, then the
    command line's profile overrides, applied and validated (precedence: competition.overrides)."""
    if name is None:
        name, reason = hardware_profile()
    else:
        reason = "named by the user"
    path = Path(profiles_dir) / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in Path(profiles_dir).glob("*.yaml"))
        raise ConfigError(f"unknown profile {name!r}: no {path} (known: {', '.join(known) or 'none'})")
    raw = read_yaml(path)
    profile = validate(Profile, apply_overrides(raw, overrides), str(path), overrides)
    entry = profile.per_model.get(model, []) if model is not None else []
    if entry:
        profile = validate(Profile, apply_overrides(apply_overrides(raw, entry), overrides), f"{path} (per_model.{model})", entry)
    return ChosenProfile(name, profile, reason)
