"""The model registry, keyed by name like timm's: `@register_model("name")`, `create_model`, `list_models`.

A registered name has a YAML under configs/models/<name>.yaml. Any other timm architecture can
be built by its timm name (random init, a user's file, or the hub when online). Adapter modules
import TensorFlow / torch only when a model is built, so listing models stays light.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from competition.config import CONFIG_DIR, apply_overrides, load, read_yaml, validate
from competition.errors import ConfigError, MissingArtefactError
from competition.models.base import ImageModel, ModelConfig

MODELS_DIR = CONFIG_DIR / "models"
MODEL_FILE = "model.json"
_ADAPTERS = {"timm": "competition.models.timm_net", "keras": "competition.models.keras_vgg"}  # torch before TensorFlow (docs/weights.md)
_BUILDERS: dict[str, Callable[[ModelConfig], ImageModel]] = {}
_CLASSES: dict[str, type[ImageModel]] = {}


def register_model(name: str) -> Callable[[Callable[[ModelConfig], ImageModel]], Callable[[ModelConfig], ImageModel]]:
    """Register a builder `fn(config) -> ImageModel` under `name` (one YAML per name)."""

    def wrap(fn: Callable[[ModelConfig], ImageModel]) -> Callable[[ModelConfig], ImageModel]:
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} registered twice")
        _BUILDERS[name] = fn
        return fn

    return wrap


def register_framework(cls: type[ImageModel]) -> type[ImageModel]:
    """Register the ImageModel class that builds and loads every model of `cls.framework`."""
    _CLASSES[cls.framework] = cls
    return cls


def _ensure_registered(framework: str | None = None) -> None:
    """Import the adapter of `framework` (all adapters when None), which registers its models."""
    for name, module in _ADAPTERS.items():
        if framework in (None, name):
            importlib.import_module(module)


def list_models() -> list[str]:
    """Registered model names (each has configs/models/<name>.yaml)."""
    _ensure_registered()
    return sorted(_BUILDERS)


def _is_timm_architecture(name: str) -> bool:
    import timm  # noqa: PLC0415 - heavy, only for names outside the registry

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
        known = sorted(p.stem for p in Path(models_dir).glob("*.yaml"))
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
    _ensure_registered(config.framework)
    builder = _BUILDERS.get(name) or _CLASSES[config.framework]
    return builder(config)


def load_model(path: Path) -> ImageModel:
    """Read a model directory written by `ImageModel.save` (dispatching on its framework)."""
    meta_path = Path(path) / MODEL_FILE
    if not meta_path.is_file():
        raise MissingArtefactError(f"{path}: not a saved model (no {MODEL_FILE})")
    meta = read_yaml(meta_path)  # JSON is YAML
    _ensure_registered(meta["framework"])
    return _CLASSES[meta["framework"]].load_dir(Path(path), meta)


def describe_models(overrides: list[str] | tuple[str, ...] = ()) -> list[tuple[str, str, str, str, str, str]]:
    """One row per registered model: name, framework, architecture, channels, policy, weight source it would use."""
    from competition.models.weights import WeightsError, hub_label, resolve

    rows = []
    for name in list_models():
        cfg = load_model_config(name, overrides)
        try:
            source = resolve(name, cfg.architecture, cfg.weights, cfg.weights_file, hub_label(cfg.framework, cfg.architecture)).label
        except WeightsError:
            source = "MISSING (see docs/weights.md)"
        rows.append((name, cfg.framework, cfg.architecture, ",".join(cfg.channels), cfg.policy, source))
    return rows
