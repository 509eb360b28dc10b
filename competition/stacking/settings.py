"""The schema of configs/stack.yaml: which runs to stack, which methods to compare, the search budget."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from competition.config import CONFIG_DIR, Strict, load

STACK_CONFIG = CONFIG_DIR / "stack.yaml"  # its command-line overrides carry a `stack.` prefix (competition.overrides)

Method = Literal["mean", "median", "logit_mean", "rank_mean", "geo_mean", "minmax_bestbase", "weights", "caruana", "lgbm"]
ChoiceRule = Literal["one_se", "best_mean", "hedge"]  # competition.stacking.choice
ALL_METHODS: list[Method] = ["mean", "median", "logit_mean", "rank_mean", "geo_mean", "minmax_bestbase", "weights", "caruana", "lgbm"]


class FeaturesConfig(Strict):
    """Side features of the LightGBM stacker (blenders see only the runs' predictions)."""

    band_stats: bool = True  # competition.image_stats.image_statistics of each image
    angle_groups: bool = True  # group size, neighbours' mean prediction, training-fold iceberg rate


class StackerConfig(Strict):
    """LightGBM stacker tuned by Optuna inside each outer training part."""

    n_trials: int = Field(30, ge=1)  # per Optuna study (one per outer fold and one for the final model)
    timeout_s: float | None = Field(900.0, gt=0)  # whole search, shared equally by the studies; null: no limit
    inner_folds: int = Field(3, ge=2)  # CV inside each outer training part for tuning and eps
    group_folds: int = Field(5, ge=2)  # out-of-fold encoding of the group iceberg rate of training rows
    max_rounds: int = Field(2000, ge=10)
    early_stopping_rounds: int = Field(50, ge=5)
    threads: int = Field(1, ge=1)  # LightGBM threads; the CPUs each study's task holds
    trial_workers: int = Field(1, ge=1)  # tasks searching one study at once (>1: faster on a cluster, NOT reproducible)


class StackConfig(Strict):
    """configs/stack.yaml."""

    runs: list[str] = Field(default_factory=list)  # model folders under runs/<experiment>/; empty: every finished run there
    methods: list[Method] = Field(default_factory=lambda: list(ALL_METHODS), min_length=1)
    eps_grid: list[float] = Field(default_factory=lambda: [1e-4, 1e-3, 5e-3, 1e-2, 2e-2], min_length=1)
    inner_folds: int = Field(5, ge=2)  # CV inside each outer training part to choose a blender's eps
    caruana_iterations: int = Field(50, ge=1)
    choice: ChoiceRule = "hedge"  # which method is submitted: the mean of those within 1 paired SE of the best, the simplest within 1 SE, or the best mean
    seed: int = 0
    features: FeaturesConfig = FeaturesConfig()
    stacker: StackerConfig = StackerConfig()

    @field_validator("eps_grid")
    @classmethod
    def _eps_in_range(cls, grid: list[float]) -> list[float]:
        bad = [eps for eps in grid if not 0.0 <= eps < 0.5]
        if bad:
            raise ValueError(f"every eps must be in [0, 0.5), got {bad}")
        return sorted(set(grid))

    @field_validator("runs", "methods")
    @classmethod
    def _unique(cls, items: list[str]) -> list[str]:
        dupes = sorted({item for item in items if items.count(item) > 1})
        if dupes:
            raise ValueError(f"listed more than once: {dupes}")
        return items


def load_stack_config(overrides: Sequence[str] = (), path: Path = STACK_CONFIG) -> StackConfig:
    """The stack config with its overrides applied (`Overrides.stack`: the `stack.` prefix already removed)."""
    return load(path, StackConfig, overrides)
