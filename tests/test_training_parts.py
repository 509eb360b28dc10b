"""Model-free parts of the trainer: dihedral views, augmentation, profiles, prediction store, prefix cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from competition.errors import ConfigError, FingerprintError, MissingArtefactError
from competition.models.schema import ModelConfig
from competition.training import dihedral, store
from competition.training.augment import AugmentConfig, Augmenter, draw, speckle_db, warp
from competition.training.prefix_cache import FeatureAugmenter, PrefixCache
from competition.training.profiles import UnitResources, hardware_profile, load_profile
from competition.training.trainer import unit_pool

OFF = dict(hflip=0, vflip=0, rot90=0, rotate=0, shift=0, zoom=0, speckle=0)


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(0).normal(-20, 5, size=(6, 75, 75, 2)).astype(np.float32)


def test_dihedral_views_are_the_numpy_flips_and_turns(images: np.ndarray) -> None:
    assert np.array_equal(dihedral.apply(images, "flip"), images[:, :, ::-1])
    assert np.array_equal(dihedral.apply(images, "flip_rot180"), images[:, ::-1])  # up-down mirror
    assert np.array_equal(dihedral.apply(images, "rot90"), np.rot90(images, 1, axes=(1, 2)))
    assert np.array_equal(dihedral.apply(images, "flip_rot90"), np.swapaxes(images, 1, 2))  # transpose
    views = {dihedral.apply(images[:1], v).tobytes() for v in dihedral.VARIANTS}
    assert len(views) == 8  # all distinct on a generic image


@pytest.mark.parametrize("view", ["flip", "flip_rot90", "flip_rot180", "flip_rot270", "rot180"])
def test_mirrors_and_half_turn_undo_themselves(images: np.ndarray, view: str) -> None:
    assert np.array_equal(dihedral.apply(dihedral.apply(images, view), view), images)


def test_compose_matches_applying_the_ops_in_order(images: np.ndarray) -> None:
    x = images[:1]
    for h in (0, 1):
        for v in (0, 1):
            for k in range(4):
                expected = x[:, :, ::-1] if h else x
                expected = expected[:, ::-1] if v else expected
                expected = np.rot90(expected, k, axes=(1, 2))
                element = dihedral.compose(np.array([h]), np.array([v]), np.array([k]))[0]
                assert np.array_equal(dihedral.apply(x, int(element)), expected), (h, v, k)


def test_apply_each_transforms_each_sample_by_its_own_view(images: np.ndarray) -> None:
    chosen = np.array([0, 4, 1, 6, 4, 0])
    out = dihedral.apply_each(images, chosen)
    for i, v in enumerate(chosen):
        assert np.array_equal(out[i], dihedral.apply(images[i : i + 1], int(v))[0])


def test_augmenter_keeps_shape_dtype_and_changes_only_what_fires(images: np.ndarray) -> None:
    rng = np.random.default_rng(1)
    everything = Augmenter(AugmentConfig(rotate=0.5, shift=0.5, zoom=0.5, speckle=0.5))
    out = everything(images, np.arange(len(images)), rng)
    assert out.shape == images.shape and out.dtype == images.dtype and np.isfinite(out).all()
    assert np.array_equal(Augmenter(AugmentConfig(**OFF))(images, np.arange(6), rng), images)
    always_flip = Augmenter(AugmentConfig(**{**OFF, "hflip": 1.0}))
    assert np.array_equal(always_flip(images, np.arange(6), rng), images[:, :, ::-1])
    twice = always_flip(always_flip(images, np.arange(6), rng), np.arange(6), rng)
    assert np.array_equal(twice, images)


def test_augmenter_is_reproducible_from_the_rng(images: np.ndarray) -> None:
    aug = Augmenter(AugmentConfig(rotate=0.5, shift=0.5, zoom=0.5, speckle=0.5))
    a = aug(images, np.arange(6), np.random.default_rng(7))
    b = aug(images, np.arange(6), np.random.default_rng(7))
    assert np.array_equal(a, b)


def test_warp_identity_quarter_turn_shift_and_zoom(images: np.ndarray) -> None:
    n = len(images)
    zero, one = np.zeros(n), np.ones(n)
    assert np.allclose(warp(images, zero, np.zeros((n, 2)), one), images)
    turned = warp(images, np.full(n, np.pi / 2), np.zeros((n, 2)), one)
    assert np.allclose(turned, np.rot90(images, -1, axes=(1, 2)), atol=1e-4)
    shifted = warp(images, zero, np.tile([3.0, -2.0], (n, 1)), one)
    assert np.allclose(shifted[:, 3:, :-2], images[:, :-3, 2:])  # content moved down 3, left 2
    dot = np.zeros((1, 75, 75, 1), np.float32)
    dot[0, 37, 47] = 1.0  # 10 px right of the centre
    zoomed = warp(dot, np.zeros(1), np.zeros((1, 2)), np.array([2.0]))
    assert np.unravel_index(zoomed[0, ..., 0].argmax(), (75, 75)) in {(37, 57), (37, 56)}


def test_speckle_has_mean_one_in_linear_power() -> None:
    noise_db = speckle_db((200, 75, 75, 2), looks=16.0, seeds=np.arange(200))
    linear = 10 ** (noise_db / 10)
    assert abs(linear.mean() - 1.0) < 0.005
    assert abs(linear.var() - 1 / 16) < 0.005  # Gamma(L, 1/L) has variance 1/L
    assert noise_db.dtype == np.float32


def test_dihedral_support_lists_the_reachable_views() -> None:
    assert AugmentConfig(**{**OFF, "hflip": 0.5}).dihedral_support() == ["id", "flip"]
    assert AugmentConfig(**{**OFF, "hflip": 0.5, "vflip": 0.5}).dihedral_support() == ["id", "rot180", "flip", "flip_rot180"]
    assert AugmentConfig().dihedral_support() == list(dihedral.VARIANTS)
    with pytest.raises(ValueError, match="zoom_min"):
        AugmentConfig(zoom_min=1.2, zoom_max=1.1)


def test_feature_augmenter_picks_the_view_the_image_augmenter_makes(images: np.ndarray) -> None:
    cfg = AugmentConfig(**{**OFF, "hflip": 0.5, "vflip": 0.5, "rot90": 0.5})
    names = list(dihedral.VARIANTS)
    stack = [dihedral.apply(images, v) for v in names]  # "features" = the transformed images themselves
    fit_rows = np.array([5, 1, 3, 0])
    feat_aug = FeatureAugmenter(cfg, names, stack, fit_rows)
    batch_rows = np.array([2, 0, 3, 1])
    from_images = Augmenter(cfg)(images[fit_rows[batch_rows]], batch_rows, np.random.default_rng(3))
    from_cache = feat_aug(images[fit_rows[batch_rows]], batch_rows, np.random.default_rng(3))
    assert np.array_equal(from_images, from_cache)
    with pytest.raises(ValueError, match="lack"):
        FeatureAugmenter(cfg, ["id", "flip"], stack[:2], fit_rows)


def test_draw_uses_the_same_dihedral_choices_whatever_else_is_on() -> None:
    plain = draw(AugmentConfig(**{**OFF, "hflip": 0.5, "rot90": 0.5}), 50, 75, np.random.default_rng(4))
    busy = draw(AugmentConfig(hflip=0.5, vflip=0.0, rot90=0.5, rotate=1, shift=1, zoom=1, speckle=1), 50, 75, np.random.default_rng(4))
    assert np.array_equal(plain.variant, busy.variant)


def test_profile_follows_the_hardware_unless_named() -> None:
    name, reason = hardware_profile()
    import torch

    assert name == ("gpu" if torch.cuda.is_available() else "cpu") and reason
    chosen = load_profile(None)
    assert chosen.name == name
    gpu = load_profile("gpu", ["epochs=3", "tta=[id, flip]"])
    assert gpu.name == "gpu" and gpu.reason == "named by the user"
    assert gpu.profile.epochs == 3 and gpu.profile.tta == ["id", "flip"]
    assert len(load_profile("gpu").profile.tta) == 8 and load_profile("cpu", model="vgg16_angle").profile.policy == "head"
    with pytest.raises(ConfigError, match="unknown profile 'tpu'"):
        load_profile("tpu")
    with pytest.raises(ConfigError, match="tta"):
        load_profile("cpu", ["tta=[id, upside_down]"])


def test_a_refused_unit_names_the_settings_that_changed_and_how_to_keep_both(tmp_path) -> None:
    result = _units(np.array([f"id{i}" for i in range(9)]))[0]
    before = {"model": {"epochs": 5, "auto": {"race": {"prior_margin_se": 1.0}}, "tags": ["a"]}, "profile": {"tta": ["id"]}}
    store.write_unit(tmp_path, result, store.Fingerprints("cfg", "folds", "train", "test", before))
    now = {"model": {"epochs": 5, "auto": {"race": {"prior_margin_se": 0.0}}, "tags": ["a", "b"]}, "profile": {}}
    with pytest.raises(FingerprintError) as refused:
        store.read_unit(tmp_path, result.unit, store.Fingerprints("other", "folds", "train", "test", now))
    text = str(refused.value)
    assert (
        "config_hash cfg (now other) (changed: model.auto.race.prior_margin_se 1.0 -> 0.0; model.tags ['a'] -> ['a', 'b']; profile.tta ['id'] -> (absent))"
        in text
    )
    assert "model.epochs" not in text and "--name" in text and "NAME=" in text
    with pytest.raises(FingerprintError) as other_folds:  # the settings are named only when the config hash differs
        store.read_unit(tmp_path, result.unit, store.Fingerprints("cfg", "new", "train", "test", now))
    assert "changed:" not in str(other_folds.value)


def test_a_profile_entry_for_one_model_sits_between_the_profile_and_the_command_line(tmp_path: Path) -> None:
    from competition.training.trainer import hashed_settings

    (tmp_path / "small.yaml").write_text("epochs: 8\npatience: 3\nper_model:\n  big: [epochs=40, augment.vflip=0.0]\n")
    assert load_profile("small", profiles_dir=tmp_path).profile.epochs == 8
    big = load_profile("small", profiles_dir=tmp_path, model="big").profile
    assert (big.epochs, big.patience, big.augment.vflip) == (40, 3, 0.0)
    assert load_profile("small", ["epochs=2"], tmp_path, model="big").profile.epochs == 2  # the command line wins
    assert load_profile("small", profiles_dir=tmp_path, model="other").profile.epochs == 8
    same = load_profile("small", ["epochs=40", "augment.vflip=0.0"], tmp_path).profile
    cfg = ModelConfig(name="net", framework="timm", architecture="resnet10t")
    assert hashed_settings(cfg, big) == hashed_settings(cfg, same)  # the entry is hashed by its effect, not its wording
    (tmp_path / "broken.yaml").write_text("per_model:\n  big: [epochs=zero]\n")
    with pytest.raises(ConfigError, match=r"broken.yaml \(per_model.big\): key 'epochs'"):
        load_profile("broken", profiles_dir=tmp_path, model="big")


def _result(unit: store.Unit, ids: np.ndarray, n_test: int) -> store.UnitResult:
    rng = np.random.default_rng(unit.fold + 10 * unit.seed)
    return store.UnitResult(
        unit=unit, oof_ids=ids, oof=rng.random(len(ids)), test=rng.random(n_test), logloss=0.5, best_epoch=1,
        history={"train_loss": [0.7, 0.6], "val_loss": [0.69, 0.65]}, timings={"fit_s": 1.0},
        policy={"name": "head", "requested": "head", "reason": "asked", "numbers": {}}, weight_source="none",
    )  # fmt: skip


PRINTS = store.Fingerprints("cfg", "folds", "train", "test")


def _units(train_ids: np.ndarray, seeds: tuple[int, ...] = (0,)) -> list[store.UnitResult]:
    fold = np.arange(len(train_ids)) % 3
    return [_result(store.Unit(0, f, s), train_ids[fold == f], 4) for f in range(3) for s in seeds]


def test_unit_files_round_trip_and_refuse_other_fingerprints(tmp_path) -> None:
    result = _units(np.array([f"id{i}" for i in range(9)]))[1]
    assert store.read_unit(tmp_path, result.unit, PRINTS) is None
    store.write_unit(tmp_path, result, PRINTS)
    back = store.read_unit(tmp_path, result.unit, PRINTS)
    assert back is not None and np.array_equal(back.oof, result.oof) and np.array_equal(back.oof_ids, result.oof_ids)
    assert back.history == result.history and back.policy == result.policy
    with pytest.raises(FingerprintError, match="folds folds \\(now other\\)"):
        store.read_unit(tmp_path, result.unit, store.Fingerprints("cfg", "other", "train", "test"))
    leftover = tmp_path / store.UNITS_DIR / ".r0_f1_s0.npz.abc.tmp.npz"
    leftover.write_bytes(b"half")
    assert store.remove_leftovers(tmp_path) == [leftover] and not leftover.exists()
    npz, _ = store.unit_paths(tmp_path, result.unit)
    npz.write_bytes(npz.read_bytes()[:-10])
    with pytest.raises(FingerprintError, match="changed"):
        store.read_unit(tmp_path, result.unit, PRINTS)


def test_oof_table_covers_each_id_once_per_repeat_and_averages_seeds() -> None:
    ids = np.array([f"id{i}" for i in range(9)])
    results = _units(ids, seeds=(0, 1))
    oof = store.build_oof(results, ids)
    assert list(oof.columns) == store.OOF_COLUMNS and list(oof["id"]) == list(ids)
    by_seed = {(r.unit.seed, i): p for r in results for i, p in zip(r.oof_ids, r.oof, strict=True)}
    assert np.allclose(oof["prediction"], [(by_seed[(0, i)] + by_seed[(1, i)]) / 2 for i in ids])
    with pytest.raises(ValueError, match="exactly once"):
        store.build_oof(results[:-1], ids)
    test = store.build_test(results, np.array(["a", "b", "c", "d"]), np.array(["a", "b", "c", "d"]), fill=0.5)
    assert list(test.columns) == ["id", "r0_f0_s0", "r0_f0_s1", "r0_f1_s0", "r0_f1_s1", "r0_f2_s0", "r0_f2_s1", "mean"]
    assert np.allclose(test["mean"], test.iloc[:, 1:-1].mean(axis=1))


def test_test_table_fills_rows_the_units_did_not_predict() -> None:
    ids = np.array([f"id{i}" for i in range(9)])
    results = _units(ids)  # each unit predicts 4 test rows
    test = store.build_test(results, np.array(["b", "d", "a", "c"]), np.array(["a", "x", "b", "c", "y", "d"]), fill=0.47)
    assert list(test["id"]) == ["a", "x", "b", "c", "y", "d"]  # every test id, in test.json order
    unit_cols = [c for c in test.columns if c.startswith("r")]
    assert (test.loc[test["id"].isin(["x", "y"]), [*unit_cols, "mean"]] == 0.47).all().all()
    first = sorted(results, key=lambda r: r.unit)[0]
    assert test.set_index("id").loc["b", first.unit.name] == first.test[0]


def test_run_folder_round_trips_and_refuses_incomplete_or_edited_files(tmp_path) -> None:
    ids = np.array([f"id{i}" for i in range(9)])
    results = _units(ids)
    oof, test = store.build_oof(results, ids), store.build_test(results, np.array(["a", "b", "c", "d"]), np.array(["a", "b", "c", "d"]), fill=0.5)
    meta = {"model": "m", "config": {}, "config_hash": "h", "folds_fingerprint": "f", "data_fingerprint": {"train": "a", "test": "b"},
            "weight_source": "none", "policy": "head", "policy_reason": "r", "versions": {}, "timings": {}, "fold_scores": [],
            "cv_logloss": 0.5, "curves": {}, "units": [r.unit.name for r in results]}  # fmt: skip
    with pytest.raises(MissingArtefactError, match="not finished"):
        store.load_run(tmp_path)
    store.write_run(tmp_path, oof, test, meta)
    run = store.load_run(tmp_path)
    pd.testing.assert_frame_equal(run.oof, oof)
    pd.testing.assert_frame_equal(run.test, test)
    assert run.name == tmp_path.name and run.meta.model == "m" and run.unit_columns == meta["units"]  # a run is named by its folder
    (tmp_path / store.OOF_FILE).write_text((tmp_path / store.OOF_FILE).read_text().replace("id1,", "id7,"))
    with pytest.raises(FingerprintError, match="changed after"):
        store.load_run(tmp_path)
    store.write_run(tmp_path, oof.assign(prediction=oof["prediction"] + 1), test, meta)
    with pytest.raises(FingerprintError, match="probabilities"):
        store.load_run(tmp_path)
    store.write_run(tmp_path, oof, test, meta)
    written = json.loads((tmp_path / store.META_FILE).read_text())
    (tmp_path / store.META_FILE).write_text(json.dumps({k: v for k, v in written.items() if k != "curves"}))  # an older trainer's meta
    with pytest.raises(FingerprintError, match="field 'curves' missing.*--fresh"):
        store.load_run(tmp_path)


def test_prefix_cache_stores_each_view_once_and_checks_rows_and_key(tmp_path, images: np.ndarray) -> None:
    calls = []

    def compute(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        return x.mean(axis=(1, 2))

    cache = PrefixCache(tmp_path, "m", {"train": "abc"})
    cache.fill("train", images, ["id", "flip"], compute)
    cache.fill("train", images, ["id", "flip", "rot90"], compute)
    assert calls == [6, 6, 6]  # id and flip were not recomputed
    assert np.allclose(cache.load("train", "flip", 6), images[:, :, ::-1].mean(axis=(1, 2)))
    with pytest.raises(FingerprintError, match="rows"):
        cache.load("train", "id", 7)
    other = PrefixCache(tmp_path, "m", {"train": "abd"})
    assert other.dir != cache.dir and other.missing("train", ["id"]) == ["id"]
    (cache.dir / "key.json").write_text(json.dumps({"train": "zzz"}))
    with pytest.raises(FingerprintError, match="different train"):
        cache.load("train", "id", 6)


def test_profile_values_replace_the_model_yaml_but_command_line_model_keys_win() -> None:
    from competition.models.registry import load_model_config
    from competition.training.trainer import hashed_settings, merge_profile

    yaml_cfg = load_model_config("tf_efficientnet_lite0")
    cpu = load_profile("cpu").profile
    merged = merge_profile(yaml_cfg, cpu, [])
    assert cpu.policy is None  # the cpu profile leaves small networks their own policy
    assert (merged.train.epochs, merged.train.batch_size, merged.policy) == (cpu.epochs, cpu.batch_size, yaml_cfg.policy)
    headed = load_profile("cpu", ["policy=head"]).profile
    by_user = merge_profile(load_model_config("tf_efficientnet_lite0", ["train.epochs=5"]), headed, ["train.epochs=5"])
    assert by_user.train.epochs == 5 and by_user.policy == "head"
    gpu = load_profile("gpu").profile  # epochs, patience and policy null: the model's own
    assert merge_profile(yaml_cfg, gpu, []).train.epochs == yaml_cfg.train.epochs and merge_profile(yaml_cfg, gpu, []).policy == yaml_cfg.policy
    more_seeds = load_profile("cpu", ["seeds=3"]).profile
    assert hashed_settings(merged, cpu) == hashed_settings(merged, more_seeds)  # adding seeds keeps finished units valid
    assert hashed_settings(merged, cpu) != hashed_settings(merged, load_profile("cpu", ["tta=[id]"]).profile)
    raced = {"auto": merged.auto.model_copy(update={"race": merged.auto.race.model_copy(update={"budget": 0.5})})}
    for policy, same in (("head", True), ("auto", False)):  # the race's settings count only where a race decides
        chosen = merged.model_copy(update={"policy": policy})
        assert (hashed_settings(chosen, cpu) == hashed_settings(chosen.model_copy(update=raced), cpu)) is same


def test_bench_rewrites_only_its_own_section(tmp_path) -> None:
    from competition.bench.doc import replace_section
    from competition.bench.speed import END, START

    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Quality\nkept\n")
    replace_section(doc, START, END, f"{START}\nfirst\n{END}\n")
    replace_section(doc, START, END, f"{START}\nsecond\n{END}\n")
    text = doc.read_text()
    assert "## Quality\nkept" in text and "second" in text and "first" not in text and text.count(START) == 1


def test_a_units_worker_pool_follows_its_framework_threads_and_gpus() -> None:
    """engine=ray: CPU units share kept processes of their framework's pool (Keras per thread count); GPU units get fresh ones."""
    assert unit_pool("timm", UnitResources(cpus=2)) == unit_pool("probe", UnitResources(cpus=1)) == "torch"
    assert unit_pool("keras", UnitResources(cpus=2)) == "keras-2" and unit_pool("keras", UnitResources(cpus=0.5)) == "keras-1"
    assert unit_pool("timm", UnitResources(cpus=4, gpus=0.25)) is None and unit_pool("keras", UnitResources(cpus=4, gpus=1)) is None


def test_small_data_gets_at_least_min_steps_optimizer_steps_with_patience_in_proportion():
    from competition.training.trainer import scale_to_data

    cfg = ModelConfig(name="net", framework="timm", architecture="resnet10t", train={"epochs": 8, "batch_size": 32, "patience": 3, "unfreeze_every": 2})
    scaled, reason = scale_to_data(cfg, 100, 80)  # 80 fit rows: 3 steps an epoch, 8 epochs = 24 steps
    t = scaled.train
    assert (t.epochs, t.patience, t.unfreeze_every, t.batch_size) == (34, 13, 9, 32)  # ceil(100 / 3); 3 x 34/8 = 12.75; 2 x 4.25 = 8.5
    assert reason == ("epochs 8 -> 34, patience 3 -> 13: at least min_steps=100 optimizer steps (80 fit rows in batches of 32 are 3 an epoch); "
                      "min_steps=0 keeps 8")  # fmt: skip
    assert cfg.train.epochs == 8  # the config given is not changed
    for n_fit, min_steps in ((1283, 100), (80, 0), (80, 24)):  # the full competition (41 steps an epoch), off, already enough
        same, why = scale_to_data(cfg, min_steps, n_fit)
        assert same is cfg and why is None
    assert scale_to_data(cfg, 100, 65)[0].train.epochs == 50  # 65 rows: 2 batches; a last batch of one row is skipped, as the loop does
    probe = cfg.model_copy(update={"framework": "probe"})
    assert scale_to_data(probe, 100, 80) == (probe, None)  # no network to fit in epochs
    no_patience = cfg.model_copy(update={"train": cfg.train.model_copy(update={"patience": None})})
    assert scale_to_data(no_patience, 100, 80)[0].train.patience is None


def test_min_steps_acts_only_through_the_hashed_epochs():
    from competition.training.trainer import UNHASHED_PROFILE_KEYS, hashed_settings, scale_to_data

    assert "min_steps" in UNHASHED_PROFILE_KEYS
    cfg = ModelConfig(name="net", framework="timm", architecture="resnet10t", train={"epochs": 8, "batch_size": 32})
    off, on = load_profile("cpu", ["min_steps=0"]).profile, load_profile("cpu", ["min_steps=100"]).profile
    assert load_profile("cpu").profile.min_steps == 100 and load_profile("gpu").profile.min_steps == 100
    assert hashed_settings(scale_to_data(cfg, on.min_steps, 1283)[0], on) == hashed_settings(cfg, off)  # full size: the same run
    assert hashed_settings(scale_to_data(cfg, on.min_steps, 80)[0], on) != hashed_settings(cfg, off)  # small data: other units
