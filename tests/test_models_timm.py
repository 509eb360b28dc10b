"""timm models: offline ImageNet weights, one training step, save/load, policies, cached prefixes, `auto`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from competition.data.dataset import Dataset
from competition.metrics import logloss
from competition.models import weights
from competition.models.base import ImageModel, ModelInputs
from competition.models.registry import create_model, load_model
from competition.models.similarity import BASELINE_PHOTOS, natural_patches
from competition.models.timm_net import TimmModel, imagenet_classifier
from competition.training.loop import Callback, FitLoop

pytestmark = pytest.mark.slow
TINY = {"image_size": 32, "head": {"pooling": "avg", "hidden": [16], "dropout": 0.1}}
TABBY, TIGER_CAT, EGYPTIAN_CAT, ESPRESSO = 281, 282, 285, 967


def _inputs(data: Dataset, rows: slice) -> ModelInputs:
    return ModelInputs(data.images[rows], data.angle[rows], data.labels[rows].astype(np.float32))


def _photo_batch(model: torch.nn.Module, name: str) -> torch.Tensor:
    from skimage import data, transform

    img = transform.resize(getattr(data, name)(), (224, 224), anti_aliasing=True)
    cfg = model.pretrained_cfg
    mean, std = torch.tensor(cfg["mean"]).view(1, 3, 1, 1), torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    return (torch.from_numpy(img).permute(2, 0, 1)[None].float() - mean) / std


@pytest.mark.parametrize("arch", ["tf_efficientnet_lite0", "mobilenetv2_100"])
def test_package_weights_still_classify_imagenet_photos(arch: str) -> None:
    """A scrambled name mapping cannot call the cat a cat and the coffee espresso."""
    path = weights.package_file(weights.PACKAGES[arch])
    classifier = imagenet_classifier(arch, path)
    with torch.no_grad():
        cat = classifier(_photo_batch(classifier, "chelsea")).softmax(1)[0]
        coffee = classifier(_photo_batch(classifier, "coffee")).softmax(1)[0]
    assert int(cat.argmax()) in (TABBY, TIGER_CAT, EGYPTIAN_CAT) and float(cat[[TABBY, TIGER_CAT, EGYPTIAN_CAT]].sum()) > 0.5
    assert int(coffee.argmax()) == ESPRESSO and float(coffee[ESPRESSO]) > 0.5
    # the registered model carries exactly these weights (three bands: no stem adaptation)
    model = create_model(arch, **TINY)
    assert model.weight_source == weights.PACKAGES[arch].label
    reference = classifier.state_dict()
    for name, tensor in model.net["backbone"].state_dict().items():
        assert torch.equal(tensor, reference[name]), name


def test_two_bands_adapt_the_pretrained_stem_and_a_user_file_loads(tmp_path: Path) -> None:
    path = weights.package_file(weights.PACKAGES["tf_efficientnet_lite0"])
    stem = imagenet_classifier("tf_efficientnet_lite0", path).conv_stem.weight
    model = create_model("tf_efficientnet_lite0", channels=["hh", "hv"], weights_file=str(path), **TINY)
    assert model.weight_source == f"file:{path}"
    adapted = model.net["backbone"].conv_stem.weight
    assert adapted.shape[1] == 2 and torch.allclose(adapted, stem[:, :2] * 1.5)  # timm's adapt_input_conv: repeat, cut, rescale by 3/2


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("tf_efficientnet_lite0", {}),
        ("mobilenetv2_100", {"channels": ["hh", "hv"]}),
        ("resnet18", {"weights": "none"}),  # any timm architecture by name, random init on request
    ],
)
def test_builds_trains_one_step_predicts_and_round_trips(name: str, overrides: dict, sar: Dataset, tmp_path: Path) -> None:
    model = create_model(name, policy="all", **TINY, **overrides)
    head_before = [p.detach().clone() for p in model.net["head"].parameters()]
    result = model.fit(_inputs(sar, slice(0, 8)), _inputs(sar, slice(8, 14)), epochs=1, batch_size=8, seed=3)
    assert len(result.history["train_loss"]) == 1 and np.isfinite(result.history["val_loss"][0]) and result.best_epoch == 0
    assert all(p.grad is not None for p in model.net.parameters())  # policy all: every parameter took part in the step
    assert all(not torch.equal(a, b) for a, b in zip(head_before, model.net["head"].parameters(), strict=True))
    test = ModelInputs(sar.images[14:20], sar.angle[14:20])
    p = model.predict(test)
    assert p.shape == (6,) and p.dtype == np.float64 and np.all((p >= 0) & (p <= 1))
    model.save(tmp_path / "m")
    model.save(tmp_path / "m")  # replacing an existing save is atomic too
    loaded = load_model(tmp_path / "m")
    assert type(loaded) is type(model) and loaded.weight_source == model.weight_source and loaded.policy == model.policy
    np.testing.assert_allclose(loaded.predict(test), p, rtol=0, atol=1e-6)
    assert sorted(q.name for q in tmp_path.iterdir()) == ["m"]  # no temporary directory left behind


def test_same_seed_same_predictions(sar: Dataset) -> None:
    preds = []
    for _ in range(2):
        model = create_model("resnet18", weights="none", policy="all", **TINY)
        model.fit(_inputs(sar, slice(0, 8)), _inputs(sar, slice(8, 12)), epochs=1, batch_size=4, seed=7)
        preds.append(model.predict(_inputs(sar, slice(12, 18))))
    np.testing.assert_array_equal(preds[0], preds[1])


def _block_of(param: str) -> str:
    parts = param.split(".")
    if parts[0] == "head":
        return "head"
    if parts[1] in ("conv_stem", "bn1"):
        return "stem"
    if parts[1] in ("conv_head", "bn2"):
        return "conv_head"
    return f"blocks.{parts[2]}"


@pytest.mark.parametrize(
    ("policy", "trained"),
    [
        ("head", {"head"}),
        ("top:2", {"head", "conv_head", "blocks.6"}),
        ("all_but_stem", {"head", "conv_head", *(f"blocks.{i}" for i in range(7))}),
        ("all", {"head", "stem", "conv_head", *(f"blocks.{i}" for i in range(7))}),
    ],
)
def test_policies_train_exactly_the_expected_parameters(policy: str, trained: set[str]) -> None:
    model = create_model("tf_efficientnet_lite0", weights="none", **TINY)
    assert model.blocks() == ["stem", *(f"blocks.{i}" for i in range(7)), "conv_head", "head"]
    model.apply_policy(policy)
    every = [n for n, _ in model.net.named_parameters()]
    assert model.trainable_parameter_names() == [n for n in every if _block_of(n) in trained]
    assert model.frozen_prefix() == min(model.blocks().index(b) for b in trained)


def test_frozen_blocks_keep_their_batch_norm_statistics(sar: Dataset) -> None:
    model = create_model("mobilenetv2_100", policy="top:1", **TINY)
    model.apply_policy("top:1")
    frozen_bn = model.net["backbone"].blocks[0][0].bn1
    trained_bn = model.net["backbone"].bn2
    frozen_before, trained_before = frozen_bn.running_mean.clone(), trained_bn.running_mean.clone()
    model.fit(_inputs(sar, slice(0, 8)), _inputs(sar, slice(8, 12)), epochs=1, batch_size=8)
    assert torch.equal(frozen_bn.running_mean, frozen_before)  # inference mode: running statistics untouched
    assert not torch.equal(trained_bn.running_mean, trained_before)


def test_a_trained_blocks_batch_norm_statistics_are_the_fits_own_from_its_first_batch(sar: Dataset) -> None:
    """`RunningStatistics`: a trained layer's first batch of a fit replaces its running statistics (momentum 1), the
    n-th weighs 1/n (a cumulative average) until that reaches the layer's own momentum (0.1 here); each fit counts
    again, and the layer keeps its own momentum outside training steps. Before, the pretrained statistics kept 90%
    after the first batch: garbage in them showed in evaluation."""
    train, valid = _inputs(sar, slice(0, 24)), _inputs(sar, slice(24, 28))
    clean, spoiled = (create_model("mobilenetv2_100", policy="top:1", **TINY) for _ in range(2))
    seen: list[float] = []
    bn = clean.net["backbone"].bn2
    bn.register_forward_pre_hook(lambda m, _: seen.append(m.momentum) if m.training else None)
    for model in (clean, spoiled):
        model.apply_policy("top:1")
    spoiled.net["backbone"].bn2.running_mean.add_(100.0)
    for model in (clean, spoiled):
        model.fit(train, valid, epochs=1, batch_size=8, seed=3)  # 3 steps
    assert torch.allclose(bn.running_mean, spoiled.net["backbone"].bn2.running_mean) and float(bn.running_mean.abs().max()) < 50
    assert seen == pytest.approx([1, 1 / 2, 1 / 3]) and bn.momentum == 0.1
    seen.clear()
    bn.running_mean.add_(100.0)
    clean.fit(train, valid, epochs=4, batch_size=8, seed=3)  # 12 steps, counted from 1 again
    assert seen == pytest.approx([1 / n for n in range(1, 11)] + [0.1, 0.1]) and float(bn.running_mean.abs().max()) < 50
    assert clean.net["backbone"].blocks[0][0].bn1.momentum == 0.1  # frozen: never touched


def test_cached_prefix_features_give_the_full_path_result(sar: Dataset) -> None:
    model = create_model("tf_efficientnet_lite0", **TINY)
    model.prepare(sar.images[:20], sar.angle[:20])
    model.apply_policy("top:2")
    assert model.frozen_prefix() == 7
    features = model.prefix_features(sar.images[:20], batch_size=7)
    assert features.shape[0] == 20
    raw = ModelInputs(sar.images[:20], sar.angle[:20], sar.labels[:20].astype(np.float32))
    cached = ModelInputs(features, sar.angle[:20], raw.y, is_features=True)
    np.testing.assert_allclose(model.predict(cached), model.predict(raw), rtol=0, atol=1e-5)
    model.fit(
        ModelInputs(features[:12], raw.angle[:12], raw.y[:12], True), ModelInputs(features[12:], raw.angle[12:], raw.y[12:], True), epochs=1, batch_size=6
    )
    np.testing.assert_allclose(model.predict(cached), model.predict(raw), rtol=0, atol=1e-5)
    seen: list[tuple[int, ...]] = []
    model.fit(cached, cached, epochs=1, batch_size=4, augment=lambda x, idx, rng: seen.append(x.shape) or x)
    assert seen and all(shape[1:] == features.shape[1:] for shape in seen)  # augmentation reaches cached features


def test_photos_score_closer_to_imagenet_than_sar_and_noise_and_auto_says_why(sar: Dataset) -> None:
    model = create_model("mobilenetv2_100")
    decision = model.apply_policy("auto", sar.images)
    assert not model.inputs.fitted  # measuring leaves the input statistics to prepare() / fit()
    model.prepare(sar.images, sar.angle)
    photos = model.domain_divergence(natural_patches(BASELINE_PHOTOS, 16, seed=2), rgb=True)
    chips = model.domain_divergence(sar.images)
    noise = model.domain_divergence(np.random.default_rng(0).random((16, 75, 75, 3)), rgb=True)
    assert photos < chips < noise
    assert decision.requested == "auto" and decision.name == "all_but_stem"  # 40 images: small; SAR: different
    assert decision.numbers["n_train"] == 40 and decision.numbers["score"] > decision.numbers["different_above"]
    assert "n_train=40" in decision.reason and "natural photos" in decision.reason
    assert create_model("resnet18", weights="none").apply_policy("auto", sar.images).name == "all"


def _parameters(model: ImageModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.net.named_parameters()}


def _max_change(before: dict[str, torch.Tensor], model: ImageModel, prefix: str) -> float:
    after = _parameters(model)
    return max(float((after[k] - v).abs().max()) for k, v in before.items() if k.startswith(prefix))


class _OptimizerRecord(Callback):
    """At each epoch end: the optimizer object and the AdamW step count of a head and a layer4 weight."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, int, int]] = []

    def on_epoch_end(self, loop: FitLoop, metrics: dict[str, float]) -> None:
        model = loop.network
        assert isinstance(model, TimmModel) and model._fit is not None
        optimizer = model._fit.optimizer
        steps = [
            int(optimizer.state[p]["step"]) if p in optimizer.state else 0 for p in (model.net["head"][0].weight, model.net["backbone"].layer4[1].conv2.weight)
        ]
        self.rows.append((id(optimizer), *steps))


def test_gradual_unfreezing_keeps_the_optimizer_state(sar: Dataset) -> None:
    train, valid = _inputs(sar, slice(0, 8)), _inputs(sar, slice(8, 12))
    gradual = create_model("resnet18", weights="none", policy="all", train={"unfreeze_every": 1}, **TINY)
    before, record = _parameters(gradual), _OptimizerRecord()
    gradual.fit(train, valid, epochs=1, batch_size=8)  # epoch 0: the head alone
    assert _max_change(before, gradual, "head.") > 0 and _max_change(before, gradual, "backbone.") == 0
    assert gradual.trainable_parameter_names() == [n for n, _ in gradual.net.named_parameters()]  # the policy is restored
    gradual.fit(train, valid, epochs=3, batch_size=8, callbacks=[record])  # one step an epoch; layer4 opens at epoch 1
    assert [row[1:] for row in record.rows] == [(1, 0), (2, 1), (3, 2)]  # the head's moments and step count carry on
    assert len({row[0] for row in record.rows}) == 1  # one optimizer for the whole fit
    fit = gradual._fit
    assert isinstance(gradual, TimmModel) and fit is not None
    # warm-up_cosine over 3 steps (1 of warm-up): the last step ran at (1 + 0.01) / 2 of each group's rate
    assert all(g["lr"] == pytest.approx(g["base_lr"] * 0.505) for g in fit.optimizer.param_groups)


def _group_rates(model: ImageModel) -> dict[str, float]:
    assert isinstance(model, TimmModel) and model._fit is not None
    names = {id(p): n for n, p in model.net.named_parameters()}
    return {names[id(p)]: group["base_lr"] for group in model._fit.optimizer.param_groups for p in group["params"]}


def test_discriminative_rates_follow_timms_parameter_groups(sar: Dataset) -> None:
    optimizer = {"name": "adamw", "lr": 1e-3, "block_lr_decay": 0.5}
    model = create_model("resnet18", weights="none", policy="all", optimizer=optimizer, **TINY)
    model.prepare(sar.images, sar.angle)
    model.apply_policy("all")
    model.start_fit(_inputs(sar, slice(0, 8)), None, 0)
    rates = _group_rates(model)
    assert set(rates) == {n for n, _ in model.net.named_parameters()}
    # resnet18.group_matcher: stem, then each residual block (layer1.0 ... layer4.1): 9 layers under the head
    assert rates["head.0.weight"] == 1e-3 and rates["backbone.layer4.1.conv1.weight"] == 1e-3 * 0.5
    assert rates["backbone.layer4.0.bn2.bias"] == 1e-3 * 0.5**2 and rates["backbone.layer1.0.conv1.weight"] == 1e-3 * 0.5**8
    assert rates["backbone.conv1.weight"] == rates["backbone.bn1.weight"] == 1e-3 * 0.5**9
    model.apply_policy("top:1")  # only the policy's blocks are in the optimizer
    model.start_fit(_inputs(sar, slice(0, 8)), None, 0)
    assert {n.split(".")[1] for n in _group_rates(model) if n.startswith("backbone.")} == {"layer4"}

    model.apply_policy("all")
    model.net["backbone"].group_matcher = None  # an architecture without a group matcher: one layer per block of ours
    model.start_fit(_inputs(sar, slice(0, 8)), None, 0)
    rates = _group_rates(model)
    assert model.blocks() == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert rates["backbone.layer4.0.conv1.weight"] == rates["backbone.layer4.1.conv1.weight"] == 1e-3 * 0.5
    assert rates["backbone.conv1.weight"] == 1e-3 * 0.5**5

    decayed = create_model("resnet18", weights="none", policy="all", optimizer={**optimizer, "block_lr_decay": 0.1}, **TINY)
    before = _parameters(decayed)
    decayed.fit(_inputs(sar, slice(0, 8)), _inputs(sar, slice(8, 12)), epochs=1, batch_size=8)  # Adam steps are about lr
    assert _max_change(before, decayed, "head.") > 3e-4
    assert 1e-5 < _max_change(before, decayed, "backbone.layer4.1.") < 3e-4
    assert _max_change(before, decayed, "backbone.conv1.") < 1e-9


def test_fit_restores_the_best_epoch_when_only_the_head_trains(sar: Dataset) -> None:
    """After fit the model scores exactly its best validation epoch, although only trainable blocks are snapshotted."""
    model = create_model("mobilenetv2_100", weights="none", **TINY, optimizer={"name": "adamw", "lr": 0.3})
    model.prepare(sar.images, sar.angle)
    model.apply_policy("head")
    train, valid = _inputs(sar, slice(0, 28)), _inputs(sar, slice(28, 40))
    frozen_before = {n: p.detach().clone() for n, p in model.net.named_parameters() if not p.requires_grad}
    result = model.fit(train, valid, epochs=6, batch_size=7, seed=1)
    best = result.history["val_loss"][result.best_epoch]
    assert min(result.history["val_loss"]) == best
    assert abs(logloss(valid.y, model.predict(valid)) - best) < 1e-5
    frozen_after = dict(model.net.named_parameters())
    assert frozen_before and all(torch.equal(frozen_after[n], t) for n, t in frozen_before.items())
