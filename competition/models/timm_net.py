"""timm models with angle fusion: any timm CNN by name, ImageNet weights offline for the registered ones.

Network: the timm backbone without its classifier (two bands through an adapted stem, or three
bands) -> global pooling -> concatenated with the standardised angle and its missing flag ->
a small MLP -> one logit. Blocks are the backbone's own stages (stem, blocks.0 ..., conv_head)
plus `head`; they are found from the module tree and checked against `forward_features`, and an
architecture whose tree does not replay as a chain of stages is one `backbone` block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import timm
import torch
from timm.models import adapt_input_conv, group_parameters
from torch import nn
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm  # every batch norm (also timm's BatchNormAct2d), as torch.optim.swa_utils.update_bn finds them

from competition.data.channels import channel_planes
from competition.errors import ConfigError
from competition.models import weights as wt
from competition.models.base import NetworkModel
from competition.models.inputs import network_affine, photo_network_input
from competition.models.policies import block_learning_rates
from competition.models.schema import Augment, ModelConfig, ModelInputs
from competition.models.similarity import channel_stats, layer_average, symmetric_kl
from competition.training.augment import Augmenter
from competition.training.device_augment import DeviceAugmenter

WEIGHTS_FILE = "weights.pt"
_EXPANDED = ("blocks", "stages", "layers", "features")
_HEAD_CHILDREN = ("global_pool", "head", "fc", "classifier", "head_drop", "flatten")


class _TimmApi(Protocol):
    """What every timm model has beyond nn.Module."""

    pretrained_cfg: dict[str, Any]
    num_features: int

    def forward_features(self, x: torch.Tensor) -> torch.Tensor: ...


def _timm(model: nn.Module) -> _TimmApi:
    """`model` (a timm model) as its timm attributes: torch types any attribute of a Module as `Tensor | Module`."""
    return cast(_TimmApi, model)


@dataclass
class _Block:
    """One block: its modules (for parameters and train/eval mode) and how to run it."""

    name: str
    modules: list[nn.Module]
    run: Callable[[torch.Tensor], torch.Tensor]


def _chain(modules: list[nn.Module]) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(x: torch.Tensor) -> torch.Tensor:
        for m in modules:
            x = m(x)
        return x

    return run


def _stage_blocks(backbone: nn.Module) -> list[_Block]:
    """Split `forward_features` into a chain of stages (stem, each block, the rest) read off the module tree."""
    blocks: list[_Block] = []
    leaf_group: list[nn.Module] | None = None
    for name, child in backbone.named_children():
        if name in _HEAD_CHILDREN:
            break
        if name in _EXPANDED and isinstance(child, nn.Sequential):
            blocks += [_Block(f"{name}.{i}", [m], _chain([m])) for i, m in enumerate(child)]
            leaf_group = None
        elif isinstance(child, nn.Sequential):
            blocks.append(_Block(name, [child], _chain([child])))
            leaf_group = None
        elif leaf_group is None:
            leaf_group = [child]
            blocks.append(_Block("stem" if not blocks else name, leaf_group, _chain(leaf_group)))
        else:
            leaf_group.append(child)
    return blocks


def _backbone_blocks(backbone: nn.Module, in_chans: int) -> list[_Block]:
    """The stage chain if it replays `forward_features` exactly, else the whole backbone as one block."""
    blocks = _stage_blocks(backbone)
    x = torch.randn(2, in_chans, 64, 64, generator=torch.Generator().manual_seed(0))
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        expected = _timm(backbone).forward_features(x)
        try:
            got = x
            for block in blocks:
                got = block.run(got)
            ok = len(blocks) > 1 and got.shape == expected.shape and torch.allclose(got, expected, atol=1e-5)
        except (RuntimeError, TypeError, ValueError):
            ok = False
    backbone.train(was_training)
    if expected.ndim != 4:
        raise ConfigError(f"timm architecture {type(backbone).__name__}: features are not a 2-D map (shape {tuple(expected.shape)}); only CNNs are supported")
    return blocks if ok else [_Block("backbone", [backbone], _timm(backbone).forward_features)]


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from .pth/.pt/.bin or .safetensors, unwrapping the usual checkpoint keys."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise wt.WeightsError(f"{path}: not a readable PyTorch weight file ({exc.__class__.__name__}: {exc})") from None
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise wt.WeightsError(f"{path}: holds a {type(state).__name__}, expected a state dict")
    return state


def imagenet_classifier(architecture: str, path: Path) -> nn.Module:
    """The full 3-band ImageNet timm model with the weights of `path` (timm names, or another implementation's paired in order)."""
    model = timm.create_model(architecture, pretrained=False)
    template = model.state_dict()
    source = _read_state_dict(path)
    state = source if set(source) == set(template) else wt.pair_in_order(source, template, str(path))
    model.load_state_dict(state, strict=True)
    return model.eval()


def _backbone_state(classifier: nn.Module, in_chans: int) -> dict[str, torch.Tensor]:
    """The classifier's weights without its classifier layer, stem adapted to `in_chans` bands."""
    cfg = _timm(classifier).pretrained_cfg
    head = cfg.get("classifier", "classifier")
    state = {k: v for k, v in classifier.state_dict().items() if not k.startswith(f"{head}.")}
    stem = f"{cfg.get('first_conv', 'conv_stem')}.weight"
    if in_chans != state[stem].shape[1]:
        state[stem] = adapt_input_conv(in_chans, state[stem])
    return state


@dataclass
class _FitData:
    """What one fit's steps share: the training inputs, the first block they enter, angles, labels, the optimizer."""

    train: ModelInputs
    augment: Augment | None
    start: int
    angles: torch.Tensor
    labels: torch.Tensor
    optimizer: torch.optim.Optimizer
    on_device: _DeviceImages | None = None  # set: batches are built and augmented on the device (a GPU)


class RunningStatistics:
    """Batch-norm running statistics of the fit's own batches: each layer's first `1 / momentum` training batches in
    the fit are averaged equally (the cumulative average of PyTorch's `momentum=None`), the later ones by its own
    exponential `momentum` (PyTorch's default 0.1 in every registered timm model).

    Why: from its pretrained (ImageNet) statistics the exponential average moves 10% a batch, so on ~100 images
    (2-3 batches an epoch) a layer that trains still normalised evaluation batches with mostly ImageNet statistics
    after the fit's epochs, while its weights had moved: the race's `all` candidate on the ladder's digits,
    inner-validation log loss 0.66, 0.92, 3.08, 3.24 over its first epochs on one inner fold and 0.537 over 5
    (docs/training-loop.md, "Batch-norm statistics"). The lag of an exponential average behind fast-moving weights is
    a problem Wu & Johnson study in "Rethinking 'Batch' in BatchNorm" (2021, arXiv:2105.07576); their remedy,
    PreciseBN, recomputes the statistics with the weights held fixed, at the cost of extra forward passes; this is
    the cheap part of it, dropping the pretrained statistics at once. A layer counts its batches from the first step
    its block trains in (gradual unfreezing opens blocks later); frozen blocks keep their statistics (eval mode). On
    the full competition (40 batches an epoch) the first 10 batches are a quarter of the first epoch.
    """

    def __init__(self, blocks: list[_Block]) -> None:
        seen: set[_BatchNorm] = set()  # a layer belongs to the first block that lists it
        self.layers: list[list[_BatchNorm]] = []
        for block in blocks:
            found = [m for top in block.modules for m in top.modules() if isinstance(m, _BatchNorm) and m not in seen]
            seen.update(found)
            self.layers.append(found)
        self.momentum = {m: m.momentum for m in seen}
        self.batches = dict.fromkeys(seen, 0)

    def restart(self) -> None:
        """A new fit: every layer counts its batches from 0 again."""
        self.batches = dict.fromkeys(self.momentum, 0)

    @contextmanager
    def step(self, open_blocks: list[bool]) -> Iterator[None]:
        """Around one training batch's forward pass: the open blocks' layers get the batch's momentum, then their own."""
        layers = [m for found, flag in zip(self.layers, open_blocks, strict=True) if flag for m in found]
        for m in layers:
            n, own = self.batches[m], self.momentum[m]
            m.momentum = 1.0 / (n + 1) if own is None else max(own, 1.0 / (n + 1))
            self.batches[m] = n + 1
        try:
            yield
        finally:
            for m in layers:
                m.momentum = self.momentum[m]


@dataclass
class _DeviceImages:
    """One fit's raw training images kept on the device (N x 2 x H x W dB), the standardiser as tensors, the augmenter there."""

    pixels: torch.Tensor
    mean: torch.Tensor
    scale: torch.Tensor
    augment: DeviceAugmenter | None


class TimmModel(NetworkModel):
    """A timm backbone + angle-fusion MLP head; `fit` is the shared fit loop, one PyTorch step per batch here."""

    framework = "timm"
    divergence_measure = "symmetric KL of batch vs BN running statistics"

    def __init__(self, config: ModelConfig, *, pretrained: bool = True) -> None:
        super().__init__(config)
        if config.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"model '{config.name}': key 'device' is cuda but PyTorch sees no GPU here; use device=auto or cpu")
        self.device = torch.device("cuda" if self.computes_on_gpu(config) else "cpu")
        torch.manual_seed(config.seed)
        backbone = self._build_backbone(pretrained)
        self._block_list = _backbone_blocks(backbone, len(config.channels))
        head = self._build_head(_timm(backbone).num_features)
        self.net = nn.ModuleDict({"backbone": backbone, "head": head}).to(self.device)
        self._block_list.append(_Block("head", [head], head))
        self._statistics = RunningStatistics(self._block_list)
        cfg = _timm(backbone).pretrained_cfg
        self._norm = (cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225)))
        scale, offset = network_affine(*self._norm, len(config.channels))
        self._scale = torch.from_numpy(scale).view(1, -1, 1, 1).to(self.device)
        self._offset = torch.from_numpy(offset).view(1, -1, 1, 1).to(self.device)
        self._trainable = [True] * len(self._block_list)
        self._open = list(self._trainable)  # the blocks training now (fewer than the policy's while gradually unfreezing)
        self._fit: _FitData | None = None
        # on a GPU the training images stay on it per fit and batches are built and augmented there (numpy on the CPU would starve it)
        self.device_batches = self.device.type == "cuda"

    @classmethod
    def computes_on_gpu(cls, config: ModelConfig) -> bool:
        """`device: cuda`, or `auto` with a CUDA device torch can use."""
        return config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())

    # --- construction ---------------------------------------------------------------------

    def _build_backbone(self, pretrained: bool) -> nn.Module:
        cfg, in_chans = self.config, len(self.config.channels)
        kwargs: dict[str, Any] = {"num_classes": 0, "global_pool": "", "in_chans": in_chans}
        source = (
            wt.resolve(cfg.name, cfg.architecture, cfg.weights, cfg.weights_file, wt.hub_label("timm", cfg.architecture))
            if pretrained
            else wt.WeightSource("none", "none")
        )
        try:
            backbone = timm.create_model(cfg.architecture, pretrained=source.kind == "hub", **kwargs)
        except RuntimeError as exc:
            raise ConfigError(f"model '{cfg.name}': timm cannot build {cfg.architecture!r}: {exc}") from None
        if source.kind in ("file", "package"):
            backbone.load_state_dict(_backbone_state(imagenet_classifier(cfg.architecture, source.file()), in_chans), strict=True)
        self.weight_source = source.label
        return backbone

    def _build_head(self, num_features: int) -> nn.Sequential:
        layers: list[nn.Module] = []
        width = num_features + 2  # pooled features, angle, missing flag
        for hidden in self.config.head.hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Dropout(self.config.head.dropout)]
            width = hidden
        layers.append(nn.Linear(width, 1))
        return nn.Sequential(*layers)

    # --- blocks and policies --------------------------------------------------------------

    def blocks(self) -> list[str]:
        return [b.name for b in self._block_list]

    def _block_parameters(self) -> list[list[tuple[str, nn.Parameter]]]:
        names = {id(m): n for n, m in self.net.named_modules()}
        return [[p for m in b.modules for p in m.named_parameters(prefix=names[id(m)])] for b in self._block_list]

    def _set_trainable(self, flags: list[bool]) -> None:
        self._open = list(flags)
        for params, flag in zip(self._block_parameters(), flags, strict=True):
            for _, p in params:
                p.requires_grad_(flag)

    def trainable_parameter_names(self) -> list[str]:
        return [n for params in self._block_parameters() for n, p in params if p.requires_grad]

    def _train_mode(self) -> None:
        """Training mode, except blocks not training now: their batch norm keeps using its running statistics."""
        self.net.train()
        for block, flag in zip(self._block_list, self._open, strict=True):
            if not flag:
                for m in block.modules:
                    m.eval()

    # --- inputs -----------------------------------------------------------------------------

    def _network_input(self, images: np.ndarray) -> torch.Tensor:
        """Raw dB images -> standardised channels -> the network's input space (N x C x S x S)."""
        return self._to_network(torch.from_numpy(self.inputs.images(images)).permute(0, 3, 1, 2).to(self.device))

    def _to_network(self, z: torch.Tensor) -> torch.Tensor:
        """Standardised channels (N x C x H x W, on the device) -> the network's input space at `image_size`."""
        x = z * self._scale + self._offset
        size = self.config.image_size
        return x if x.shape[-1] == size else F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)

    def _run(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        for block in self._block_list[start:stop]:
            x = block.run(x)
        return x

    def _logits(self, x: torch.Tensor, angle: torch.Tensor, start: int) -> torch.Tensor:
        features = self._run(x, start, len(self._block_list) - 1)
        pooled = features.amax(dim=(2, 3)) if self.config.head.pooling == "max" else features.mean(dim=(2, 3))
        return self._block_list[-1].run(torch.cat([pooled.float(), angle], dim=1)).squeeze(1)

    def _autocast(self) -> torch.autocast:
        enabled = self.config.mixed_precision and self.device.type == "cuda"
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def prefix_features(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        p = self.frozen_prefix()
        self.net.eval()
        out = []
        with torch.no_grad(), self._autocast():
            for i in range(0, len(images), batch_size):
                out.append(self._run(self._network_input(images[i : i + batch_size]), 0, p).float().cpu().numpy())
        return np.concatenate(out) if out else np.empty((0,), np.float32)

    # --- training -------------------------------------------------------------------------

    def _batch(self, inputs: ModelInputs, idx: np.ndarray, augment: Augment | None, rng: np.random.Generator | None) -> torch.Tensor:
        x = inputs.x[idx]
        if augment is not None:
            if rng is None:
                raise ValueError("augmenting a batch needs a random generator")
            x = augment(x, idx, rng)  # raw images, or cached features of a random flip/turn view (the trainer's)
        if inputs.is_features:
            return torch.from_numpy(np.ascontiguousarray(x)).to(self.device)
        return self._network_input(x)

    def _device_images(self, train: ModelInputs, augment: Augment | None, seed: int) -> _DeviceImages:
        """The fit's training images on the device once (1,604 x 2 x 75 x 75 float32 is 36 MB) and what builds batches there."""
        std = self.inputs.standardizer
        assert std is not None  # fitted by prepare() before any fit
        pixels = torch.from_numpy(np.asarray(train.x, np.float32)).permute(0, 3, 1, 2).contiguous().to(self.device)
        mean, scale = (torch.as_tensor(np.asarray(a, np.float32), device=self.device).view(1, -1, 1, 1) for a in (std.mean_, std.scale_))
        return _DeviceImages(pixels, mean, scale, DeviceAugmenter(augment.cfg, seed, self.device) if isinstance(augment, Augmenter) else None)

    def _device_batch(self, images: _DeviceImages, idx: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        """`_batch` on the device: the kept rows `idx`, augmented there, channels and standardising in torch."""
        raw = images.pixels.index_select(0, torch.from_numpy(idx).to(self.device))
        if images.augment is not None:
            raw = images.augment(raw, rng)
        z = torch.stack(channel_planes(raw.permute(0, 2, 3, 1), self.config.channels), dim=1)
        return self._to_network((z - images.mean) / images.scale)

    def _parameter_layers(self) -> list[tuple[int, nn.Parameter]]:
        """(depth layer, parameter) for every parameter of the policy's blocks; the head is the top layer.

        Layers come from the architecture's own `group_matcher` (timm's `group_parameters`, as
        `timm.optim.param_groups_layer_decay` builds layer-wise decay: stem, then each block); an
        architecture without one falls back to our block list (one layer per block).
        """
        backbone = self.net["backbone"]
        matcher = getattr(backbone, "group_matcher", None)
        timm_layers: dict[str, int] = group_parameters(backbone, matcher(coarse=False), reverse=True) if matcher is not None else {}
        n_backbone = max(timm_layers.values()) + 1 if timm_layers else len(self._block_list) - 1
        out = []
        for b, (params, flag) in enumerate(zip(self._block_parameters(), self._trainable, strict=True)):
            for name, p in params if flag else ():
                inner = name.removeprefix("backbone.")
                layer = n_backbone if name.startswith("head.") else timm_layers.get(inner, n_backbone - 1) if timm_layers else b
                out.append((layer, p))
        return out

    def _optimizer(self) -> torch.optim.Optimizer:
        """One optimizer over every parameter the policy trains, one group per depth layer with its own rate.

        Parameters of blocks not yet open (gradual unfreezing) have no gradient and are skipped by
        the optimizer's step until they open, so opening a block keeps everyone's state.
        """
        opt = self.config.optimizer
        layers = self._parameter_layers()
        n_layers = max((layer for layer, _ in layers), default=0) + 1
        rates = block_learning_rates(opt.lr, opt.block_lr_decay, [True] * n_layers)
        groups = [
            {"params": params, "lr": rates[layer], "base_lr": rates[layer]}
            for layer in range(n_layers)
            if (params := [p for depth, p in layers if depth == layer])
        ]
        if opt.name == "sgd":
            return torch.optim.SGD(groups, lr=opt.lr, momentum=opt.momentum, nesterov=opt.nesterov, weight_decay=opt.weight_decay)
        cls = torch.optim.AdamW if opt.name == "adamw" else torch.optim.Adam
        return cls(groups, lr=opt.lr, weight_decay=opt.weight_decay)

    def _reset_head(self, seed: int) -> None:
        torch.manual_seed(seed)
        for m in self.net["head"].modules():
            if isinstance(m, nn.Linear):
                m.reset_parameters()

    def start_fit(self, train: ModelInputs, augment: Augment | None, seed: int) -> None:
        self._reset_head(seed)
        angles = torch.from_numpy(self.inputs.angles(train.angle)).to(self.device)
        labels = torch.from_numpy(np.asarray(train.y, np.float32)).to(self.device)
        start = self.frozen_prefix() if train.is_features else 0
        on_device = self.device_batches and not train.is_features and (augment is None or isinstance(augment, Augmenter))
        images = self._device_images(train, augment, seed) if on_device else None
        self._statistics.restart()
        self._fit = _FitData(train, augment, start, angles, labels, self._optimizer(), images)

    def train_step(self, idx: np.ndarray, rng: np.random.Generator) -> float:
        fit = self._fitting()
        self._train_mode()
        with self._statistics.step(self._open), self._autocast():
            x = self._batch(fit.train, idx, fit.augment, rng) if fit.on_device is None else self._device_batch(fit.on_device, idx, rng)
            logits = self._logits(x, fit.angles[idx], fit.start)
        loss = F.binary_cross_entropy_with_logits(logits.float(), fit.labels[idx])
        fit.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        fit.optimizer.step()
        return float(loss.detach())

    def set_lr_multiplier(self, factor: float) -> None:
        for group in self._fitting().optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor

    def _fitting(self) -> _FitData:
        if self._fit is None:
            raise RuntimeError("start_fit must come before training steps")
        return self._fit

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Copies of every tensor training can change: all but those of the blocks the policy freezes.

        Frozen blocks keep their weights and, in eval mode, their batch-norm statistics, so copying
        them at each better epoch (most of a `head` network) would only cost time.
        """
        frozen = {id(t) for block, flag in zip(self._block_list, self._trainable, strict=True) if not flag
                  for m in block.modules for t in (*m.parameters(), *m.buffers())}  # fmt: skip
        return {k: v.detach().clone() for k, v in self.net.state_dict(keep_vars=True).items() if id(v) not in frozen}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        self.net.load_state_dict(state, strict=False)  # the rest (frozen blocks) never changed

    def predict(self, inputs: ModelInputs, batch_size: int = 64) -> np.ndarray:
        start = self.frozen_prefix() if inputs.is_features else 0
        angles = torch.from_numpy(self.inputs.angles(inputs.angle)).to(self.device)
        self.net.eval()
        out = []
        with torch.no_grad(), self._autocast():
            for i in range(0, len(inputs), batch_size):
                idx = np.arange(i, min(i + batch_size, len(inputs)))
                out.append(torch.sigmoid(self._logits(self._batch(inputs, idx, None, None), angles[idx], start).float()).cpu().numpy())
        return np.concatenate(out).astype(np.float64) if out else np.empty(0)

    # --- similarity -----------------------------------------------------------------------

    def domain_divergence(self, images: np.ndarray, *, rgb: bool = False) -> float:
        """Symmetric KL between each BN layer's batch input statistics and its running (ImageNet) statistics."""
        norms = [m for m in self.net["backbone"].modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not norms:
            raise ConfigError(f"model '{self.name}': policy auto needs batch-norm layers to measure similarity; set policy explicitly")
        per_layer: list[float] = []

        def hook(module: nn.Module, args: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
            running_mean, running_var = module.running_mean, module.running_var
            assert isinstance(running_mean, torch.Tensor) and isinstance(running_var, torch.Tensor)  # hooked on batch-norm layers only
            mean, var = channel_stats(args[0].float().cpu().numpy(), channel_axis=1)
            per_layer.append(symmetric_kl(mean, var, running_mean.cpu().numpy(), running_var.cpu().numpy()))

        if rgb:
            photos = photo_network_input(images, *self._norm, len(self.config.channels))
            x = torch.from_numpy(photos).permute(0, 3, 1, 2).to(self.device)
        else:
            x = self._network_input(images)
        handles = [m.register_forward_hook(hook) for m in norms]
        self.net.eval()
        try:
            with torch.no_grad():
                _timm(self.net["backbone"]).forward_features(x)
        finally:
            for h in handles:
                h.remove()
        return layer_average(per_layer)

    # --- persistence ----------------------------------------------------------------------

    def _save_weights(self, directory: Path) -> None:
        torch.save(self.net.state_dict(), directory / WEIGHTS_FILE)

    def _load_weights(self, directory: Path) -> None:
        self.net.load_state_dict(torch.load(directory / WEIGHTS_FILE, map_location=self.device, weights_only=True), strict=True)
