"""The model registry: `create_model`, `load_model`, `list_models`, `load_model_config`.

One source of truth: a model is a YAML under configs/models/<name>.yaml, and its `framework`
key picks the `ImageModel` class below (`FRAMEWORKS`). Any other timm architecture can be built
by its timm name (random init, a user's file, or the hub when online). Like timm's
`_registry.py`, this module imports almost nothing: the framework adapters (and with them
torch / TensorFlow) are imported only when a model is built or loaded, so listing models stays light.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from competition.config import CONFIG_DIR, apply_overrides, load, read_yaml, validate
from competition.errors import ConfigError, MissingArtefactError
from competition.models.base import ImageModel
from competition.models.schema import MODEL_FILE, ModelConfig
from competition.models.weights import WeightsError, hub_label, resolve

MODELS_DIR = CONFIG_DIR / "models"
# framework -> (adapter module, ImageModel class); torch before TensorFlow in one process (docs/weights.md)
FRAMEWORKS: dict[str, tuple[str, str]] = {
    "timm": ("competition.models.timm_net", "TimmModel"),
    "keras": ("competition.models.keras_vgg", "KerasVgg16"),
    "probe": ("competition.models.linear_probe", "LinearProbe"),  # a logistic regression on frozen timm features
}
EPOCHLESS = frozenset({"probe"})  # frameworks that fit no network in epochs: `train.epochs` means nothing to them


def model_class(framework: str) -> type[ImageModel]:
    """The ImageModel class of `framework`, importing its adapter (and framework) now."""
    if framework not in FRAMEWORKS:
        raise ConfigError(f"unknown framework {framework!r}; known: {', '.join(FRAMEWORKS)}")
    module, name = FRAMEWORKS[framework]
    cls: type[ImageModel] = getattr(importlib.import_module(module), name)
    return cls


def list_models(models_dir: Path = MODELS_DIR) -> list[str]:
    """Configured model names (one configs/models/<name>.yaml each)."""
    return sorted(p.stem for p in Path(models_dir).glob("*.yaml"))


def _is_timm_architecture(name: str) -> bool:
    import timm

    return bool(timm.list_models(name))


def load_model_config(name: str, overrides: list[str] | tuple[str, ...] = (), models_dir: Path = MODELS_DIR) -> ModelConfig:
    """The validated config of `name`: its YAML with overrides, or timm defaults for a bare timm name."""
    path = Path(models_dir) / f"{name}.yaml"
    if path.is_file():
        cfg = load(path, ModelConfig, overrides)
    elif _is_timm_architecture(name):
        data = apply_overrides({"name": name, "framework": "timm", "architecture": name}, overrides)
        cfg = validate(ModelConfig, data, f"timm model {name!r} (no {path})", overrides)
    else:
        known = list_models(models_dir)
        raise ConfigError(f"unknown model {name!r}: no {path}, and not a timm architecture; configured: {', '.join(known)}")
    if cfg.name != name:
        raise ConfigError(f"{path}: key 'name' is {cfg.name!r} but the file is named for {name!r}")
    return cfg


def _with_overrides(config: ModelConfig, overrides: dict[str, Any]) -> ModelConfig:
    if not overrides:
        return config
    data = config.model_dump(mode="json")
    data.update(overrides)
    return validate(ModelConfig, data, f"model {config.name!r} (keyword overrides)")


def create_model(name: str, config: ModelConfig | None = None, **overrides: Any) -> ImageModel:
    """Build model `name` from `config` (default: its YAML), with top-level keys overridden by keyword."""
    config = _with_overrides(config or load_model_config(name), overrides)
    return model_class(config.framework)(config)


def load_model(path: Path) -> ImageModel:
    """Read a model directory written by `ImageModel.save` (dispatching on its framework)."""
    meta_path = Path(path) / MODEL_FILE
    if not meta_path.is_file():
        raise MissingArtefactError(f"{path}: not a saved model (no {MODEL_FILE})")
    meta = read_yaml(meta_path)  # JSON is YAML
    return model_class(meta["framework"]).load_dir(Path(path), meta)


def describe_models(overrides: list[str] | tuple[str, ...] = ()) -> list[tuple[str, str, str, str, str, str]]:
    """One row per configured model: name, framework, architecture, channels, policy, weight source it would use."""
    rows: list[tuple[str, str, str, str, str, str]] = []
    for name in list_models():
        cfg = load_model_config(name, overrides)
        try:
            source = resolve(name, cfg.architecture, cfg.weights, cfg.weights_file, hub_label(cfg.framework, cfg.architecture)).label
        except WeightsError:
            source = "MISSING (see docs/weights.md)"
        rows.append((name, cfg.framework, cfg.architecture, ",".join(cfg.channels), cfg.policy, source))
    return rows
