"""The fold trainer end to end on simulated data and a tiny timm network (random init, 32 px, 2 epochs)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from competition.config import CompetitionConfig
from competition.console import console
from competition.errors import FingerprintError
from competition.training import dihedral, store, tta
from competition.training.profiles import load_profile
from competition.training.trainer import train_model
from sklearn.metrics import log_loss

from tiny_training import MODEL, TINY, tiny_competition

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> CompetitionConfig:
    """48 simulated training images in 3 folds x 2 repeats, 16 test images."""
    return tiny_competition(tmp_path_factory.mktemp("competition"), repeats=2)


@pytest.fixture(scope="module")
def reference(cfg: CompetitionConfig) -> store.Run:
    """One uninterrupted run (cpu profile, policy head: prefix cached, the profile's flips/turns as augmentation)."""
    return store.load_run(train_model(cfg, MODEL, "cpu", TINY))


def _at(cfg: CompetitionConfig, runs: Path) -> CompetitionConfig:
    return cfg.model_copy(update={"runs_dir": runs})


def test_oof_covers_every_training_id_once_per_repeat(cfg: CompetitionConfig, reference: store.Run) -> None:
    from competition.data.loader import load_test, load_train

    train, test = load_train(cfg), load_test(cfg)
    folds = pd.read_csv(cfg.folds_csv, dtype={"id": str})
    oof = reference.oof
    for r in (0, 1):
        rows = oof[oof["repeat"] == r]
        assert sorted(rows["id"]) == sorted(train.ids) and rows["id"].is_unique
        merged = rows.merge(folds[folds["repeat"] == r], on=["id", "repeat"], suffixes=("", "_file"))
        assert (merged["fold"] == merged["fold_file"]).all() and len(merged) == len(train)
    assert list(reference.test["id"]) == list(test.ids)
    assert reference.unit_columns == [f"r{r}_f{f}_s0" for r in (0, 1) for f in range(3)]
    labels = pd.Series(train.labels, index=train.ids)
    expected = np.mean([log_loss(labels.loc[g["id"]], g["prediction"]) for _, g in oof.groupby("repeat")])
    assert reference.meta.cv_logloss == pytest.approx(expected)
    assert len(reference.meta.fold_scores) == 6 and set(reference.meta.curves) == set(reference.unit_columns)


def test_meta_fingerprints_match_the_folds_file_and_data(cfg: CompetitionConfig, reference: store.Run) -> None:
    from competition.data.loader import load_test, load_train

    folds_meta = json.loads(cfg.folds_json.read_text())
    meta = reference.meta
    assert meta.folds_fingerprint == folds_meta["fingerprint"]
    assert meta.data_fingerprint.model_dump() == {"train": load_train(cfg).fingerprint, "test": load_test(cfg).fingerprint}
    assert meta.data_fingerprint.train == folds_meta["data_fingerprint"]
    assert meta.policy == "head" and meta.policy_source == "command line" and meta.weight_source == "none" and meta.prefix_cache
    assert meta.profile["name"] == "cpu" and meta.config["model"]["train"]["epochs"] == 2
    views = load_profile("cpu").profile.augment.dihedral_support()
    assert len(views) > 1 and f"random dihedral view among {views}" in meta.augment  # the cpu profile's flips reach the cached training
    assert {"torch", "timm", "numpy", "python"} <= set(meta.versions)


def test_kill_9_then_resume_trains_only_missing_units_and_matches(cfg: CompetitionConfig, reference: store.Run, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    units_dir = runs / cfg.experiment / MODEL / store.UNITS_DIR
    command = [
        sys.executable,
        "-m",
        "competition",
        "train",
        MODEL,
        "--profile",
        "cpu",
        *TINY,
        f"data_dir={cfg.data_dir}",
        f"work_dir={cfg.work_dir}",
        f"runs_dir={runs}",
    ]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while len(list(units_dir.glob("r*.json"))) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    finished = sorted(p.stem for p in units_dir.glob("r*.json"))  # not a half-written `.r*.tmp.json` the kill left
    assert 2 <= len(finished) < 6, f"finished units {finished} (exit code {proc.returncode}): the kill came too late, or the run failed"
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in units_dir.iterdir() if p.stem in finished}

    run = store.load_run(train_model(_at(cfg, runs), MODEL, "cpu", TINY))
    assert sorted(run.meta.trained_this_run) == sorted(set(reference.unit_columns) - set(finished))
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in units_dir.iterdir() if p.name in before} == before
    pd.testing.assert_frame_equal(run.oof, reference.oof)
    pd.testing.assert_frame_equal(run.test, reference.test)

    again = store.load_run(train_model(_at(cfg, runs), MODEL, "cpu", TINY))
    assert again.meta.trained_this_run == []


def test_finished_units_from_other_settings_are_refused(cfg: CompetitionConfig, reference: store.Run) -> None:
    with pytest.raises(FingerprintError, match="config_hash"):
        train_model(cfg, MODEL, "cpu", [*TINY, "optimizer.lr=0.01"])
    assert store.load_run(reference.path).meta.config_hash == reference.meta.config_hash


def test_cached_and_uncached_prefix_give_the_same_predictions(cfg: CompetitionConfig, tmp_path: Path) -> None:
    one_repeat = [*TINY, "epochs=1", "tta=[id, flip]"]  # flips on: a random cached view per sample = the same flip of the image
    cached = store.load_run(train_model(_at(cfg, tmp_path / "a"), MODEL, "cpu", [*one_repeat, "cache_prefix=true"]))
    plain = store.load_run(train_model(_at(cfg, tmp_path / "b"), MODEL, "cpu", [*one_repeat, "cache_prefix=false"]))
    assert cached.meta.prefix_cache and plain.meta.prefix_cache is None
    np.testing.assert_allclose(cached.oof["prediction"], plain.oof["prediction"], atol=1e-4)
    np.testing.assert_allclose(cached.test["mean"], plain.test["mean"], atol=1e-4)


def _tiny_model(cfg: CompetitionConfig):
    from competition.data.loader import load_train
    from competition.models.registry import create_model, load_model_config

    train = load_train(cfg)
    model = create_model(MODEL, load_model_config(MODEL, [o for o in TINY if o.split("=")[0] in ("weights", "channels", "image_size", "head.hidden")]))
    model.prepare(train.images, train.angle)
    model.apply_policy("head")
    return model, train


def test_tta_of_a_flip_invariant_input_equals_the_plain_prediction(cfg: CompetitionConfig) -> None:
    from competition.models.base import ModelInputs

    model, train = _tiny_model(cfg)
    x = train.images[:8]
    symmetric = np.mean([dihedral.apply(x, v) for v in dihedral.VARIANTS], axis=0).astype(np.float32)
    inputs = ModelInputs(symmetric, train.angle[:8])
    plain = model.predict(inputs)
    np.testing.assert_allclose(tta.predict_images(model, inputs, list(dihedral.VARIANTS), 4), plain, atol=1e-6)
    views = {v: model.prefix_features(dihedral.apply(symmetric, v)) for v in dihedral.VARIANTS}
    np.testing.assert_allclose(tta.predict_features(model, views.__getitem__, train.angle[:8], list(dihedral.VARIANTS), 4), plain, atol=1e-5)
    generic = ModelInputs(x, train.angle[:8])
    mirrored = ModelInputs(x[:, :, ::-1], train.angle[:8])
    two = tta.predict_images(model, generic, ["id", "flip"], 4)
    np.testing.assert_allclose(two, (model.predict(generic) + model.predict(mirrored)) / 2, atol=1e-6)
    assert not np.allclose(model.predict(generic), model.predict(mirrored), atol=1e-6)  # so the average is not trivial


def test_cli_names_a_bad_override_without_a_traceback(cfg: CompetitionConfig) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "competition", "train", MODEL, "epochs=zero", f"data_dir={cfg.data_dir}", f"work_dir={cfg.work_dir}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "epochs" in result.stderr and "Traceback" not in result.stderr


def test_unscored_test_rows_can_be_skipped_and_get_the_training_rate(cfg: CompetitionConfig, tmp_path: Path) -> None:
    from competition.data.loader import load_test, load_train

    test, train = load_test(cfg), load_train(cfg)
    assert 0 < test.machine_generated.sum() < len(test)
    run = store.load_run(train_model(_at(cfg, tmp_path), MODEL, "cpu", [*TINY, "epochs=1", "predict_unscored=false"]))
    table = run.test.set_index("id").loc[test.ids]
    skipped = table[test.machine_generated]
    assert np.allclose(skipped.to_numpy(), train.labels.mean())
    assert table[~test.machine_generated]["mean"].nunique() > 1  # the scored rows are really predicted
    assert run.meta.test_rows_predicted.startswith(f"{(~test.machine_generated).sum()} of {len(test)}")


def test_gpu_profile_runs_on_cpu_with_seeds_full_augmentation_and_eight_tta_views(cfg: CompetitionConfig, tmp_path: Path) -> None:
    """The `gpu` profile's own path (images augmented, no prefix cache, several seeds, 8 views), on tiny inputs:
    CUDA and bfloat16 autocast stay off on a CPU, everything else is what a GPU run executes."""
    from competition.data.loader import load_train

    run = store.load_run(train_model(_at(cfg, tmp_path), MODEL, "gpu", [*TINY, "epochs=1", "seeds=2"]))
    assert run.meta.profile["name"] == "gpu" and run.meta.prefix_cache is None
    assert len(run.meta.tta) == 8 and run.meta.config["profile"]["mixed_precision"] is True
    assert run.meta.augment.endswith("rotate, shift, zoom, speckle (on images)")  # image-space augmentation, not cached views
    assert len(run.meta.units) == 3 * 2 * 2 and {u.seed for u in run.meta.fold_scores} == {0, 1}
    train = load_train(cfg)
    assert sorted(run.oof["id"].unique()) == sorted(train.ids) and len(run.oof) == 2 * len(train.ids)
    assert np.isfinite(run.meta.cv_logloss) and run.test["mean"].between(0, 1).all()


def test_small_data_trains_min_steps_and_says_so(cfg: CompetitionConfig, tmp_path: Path) -> None:
    """48 images, 3 folds: 32 fit rows in batches of 16 are 2 steps an epoch, so min_steps=6 makes 1 epoch 3
    (patience 1 -> 3), shown on the run's first line and kept in meta.json; without min_steps on the command line
    its epochs=1 stays 1."""
    with console.capture() as captured:
        run = store.load_run(train_model(_at(cfg, tmp_path), MODEL, "cpu", [*TINY, "epochs=1", "patience=1", "min_steps=6"]))
    reason = "epochs 1 -> 3, patience 1 -> 3: at least min_steps=6 optimizer steps (32 fit rows in batches of 16 are 2 an epoch); min_steps=0 keeps 1"
    assert run.meta.model_extra is not None and run.meta.model_extra["epochs_scaled"] == reason
    assert reason in " ".join(captured.get().split())
    train = run.meta.config["model"]["train"]
    assert (train["epochs"], train["patience"]) == (3, 3)
    assert {len(curve["val_loss"]) for curve in run.meta.curves.values()} == {3}  # every unit trained 3 epochs
    # epochs typed on the command line without min_steps are trained as given, under the profile's min_steps (100)
    as_given = store.load_run(train_model(_at(cfg, tmp_path / "given"), MODEL, "cpu", [*TINY, "epochs=1"]))
    assert as_given.meta.model_extra is not None and as_given.meta.model_extra["epochs_scaled"] is None
    assert as_given.meta.config["model"]["train"]["epochs"] == 1


def test_named_runs_of_one_model_sit_side_by_side_and_stack_as_two_inputs(cfg: CompetitionConfig, tmp_path: Path) -> None:
    from competition.data.loader import load_test, load_train
    from competition.folds import load_folds
    from competition.stacking.collect import collect, run_dirs

    where = _at(cfg, tmp_path)
    head = train_model(where, MODEL, "cpu", [*TINY, "epochs=1", "policy=head"], run_name="small-head")
    top = train_model(where, MODEL, "cpu", [*TINY, "epochs=1", "policy=top:1"], run_name="small-top1")
    assert (head, top) == (tmp_path / cfg.experiment / "small-head", tmp_path / cfg.experiment / "small-top1")
    metas = [store.load_run(p).meta for p in (head, top)]
    assert [(m.model, m.run_name, m.policy) for m in metas] == [(MODEL, "small-head", "head"), (MODEL, "small-top1", "top:1")]
    test = load_test(cfg)
    coll = collect(run_dirs(tmp_path / cfg.experiment, []), load_folds(cfg, load_train(cfg)), test.ids, test.fingerprint)
    assert coll.names == ["small-head", "small-top1"] and coll.oof.shape[-1] == 2
    assert not np.allclose(coll.oof[..., 0], coll.oof[..., 1])  # two different runs, not one read twice


@pytest.mark.parametrize("name", ["stack", "../elsewhere", "-x", "a b"])
def test_a_bad_run_name_is_refused_before_any_work(cfg: CompetitionConfig, tmp_path: Path, name: str) -> None:
    from competition.errors import ConfigError

    with pytest.raises(ConfigError, match="run name"):
        train_model(_at(cfg, tmp_path), MODEL, "cpu", TINY, run_name=name)
    assert not (tmp_path / cfg.experiment).exists()
