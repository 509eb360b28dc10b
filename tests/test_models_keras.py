"""vgg16_angle (Keras 3 on TensorFlow): HED weights, one training step, save/load, policies, prefixes, `auto`.

The offline VGG16 weights are an HED edge detector's (hed-bsds500), which has no ImageNet head,
so no ImageNet photo can be classified with them; instead: all 26 conv tensors load, the conv
features differ from random init and are deterministic, and the source is never called imagenet.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from competition.data.dataset import Dataset
from competition.models import weights
from competition.models.keras_vgg import KerasVgg16, hed_conv_weights
from competition.models.registry import create_model, load_model
from competition.models.schema import ModelInputs
from competition.models.similarity import BASELINE_PHOTOS, natural_patches
from competition.training.loop import Callback, FitLoop

pytestmark = pytest.mark.slow
TINY = {"image_size": 32, "head": {"pooling": "max", "hidden": [16], "dropout": 0.3}}
CONV_LAYERS = [f"block{b}_conv{i}" for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)) for i in range(1, n + 1)]


def _inputs(data: Dataset, rows: slice) -> ModelInputs:
    return ModelInputs(data.images[rows], data.angle[rows], data.labels[rows].astype(np.float32))


def test_hed_weights_load_all_26_tensors_deterministically_and_honestly_named(sar: Dataset) -> None:
    path = weights.package_file(weights.PACKAGES["vgg16"])
    conv = hed_conv_weights(path)
    assert list(conv) == CONV_LAYERS and sum(len(v) for v in conv.values()) == 26
    first, second, random = create_model("vgg16_angle", **TINY), create_model("vgg16_angle", **TINY), create_model("vgg16_angle", weights="none", **TINY)
    assert first.weight_source == "hed-bsds500" and first.loaded_tensors == 26 and random.weight_source == "none"
    layer = first._conv_blocks[4][2]
    np.testing.assert_array_equal(layer.get_weights()[0], conv["block5_conv3"][0])
    for model in (first, second, random):
        model.prepare(sar.images, sar.angle)
        model.apply_policy("head")
    features = [m.prefix_features(sar.images[:6]) for m in (first, second, random)]
    assert features[0].shape == (6, 1, 1, 512)
    np.testing.assert_array_equal(features[0], features[1])
    assert not np.allclose(features[0], features[2], rtol=0.1)


def test_two_bands_adapt_block1_conv1() -> None:
    conv = hed_conv_weights(weights.package_file(weights.PACKAGES["vgg16"]))
    model = create_model("vgg16_angle", channels=["hh", "hv"], **TINY)
    kernel = model._conv_blocks[0][0].get_weights()[0]
    assert kernel.shape == (3, 3, 2, 64)
    np.testing.assert_allclose(kernel, conv["block1_conv1"][0][:, :, :2] * 1.5, rtol=1e-6)


def test_builds_trains_one_step_predicts_and_round_trips(sar: Dataset, tmp_path: Path) -> None:
    model = create_model("vgg16_angle", policy="all", **TINY)
    assert model.blocks() == ["block1", "block2", "block3", "block4", "block5", "head"]
    stem_before = model._conv_blocks[0][0].get_weights()[0].copy()
    result = model.fit(_inputs(sar, slice(0, 8)), _inputs(sar, slice(8, 14)), epochs=1, batch_size=8, seed=3)
    assert len(result.history["train_loss"]) == 1 and np.isfinite(result.history["val_loss"][0])
    assert not np.array_equal(stem_before, model._conv_blocks[0][0].get_weights()[0])  # policy all: the stem trained
    test = ModelInputs(sar.images[14:20], sar.angle[14:20])
    p = model.predict(test)
    assert p.shape == (6,) and np.all((p >= 0) & (p <= 1))
    model.save(tmp_path / "vgg")
    loaded = load_model(tmp_path / "vgg")
    assert loaded.weight_source == "hed-bsds500" and loaded.policy == model.policy
    np.testing.assert_allclose(loaded.predict(test), p, rtol=0, atol=1e-6)
    again = create_model("vgg16_angle", policy="all", **TINY)
    again.fit(_inputs(sar, slice(0, 8)), _inputs(sar, slice(8, 14)), epochs=1, batch_size=8, seed=3)
    np.testing.assert_allclose(again.predict(test), p, rtol=0, atol=1e-6)  # same seed, same predictions


HEAD = ["head_angle/kernel", "head_angle/bias", "head_dense1/kernel", "head_dense1/bias", "head_out/kernel", "head_out/bias"]


def _conv_params(*blocks: int) -> list[str]:
    return [f"{layer}/{w}" for layer in CONV_LAYERS if int(layer[5]) in blocks for w in ("kernel", "bias")]


@pytest.mark.parametrize(
    ("policy", "expected", "prefix"),
    [
        ("head", HEAD, 5),
        ("top:2", _conv_params(4, 5) + HEAD, 3),
        ("all_but_stem", _conv_params(2, 3, 4, 5) + HEAD, 1),
        ("all", _conv_params(1, 2, 3, 4, 5) + HEAD, 0),
    ],
)
def test_policies_train_exactly_the_expected_parameters(policy: str, expected: list[str], prefix: int) -> None:
    model = create_model("vgg16_angle", weights="none", **TINY)
    model.apply_policy(policy)
    assert model.trainable_parameter_names() == expected
    assert model.frozen_prefix() == prefix


def test_cached_prefix_features_give_the_full_path_result(sar: Dataset) -> None:
    model = create_model("vgg16_angle", **TINY)
    model.prepare(sar.images[:16], sar.angle[:16])
    model.apply_policy("top:1")
    features = model.prefix_features(sar.images[:16])
    raw = _inputs(sar, slice(0, 16))
    cached = ModelInputs(features, raw.angle, raw.y, is_features=True)
    np.testing.assert_allclose(model.predict(cached), model.predict(raw), rtol=0, atol=1e-5)
    model.fit(
        ModelInputs(features[:10], raw.angle[:10], raw.y[:10], True), ModelInputs(features[10:], raw.angle[10:], raw.y[10:], True), epochs=1, batch_size=10
    )
    np.testing.assert_allclose(model.predict(cached), model.predict(raw), rtol=0, atol=1e-5)


def test_photos_score_closer_to_natural_images_than_sar_and_noise(sar: Dataset) -> None:
    model = create_model("vgg16_angle")
    model.prepare(sar.images, sar.angle)
    photos = model.domain_divergence(natural_patches(BASELINE_PHOTOS, 12, seed=2), rgb=True)
    chips = model.domain_divergence(sar.images[:12])
    noise = model.domain_divergence(np.random.default_rng(0).random((12, 75, 75, 3)), rgb=True)
    assert photos < chips < noise
    decision = model.apply_policy("auto", sar.images[:16])
    assert decision.name == "all_but_stem" and "conv activations vs natural photos" in decision.reason


class _OptimizerRecord(Callback):
    """At each epoch end: the head's and block5's optimizer objects, their step counts and block5's first kernel."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, int, int, int]] = []
        self.block5: list[np.ndarray] = []

    def on_epoch_end(self, loop: FitLoop, metrics: dict[str, float]) -> None:
        model = loop.network
        assert isinstance(model, KerasVgg16) and model._fit is not None
        head, block5 = model._fit.optimizers[5], model._fit.optimizers[4]
        self.rows.append((id(head), id(block5), int(head.iterations.numpy()), int(block5.iterations.numpy())))
        self.block5.append(model._conv_blocks[4][0].get_weights()[0].copy())


def test_unfreezing_keeps_the_optimizer_state_and_blocks_get_their_own_rates(sar: Dataset) -> None:
    optimizer = {"name": "sgd", "lr": 1e-3, "block_lr_decay": 0.5, "schedule": "warmup_cosine", "warmup_epochs": 1}
    model = create_model("vgg16_angle", weights="none", policy="top:1", train={"unfreeze_every": 1}, optimizer=optimizer, **TINY)
    block4_before = model._conv_blocks[3][0].get_weights()[0].copy()
    block5_before = model._conv_blocks[4][0].get_weights()[0].copy()
    record = _OptimizerRecord()
    model.fit(_inputs(sar, slice(0, 8)), _inputs(sar, slice(8, 12)), epochs=3, batch_size=8, callbacks=[record])  # one step an epoch
    assert [row[2:] for row in record.rows] == [(1, 0), (2, 1), (3, 2)]  # block5 opens at epoch 1; the head's momentum carries on
    assert len({row[:2] for row in record.rows}) == 1  # the optimizers are built once per fit
    np.testing.assert_array_equal(block5_before, record.block5[0])
    assert not np.array_equal(block5_before, record.block5[1])  # opened at epoch 1 and trained
    np.testing.assert_array_equal(block4_before, model._conv_blocks[3][0].get_weights()[0])  # frozen by the policy: never opens
    assert model._fit is not None
    rates = {b: float(opt.learning_rate.numpy()) for b, opt in model._fit.optimizers.items()}
    assert set(rates) == {4, 5} and rates[4] == pytest.approx(rates[5] * 0.5)  # block5 at half the head's rate
    assert rates[5] == pytest.approx(1e-3 * 0.505)  # warmup_cosine over 3 steps (1 of warm-up): the last at (1 + 0.01) / 2
    assert model.trainable_parameter_names() == _conv_params(5) + HEAD  # the policy is restored after the fit
