"""configs/quality.yaml, the quality benchmark's settings: a leaf module (no step of the flow is imported),
so the override router (`competition.overrides`) can read its keys without importing the benchmark."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from competition.config import CONFIG_DIR, Strict
from competition.errors import ConfigError
from competition.models.policies import check_policy
from competition.training.augment import AugmentConfig

QUALITY_CONFIG = CONFIG_DIR / "quality.yaml"


class RecipeConfig(Strict):
    """One hand-made recipe: a model and the trainer overrides that make it."""

    model: str
    overrides: list[str] = Field(default_factory=list)


class GridConfig(Strict):
    """(c): every model under every policy; extra trainer overrides per policy."""

    models: list[str] = Field(min_length=1)
    policies: list[str] = Field(min_length=1)
    overrides: dict[str, list[str]] = Field(default_factory=dict)

    @field_validator("policies")
    @classmethod
    def _known(cls, policies: list[str]) -> list[str]:
        for policy in policies:
            try:
                check_policy(policy)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return policies


class PerKind(Strict):
    """A number per kind of recipe, by what it trains (`top` = top:K): epochs per unit, or early-stopping patience."""

    classic: int = Field(ge=1)
    scratch: int = Field(ge=1)
    head: int = Field(ge=1)
    top: int = Field(ge=1)
    all_but_stem: int = Field(ge=1)
    all: int = Field(ge=1)
    auto: int = Field(ge=1)


class Budget(Strict):
    """The compute every recipe gets on one kind of machine."""

    profile: str
    batch_size: int = Field(ge=1)
    seeds: int = Field(1, ge=1)
    tta: list[str] | None = None
    epochs: PerKind
    patience: PerKind | None = Field(None, description="early-stopping patience per kind of recipe (None: the profile's)")
    min_steps: int | None = Field(None, ge=0, description="the trainer's min_steps for every recipe (None: the budget's epochs are trained as given)")
    recipes: list[str] | None = None
    skip: list[str] = Field(default_factory=list)
    stack: list[str] = Field(default_factory=list)


class DigitsConfig(Strict):
    """The ladder's real small image set: two classes of scikit-learn's digits (competition.simulate.digits)."""

    classes: list[int] = Field([3, 8], min_length=2, max_length=2)
    n_train: int = Field(100, ge=20)
    seed: int = 0
    public_fraction: float = Field(0.3, gt=0.0, lt=1.0)

    @field_validator("classes")
    @classmethod
    def _two_digits(cls, classes: list[int]) -> list[int]:
        if len(set(classes)) != 2 or not all(0 <= c <= 9 for c in classes):
            raise ValueError(f"expected two different digits 0-9, got {classes}")
        return classes


class LadderConfig(Strict):
    """`competition bench-ladder`: the recipes on simulated training sets of several sizes and on the digits."""

    experiment: str = "ladder"
    sizes: list[int] = Field(default_factory=lambda: [100, 200, 400, 1604])
    n_test: int = Field(4000, ge=10, description="simulated test images per rung; 40% are scored, 70% of those private")
    seed: int = 2017
    digits: DigitsConfig | None = DigitsConfig()
    recipes: list[str] = Field(default_factory=lambda: ["mobilenetv2_100"], min_length=1)
    models: list[str] = Field(default_factory=list, description="extra models under their own policy (the linear probe)")

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, sizes: list[int]) -> list[int]:
        if any(n < 20 for n in sizes) or len(set(sizes)) != len(sizes):
            raise ValueError("expected distinct training-set sizes of at least 20 images")
        return sizes


class QualityConfig(Strict):
    """configs/quality.yaml."""

    experiment: str = "quality"
    budget: str | None = None
    recipes: list[str] | None = None
    output: Path = Path("docs/benchmarks.md")
    classic: RecipeConfig
    classic_augment: AugmentConfig
    scratch: RecipeConfig
    grid: GridConfig
    budgets: dict[str, Budget] = Field(min_length=1)
    ladder: LadderConfig = LadderConfig()
