"""`vgg16_angle`: the classic Kaggle model in Keras 3 on TensorFlow.

VGG16 without its top on 75 x 75 x 3 (HH, HV, their mean) -> block5_pool -> GlobalMaxPooling2D;
the standardised angle and its missing flag through Dense(1); concatenated; Dense 512 relu,
Dropout 0.3, Dense 512 relu, Dropout 0.3, sigmoid; SGD (lr 1e-3, momentum 0.9, Nesterov);
binary cross-entropy. Blocks: block1 (the stem) ... block5, head.

Weights offline: the conv layers of the HED edge detector (`hed-bsds500`: ImageNet VGG16 tuned on
BSDS500 edges, not ImageNet VGG16 itself); the real Keras ImageNet notop file when the user
names it in `weights_file` or the machine is online (docs/weights.md).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import torch  # noqa: F401 - torch and torchvision (timm) must be imported before TensorFlow in one process,
import torchvision  # noqa: F401 - else the process segfaults once both are used (docs/weights.md)

# isort: split
import h5py
import keras
import numpy as np
from keras import layers

from competition.errors import ConfigError
from competition.models import weights as wt
from competition.models.base import NetworkModel
from competition.models.inputs import network_affine, photo_network_input
from competition.models.policies import block_learning_rates
from competition.models.schema import Augment, ModelConfig, ModelInputs
from competition.models.similarity import REFERENCE_PHOTOS, RELATIVE_EPS, channel_stats, layer_average, natural_patches, symmetric_kl

WEIGHTS_FILE = "model.weights.h5"
N_BLOCKS = 5
CAFFE_MEAN_RGB = (123.68 / 255, 116.779 / 255, 103.939 / 255)  # preprocess_input's BGR means, listed R, G, B
CAFFE_STD = (1 / 255,) * 3
_HED_CONVS = {1: 2, 2: 2, 3: 3, 4: 3, 5: 3}  # convolutions per block
_REFERENCE_N = 48


def pin_threads(n: int) -> bool:
    """Fix TensorFlow's thread pools in this process at `n` threads each: intra-op (they split each op's
    work, hence the last bits of a fit) and inter-op (ops run at once), so that a unit computes the same
    bytes whichever engine runs it and holds the CPUs it asked for.

    TensorFlow reads both once, when it initialises (its first op), and keeps them for the life of the
    process (`tf.config.threading`): True when they are `n` now (set here, or already); False when
    TensorFlow already runs in this process with other counts, which then stay.
    """
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(n)
    except RuntimeError:  # "... cannot be modified after initialization"
        return False
    return True


def _hed_layout(path: Path) -> bool:
    with h5py.File(path, "r") as f:
        return "block1/layers/conv2d/vars/0" in f


def hed_conv_weights(path: Path) -> dict[str, list[np.ndarray]]:
    """The 13 VGG16 conv layers (26 tensors) of an HED weight file, keyed by Keras layer name; side layers skipped."""
    out = {}
    with h5py.File(path, "r") as f:
        for b, n in _HED_CONVS.items():
            for i in range(n):
                group = f[f"block{b}/layers/conv2d{'' if i == 0 else f'_{i}'}/vars"]
                out[f"block{b}_conv{i + 1}"] = [group["0"][()], group["1"][()]]
    return out


def _keras_conv_weights(model: keras.Model) -> dict[str, list[np.ndarray]]:
    return {layer.name: layer.get_weights() for layer in model.layers if "_conv" in layer.name}


def _adapt_stem(kernel: np.ndarray, in_chans: int) -> np.ndarray:
    """timm's adapt_input_conv for a Keras kernel (H, W, 3, O): sum for one band, else repeat, cut, rescale."""
    if in_chans == kernel.shape[2]:
        return kernel
    if in_chans == 1:
        return kernel.sum(axis=2, keepdims=True)
    reps = math.ceil(in_chans / kernel.shape[2])
    return np.tile(kernel, (1, 1, reps, 1))[:, :, :in_chans] * (kernel.shape[2] / in_chans)


class _Head(TypedDict):
    """The head's layers, shared by every suffix model."""

    pool: layers.Layer
    angle: layers.Layer
    concat: layers.Layer
    mlp: list[layers.Layer]


@dataclass
class _KerasFit:
    """What one fit's steps share: inputs, the first block they enter, one optimizer per trained block and its base rate."""

    train: ModelInputs
    augment: Augment | None
    start: int
    angles: np.ndarray
    labels: np.ndarray
    optimizers: dict[int, keras.optimizers.Optimizer]
    rates: dict[int, float]
    steps: dict[tuple[bool, ...], Callable[[np.ndarray, np.ndarray, np.ndarray], Any]]


class KerasVgg16(NetworkModel):
    """VGG16 + angle, as the classic public kernels built it."""

    framework = "keras"
    divergence_measure = "symmetric KL of conv activations vs natural photos"

    def __init__(self, config: ModelConfig, *, pretrained: bool = True) -> None:
        super().__init__(config)
        if config.architecture != "vgg16":
            raise ConfigError(f"model '{config.name}': the Keras adapter builds architecture 'vgg16', got {config.architecture!r}")
        if config.device == "cuda" and not _has_gpu():
            raise ConfigError(f"model '{config.name}': key 'device' is cuda but TensorFlow sees no GPU here; use device=auto or cpu")
        if config.mixed_precision and _has_gpu():
            keras.mixed_precision.set_global_policy("mixed_bfloat16")  # no loss scaling needed, as torch's bfloat16 autocast
        keras.utils.set_random_seed(config.seed)
        size, chans = config.image_size, len(config.channels)
        with warnings.catch_warnings():  # two bands are intended: block1_conv1 is adapted below
            warnings.filterwarnings("ignore", message="This model usually expects 1 or 3 input channels")
            vgg = keras.applications.VGG16(include_top=False, weights=None, input_shape=(size, size, chans))
        self._conv_blocks = [[layer for layer in vgg.layers if layer.name.startswith(f"block{b}_")] for b in range(1, N_BLOCKS + 1)]
        self._head = self._build_head()
        self._suffixes: dict[int, keras.Model] = {}  # block `start` -> probability (0 = the whole network)
        self._prefixes: dict[int, keras.Model] = {}  # network input -> output of the first `stop` blocks
        self._probe: keras.Model | None = None  # network input -> every conv layer's output
        self._fit: _KerasFit | None = None
        self._reference: list[tuple[np.ndarray, np.ndarray]] | None = None
        self._scale, self._offset = network_affine(CAFFE_MEAN_RGB, CAFFE_STD, chans)
        self._model(0)  # builds the head's layers
        self.loaded_tensors = 0
        if pretrained:
            self._load_pretrained()
        self._trainable = [True] * (N_BLOCKS + 1)
        self._open = list(self._trainable)  # the blocks training now (fewer than the policy's while gradually unfreezing)

    # --- construction ---------------------------------------------------------------------

    def _build_head(self) -> _Head:
        head = self.config.head
        pool = layers.GlobalMaxPooling2D(name="head_pool") if head.pooling == "max" else layers.GlobalAveragePooling2D(name="head_pool")
        mlp: list[layers.Layer] = []
        for i, units in enumerate(head.hidden):
            mlp += [layers.Dense(units, activation="relu", name=f"head_dense{i + 1}"), layers.Dropout(head.dropout, name=f"head_dropout{i + 1}")]
        mlp.append(layers.Dense(1, activation="sigmoid", dtype="float32", name="head_out"))
        return {"pool": pool, "angle": layers.Dense(1, name="head_angle"), "concat": layers.Concatenate(name="head_concat"), "mlp": mlp}

    def _model(self, start: int) -> keras.Model:
        """The network from block `start` (0 = the network input image) to the probability; layers are shared."""
        if start not in self._suffixes:
            shape = (self.config.image_size, self.config.image_size, len(self.config.channels))
            image = keras.Input(shape=shape if start == 0 else self._prefix_model(start).output.shape[1:], name="image")
            angle = keras.Input(shape=(2,), name="angle")
            x = image
            for block in self._conv_blocks[start:]:
                for layer in block:
                    x = layer(x)
            h = self._head
            x = h["concat"]([h["pool"](x), h["angle"](angle)])
            for layer in h["mlp"]:
                x = layer(x)
            self._suffixes[start] = keras.Model(inputs=[image, angle], outputs=x, name=f"vgg16_angle_from_{start}")
        return self._suffixes[start]

    def _prefix_model(self, stop: int) -> keras.Model:
        """Network input -> output of the first `stop` blocks."""
        if stop not in self._prefixes:
            image = keras.Input(shape=(self.config.image_size, self.config.image_size, len(self.config.channels)))
            x = image
            for block in self._conv_blocks[:stop]:
                for layer in block:
                    x = layer(x)
            self._prefixes[stop] = keras.Model(image, x)
        return self._prefixes[stop]

    def _load_pretrained(self) -> None:
        cfg = self.config
        source = wt.resolve(cfg.name, "vgg16", cfg.weights, cfg.weights_file, wt.hub_label("keras", "vgg16"))
        self.weight_source = source.label
        if source.kind == "none":
            return
        if source.kind == "hub":
            conv = _keras_conv_weights(keras.applications.VGG16(include_top=False, weights="imagenet"))
        elif _hed_layout(source.file()):
            conv = hed_conv_weights(source.file())
        else:
            reference = keras.applications.VGG16(include_top=False, weights=None, input_shape=(cfg.image_size, cfg.image_size, 3))
            try:
                reference.load_weights(str(source.path))
            except (ValueError, OSError, KeyError) as exc:
                raise wt.WeightsError(f"{source.path}: not Keras VGG16 notop weights ({exc})") from None
            conv = _keras_conv_weights(reference)
        self.loaded_tensors = self._set_conv_weights(conv, str(source.path or source.label))

    def _set_conv_weights(self, conv: dict[str, list[np.ndarray]], origin: str) -> int:
        count = 0
        for layer in (unit for block in self._conv_blocks for unit in block if "_conv" in unit.name):
            if layer.name not in conv:
                raise wt.WeightsError(f"{origin}: no weights for layer {layer.name}")
            kernel, bias = conv[layer.name]
            if layer.name == "block1_conv1":
                kernel = _adapt_stem(kernel, len(self.config.channels))
            expected = [tuple(w.shape) for w in layer.weights]
            if [tuple(kernel.shape), tuple(bias.shape)] != expected:
                raise wt.WeightsError(f"{origin}: {layer.name} has shapes {kernel.shape}, {bias.shape}; expected {expected}")
            layer.set_weights([kernel, bias])
            count += 2
        return count

    # --- blocks and policies --------------------------------------------------------------

    def blocks(self) -> list[str]:
        return [f"block{b}" for b in range(1, N_BLOCKS + 1)] + ["head"]

    def _block_layers(self) -> list[list[layers.Layer]]:
        h = self._head
        return [*self._conv_blocks, [h["pool"], h["angle"], h["concat"], *h["mlp"]]]

    def _set_trainable(self, flags: list[bool]) -> None:
        for block, flag in zip(self._block_layers(), flags, strict=True):
            for layer in block:
                layer.trainable = flag
        self._open = list(flags)

    def trainable_parameter_names(self) -> list[str]:
        return [w.path for block in self._block_layers() for layer in block for w in layer.trainable_weights]

    # --- inputs -----------------------------------------------------------------------------

    def _network_input(self, images: np.ndarray) -> np.ndarray:
        x = self.inputs.images(images) * self._scale + self._offset
        size = self.config.image_size
        return x if x.shape[1] == size else keras.ops.convert_to_numpy(keras.ops.image.resize(x, (size, size)))

    def prefix_features(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        p = self.frozen_prefix()
        x = self._network_input(images)
        return x if p == 0 else self._prefix_model(p).predict(x, batch_size=batch_size, verbose=0)

    # --- training -------------------------------------------------------------------------

    def _block_variables(self) -> list[list[keras.Variable]]:
        """Every variable of each block (whether it trains now or not)."""
        return [[w for layer in block for w in layer.weights] for block in self._block_layers()]

    def _optimizer(self, lr: float) -> keras.optimizers.Optimizer:
        opt = self.config.optimizer
        if opt.name == "sgd":
            return keras.optimizers.SGD(learning_rate=lr, momentum=opt.momentum, nesterov=opt.nesterov, weight_decay=opt.weight_decay or None)
        if opt.name == "adamw":
            return keras.optimizers.AdamW(learning_rate=lr, weight_decay=opt.weight_decay)
        return keras.optimizers.Adam(learning_rate=lr, weight_decay=opt.weight_decay or None)

    def _reset_head(self, seed: int) -> None:
        keras.utils.set_random_seed(seed)
        for layer in [self._head["angle"], *self._head["mlp"]]:
            if isinstance(layer, layers.Dense):
                layer.kernel.assign(layer.kernel_initializer(layer.kernel.shape))
                layer.bias.assign(layer.bias_initializer(layer.bias.shape))

    def start_fit(self, train: ModelInputs, augment: Augment | None, seed: int) -> None:
        """Reset the head; one optimizer per block the policy trains, each built now over its block's variables.

        Per-block optimizers give discriminative rates (`optimizer.block_lr_decay`, as
        `policies.block_learning_rates`) and keep every block's state when another block opens.
        """
        self._reset_head(seed)
        opt = self.config.optimizer
        rates = block_learning_rates(opt.lr, opt.block_lr_decay, self._trainable)
        optimizers = {}
        for b, (variables, lr) in enumerate(zip(self._block_variables(), rates, strict=True)):
            if lr > 0 and variables:
                optimizers[b] = self._optimizer(lr)
                optimizers[b].build(variables)
        start = self.frozen_prefix() if train.is_features else 0
        angles, labels = self.inputs.angles(train.angle), np.asarray(train.y, np.float32)
        self._fit = _KerasFit(train, augment, start, angles, labels, optimizers, {b: r for b, r in enumerate(rates)}, {})

    def _fitting(self) -> _KerasFit:
        if self._fit is None:
            raise RuntimeError("start_fit must come before training steps")
        return self._fit

    def _batch(self, inputs: ModelInputs, idx: np.ndarray, augment: Augment | None, rng: np.random.Generator) -> np.ndarray:
        x = inputs.x[idx]
        if augment is not None:
            x = augment(x, idx, rng)  # raw images, or cached features of a random flip/turn view
        return x if inputs.is_features else self._network_input(x)

    def train_step(self, idx: np.ndarray, rng: np.random.Generator) -> float:
        fit = self._fitting()
        x = self._batch(fit.train, idx, fit.augment, rng)
        return float(self._step(fit)(x, fit.angles[idx], fit.labels[idx]))

    def _step(self, fit: _KerasFit) -> Callable[[np.ndarray, np.ndarray, np.ndarray], Any]:
        """The compiled step for the blocks open now (one per set of open blocks, kept for the fit)."""
        import tensorflow as tf

        key = tuple(self._open)
        if key not in fit.steps:
            model = self._model(fit.start)
            blocks = [b for b, flag in enumerate(self._open) if flag and b >= fit.start and b in fit.optimizers]
            per_block = [self._block_variables()[b] for b in blocks]
            flat = [v for variables in per_block for v in variables]

            @tf.function(reduce_retracing=True)
            def step(x: tf.Tensor, angle: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
                with tf.GradientTape() as tape:
                    p = model([x, angle], training=True)
                    loss = keras.ops.mean(keras.losses.binary_crossentropy(keras.ops.expand_dims(y, -1), p))
                grads = tape.gradient(loss, flat)
                i = 0
                for b, variables in zip(blocks, per_block, strict=True):
                    fit.optimizers[b].apply(grads[i : i + len(variables)], variables)
                    i += len(variables)
                return loss

            fit.steps[key] = step
        return fit.steps[key]

    def set_lr_multiplier(self, factor: float) -> None:
        fit = self._fitting()
        for b, optimizer in fit.optimizers.items():
            optimizer.learning_rate = fit.rates[b] * factor

    def trainable_state(self) -> dict[str, np.ndarray]:
        """Copies of the variables of the policy's blocks (frozen blocks never change)."""
        return {v.path: np.array(v.numpy()) for variables, flag in zip(self._block_variables(), self._trainable, strict=True) if flag for v in variables}

    def load_trainable_state(self, state: dict[str, np.ndarray]) -> None:
        for variables in self._block_variables():
            for v in variables:
                if v.path in state:
                    v.assign(state[v.path])

    def predict(self, inputs: ModelInputs, batch_size: int = 64) -> np.ndarray:
        start = self.frozen_prefix() if inputs.is_features else 0
        x = inputs.x if inputs.is_features else self._network_input(inputs.x)
        if len(x) == 0:
            return np.empty(0)
        p = self._model(start).predict([x, self.inputs.angles(inputs.angle)], batch_size=batch_size, verbose=0)
        return np.asarray(p, np.float64).reshape(-1)

    # --- similarity -----------------------------------------------------------------------

    def _conv_outputs(self, x: np.ndarray) -> list[np.ndarray]:
        if self._probe is None:
            image = keras.Input(shape=x.shape[1:])
            h, outs = image, []
            for layer in (unit for block in self._conv_blocks for unit in block):
                h = layer(h)
                if "_conv" in layer.name:
                    outs.append(h)
            self._probe = keras.Model(image, outs)
        return [np.asarray(o) for o in self._probe.predict(x, batch_size=16, verbose=0)]

    def _photo_input(self, rgb: np.ndarray) -> np.ndarray:
        """Photos as preprocess_input makes them (BGR, ImageNet means subtracted, 0-255 scale)."""
        x = photo_network_input(rgb, CAFFE_MEAN_RGB, CAFFE_STD, len(self.config.channels), bgr=True)
        size = self.config.image_size
        return x if x.shape[1] == size else keras.ops.convert_to_numpy(keras.ops.image.resize(x, (size, size)))

    def domain_divergence(self, images: np.ndarray, *, rgb: bool = False) -> float:
        """Symmetric KL between conv activation statistics of `images` and of natural photos (no BN to compare with)."""
        if self._reference is None:
            photos = natural_patches(REFERENCE_PHOTOS, _REFERENCE_N, size=75, seed=0)
            self._reference = [channel_stats(a, -1) for a in self._conv_outputs(self._photo_input(photos))]
        x = self._photo_input(images) if rgb else self._network_input(images)
        per_layer = [
            symmetric_kl(*channel_stats(a, -1), *ref, eps=RELATIVE_EPS * float(ref[1].mean()))
            for a, ref in zip(self._conv_outputs(x), self._reference, strict=True)
        ]
        return layer_average(per_layer)

    # --- persistence ----------------------------------------------------------------------

    def _save_weights(self, directory: Path) -> None:
        self._model(0).save_weights(str(directory / WEIGHTS_FILE))

    def _load_weights(self, directory: Path) -> None:
        self._model(0).load_weights(str(directory / WEIGHTS_FILE))

    @classmethod
    def computes_on_gpu(cls, config: ModelConfig) -> bool:
        """TensorFlow places the work on a GPU whenever it sees one (`device` only refuses `cuda` without one)."""
        return _has_gpu()


def _has_gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))
