"""The linear probe (competition.models.linear_probe): dihedral-invariant frozen features, C chosen by
inner CV, the cached and raw paths, saving, and a run through the real trainer. Real timm backbones at
random init on tiny 32 px inputs (no weights, no network)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from competition.config import CompetitionConfig
from competition.errors import ConfigError
from competition.metrics import logloss
from competition.models.linear_probe import LinearProbe, probe_for
from competition.models.registry import create_model, describe_models, load_model, load_model_config
from competition.models.schema import ModelConfig, ModelInputs
from competition.models.weights import OFFLINE_ENV
from competition.training import dihedral, store
from competition.training.trainer import train_model

from tiny_training import MODEL, tiny_competition

TINY_PROBE = ["weights=none", "image_size=32", "channels=[hh,hv]"]


def toy_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SAR-like dB noise; class 1 has a bright off-centre blob (so no flip maps it onto the other class). Angles: some missing."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.normal(-20.0, 3.0, size=(n, 75, 75, 2)).astype(np.float32)
    x[y == 1, 20:35, 40:55, :] += 12.0
    angle = rng.uniform(30.0, 45.0, n)
    angle[::7] = np.nan
    return x, angle, y


@pytest.fixture(scope="module")
def config() -> ModelConfig:
    """A probe on the tiny-training timm architecture, built through `probe_for` from the network's config."""
    return probe_for(load_model_config(MODEL, TINY_PROBE))


@pytest.fixture(scope="module")
def toy() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return toy_images(48)


@pytest.fixture(scope="module")
def fitted(config: ModelConfig, toy: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[LinearProbe, np.ndarray]:
    """A probe fitted on the features of the first 32 toy images; returns it with the features of all 48."""
    x, angle, y = toy
    model = create_model(config.name, config)
    assert isinstance(model, LinearProbe)
    model.prepare(x, angle)
    model.apply_policy(config.policy)
    features = model.prefix_features(x, batch_size=16)
    model.fit(ModelInputs(features[:32], angle[:32], y[:32], True), ModelInputs(features[32:], angle[32:], y[32:], True), epochs=1, batch_size=16)
    return model, features


def test_probe_for_keeps_the_network_backbone_and_refuses_keras(config: ModelConfig) -> None:
    net = load_model_config(MODEL, TINY_PROBE)
    assert (config.name, config.framework, config.policy) == (f"{MODEL}_probe", "probe", "head")
    assert (config.architecture, config.weights, config.channels, config.image_size) == (net.architecture, "none", ["hh", "hv"], 32)
    assert probe_for(config) == config
    with pytest.raises(ConfigError, match="needs a timm backbone"):
        probe_for(load_model_config("vgg16_angle"))


def test_the_shipped_probe_configs_validate_and_are_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(OFFLINE_ENV, "1")
    cfg = load_model_config("mobilenetv2_100_probe")
    assert (cfg.framework, cfg.architecture, cfg.policy) == ("probe", "mobilenetv2_100", "head")
    rows = {row[0]: row for row in describe_models()}
    assert rows["mobilenetv2_100_probe"][1] == "probe"
    assert rows["mobilenetv2_100_probe"][5] == rows["mobilenetv2_100"][5]  # the backbone's weight source, found by architecture
    with pytest.raises(ConfigError, match=r"key 'probe.c_grid.0'.*greater than 0"):
        load_model_config("mobilenetv2_100_probe", ["probe.c_grid=[0]"])


def test_features_are_pooled_and_the_same_for_every_flip_and_turn(fitted: tuple[LinearProbe, np.ndarray], toy: tuple[np.ndarray, ...]) -> None:
    model, features = fitted
    x = toy[0][:8]
    assert features.shape == (48, model._backbone.net["backbone"].num_features) and features.dtype == np.float32
    assert np.std(features[:8], axis=0).max() > 1e-3  # the features tell images apart
    for view in ("rot90", "flip", "flip_rot270"):
        np.testing.assert_allclose(model.prefix_features(dihedral.apply(x, view)), features[:8], rtol=1e-5, atol=1e-6)


def test_policy_is_always_head_and_only_the_regression_is_above_the_cached_prefix(config: ModelConfig) -> None:
    model = create_model(config.name, config)
    assert model.apply_policy("auto").name == "head" and model.frozen_prefix() == 2 == len(model.blocks()) - 1
    with pytest.raises(ConfigError, match="key 'policy' is 'all'"):
        model.apply_policy("all")


def test_c_is_chosen_by_inner_cv_on_log_loss_and_recorded(fitted: tuple[LinearProbe, np.ndarray], config: ModelConfig) -> None:
    model, _ = fitted
    sel = model.selection
    assert sel["c_grid"] == config.probe.c_grid and len(sel["inner_logloss"]) == len(config.probe.c_grid)
    assert sel["C"] == sel["c_grid"][int(np.argmin(sel["inner_logloss"]))]
    assert sel["inner_folds"] == 5  # 16 of each class in the 32 fitted rows: the configured 5 folds fit


def test_inner_folds_shrink_to_the_smaller_class(config: ModelConfig, toy: tuple[np.ndarray, ...], fitted: tuple[LinearProbe, np.ndarray]) -> None:
    _, features = fitted
    _, angle, y = toy
    rows = np.concatenate([np.flatnonzero(y == 0)[:12], np.flatnonzero(y == 1)[:3]])
    model = create_model(config.name, config.model_copy(update={"probe": config.probe.model_copy(update={"c_grid": [0.05]})}))
    model.prepare(toy[0], angle)
    result = model.fit(ModelInputs(features[rows], angle[rows], y[rows], True), ModelInputs(features[40:], angle[40:], y[40:], True), epochs=1, batch_size=8)
    assert model.selection["inner_folds"] == 3 and model.selection["C"] == 0.05 == result.history["C"][0]


def test_raw_images_and_cached_features_give_the_same_fit_and_predictions(
    fitted: tuple[LinearProbe, np.ndarray], toy: tuple[np.ndarray, ...], config: ModelConfig
) -> None:
    model, features = fitted
    x, angle, y = toy
    cached = model.predict(ModelInputs(features[32:], angle[32:], is_features=True))
    np.testing.assert_allclose(model.predict(ModelInputs(x[32:], angle[32:]), batch_size=16), cached, rtol=1e-6, atol=1e-9)
    raw_fit = create_model(config.name, config)
    raw_fit.prepare(x, angle)  # as the trainer does: input statistics from every training image
    raw_fit.fit(ModelInputs(x[:32], angle[:32], y[:32]), ModelInputs(x[32:], angle[32:], y[32:]), epochs=1, batch_size=16)
    assert isinstance(raw_fit, LinearProbe) and raw_fit.selection["C"] == model.selection["C"]
    np.testing.assert_allclose(raw_fit.predict(ModelInputs(features[32:], angle[32:], is_features=True)), cached, rtol=1e-5, atol=1e-7)


def test_it_beats_the_class_prior_on_held_out_images(fitted: tuple[LinearProbe, np.ndarray], toy: tuple[np.ndarray, ...]) -> None:
    model, features = fitted
    _, angle, y = toy
    held = model.predict(ModelInputs(features[32:], angle[32:], is_features=True))
    prior = logloss(y[32:], np.full(16, y[:32].mean()))
    assert logloss(y[32:], held) < 0.7 * prior


def test_save_and_load_round_trip_to_identical_predictions(fitted: tuple[LinearProbe, np.ndarray], toy: tuple[np.ndarray, ...], tmp_path: Path) -> None:
    model, _ = fitted
    x, angle, _ = toy
    model.save(tmp_path / "probe")
    loaded = load_model(tmp_path / "probe")
    assert isinstance(loaded, LinearProbe) and loaded.selection == model.selection and loaded.policy == model.policy
    assert not list((tmp_path / "probe").rglob("*.pkl"))
    inputs = ModelInputs(x[32:], angle[32:])
    np.testing.assert_array_equal(loaded.predict(inputs, batch_size=16), model.predict(inputs, batch_size=16))


@pytest.mark.slow
def test_a_probe_run_through_the_trainer_writes_oof_test_and_meta(tmp_path: Path) -> None:
    cfg: CompetitionConfig = tiny_competition(tmp_path)
    run = store.load_run(train_model(cfg, "mobilenetv2_100_probe", "cpu", [*TINY_PROBE, "save_models=false"]))
    meta = run.meta
    assert meta.policy == "head" and meta.prefix_cache and meta.tta == ["id"] and "no flips/turns" in meta.augment  # the cpu profile's per_model entry
    assert len(run.oof) == 48 and run.oof["prediction"].between(0, 1).all() and len(run.test) == 16
    assert run.unit_columns == ["r0_f0_s0", "r0_f1_s0", "r0_f2_s0"] and np.isfinite(meta.cv_logloss)
    assert all(curve["C"][0] in load_model_config("mobilenetv2_100_probe").probe.c_grid for curve in meta.curves.values())
    assert list(Path(meta.prefix_cache).glob("*.npy")) and sorted(p.name for p in Path(meta.prefix_cache).glob("*.npy")) == ["test_id.npy", "train_id.npy"]
