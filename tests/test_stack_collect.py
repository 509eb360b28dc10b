"""Collecting runs: one folds fingerprint, one data fingerprint, every row once, or a clear refusal."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from competition.errors import DataError, FingerprintError, MissingArtefactError
from competition.stacking.collect import collect, run_dirs
from competition.training.store import write_run

from stack_data import TEST_FP, make_competition, write_predictor


@pytest.fixture
def comp(tmp_path):
    return make_competition(tmp_path, n_train=60, n_test=20, k=3, repeats=2)


def _collect(comp, names=()):
    return collect(run_dirs(comp.cfg.runs_dir / "baseline", list(names)), comp.folds, comp.test.ids, TEST_FP)


def _rewrite(run_dir, oof=None, test=None, **meta_changes):
    """Rewrite a run through the trainer's writer (so only the change under test is wrong)."""
    meta = json.loads((run_dir / "meta.json").read_text())
    oof = pd.read_csv(run_dir / "oof.csv", dtype={"id": str}) if oof is None else oof
    test = pd.read_csv(run_dir / "test.csv", dtype={"id": str}) if test is None else test
    write_run(run_dir, oof, test, {**meta, **meta_changes})


def test_collect_aligns_every_run_to_the_folds_and_test_ids(comp):
    write_predictor(comp, "a", 1.0, 1.0, seed=1)
    write_predictor(comp, "b", 1.0, 1.0, seed=2)
    coll = _collect(comp)
    assert coll.names == ["a", "b"]
    assert coll.oof.shape == (2, 60, 2) and coll.fold.shape == (2, 60) and coll.test.shape == (20, 2)
    assert list(coll.train_ids) == list(comp.train.ids)
    stored = pd.read_csv(comp.cfg.runs_dir / "baseline" / "b" / "oof.csv", dtype={"id": str})
    row = stored[(stored["repeat"] == 1)].iloc[7]
    i = list(coll.train_ids).index(row["id"])
    assert coll.oof[1, i, 1] == pytest.approx(row["prediction"]) and coll.fold[1, i] == row["fold"]
    test = pd.read_csv(comp.cfg.runs_dir / "baseline" / "b" / "test.csv", dtype={"id": str}).set_index("id").loc[comp.test.ids]
    assert coll.test_by_fold.shape == (2, 3, 20, 2)
    assert np.allclose(coll.test_by_fold[1, 2, :, 1], test["r1_f2_s0"])


def test_test_predictions_are_averaged_over_seeds_per_fold_and_a_missing_fold_is_refused(comp):
    run = write_predictor(comp, "a", 1.0, 1.0, seed=1)
    test = pd.read_csv(run / "test.csv", dtype={"id": str})
    seeded = test.assign(r0_f1_s1=0.0, r0_f1_s0=1.0)
    _rewrite(
        run, test=seeded[["id", *[c for c in seeded.columns if c not in ("id", "mean")], "mean"]], units=[c for c in seeded.columns if c not in ("id", "mean")]
    )
    assert np.allclose(_collect(comp).test_by_fold[0, 1, :, 0], 0.5)
    without = test.drop(columns="r1_f2_s0")
    _rewrite(run, test=without, units=[c for c in without.columns if c not in ("id", "mean")])
    with pytest.raises(DataError, match="no test predictions of the unit models of repeat 1, fold 2"):
        _collect(comp)


def test_named_runs_only_and_a_missing_named_run_is_refused(comp):
    write_predictor(comp, "a", 1.0, 1.0, seed=1)
    write_predictor(comp, "b", 1.0, 1.0, seed=2)
    assert _collect(comp, ["b"]).names == ["b"]
    with pytest.raises(MissingArtefactError, match="no finished run"):
        _collect(comp, ["b", "c"])


def test_no_runs_is_refused(comp):
    with pytest.raises(MissingArtefactError, match="no finished runs"):
        _collect(comp)


def test_folds_fingerprint_mismatch_is_refused(comp):
    write_predictor(comp, "a", 1.0, 1.0, seed=1)
    write_predictor(comp, "b", 1.0, 1.0, seed=2, folds_fingerprint="0123456789abcdef")
    with pytest.raises(FingerprintError, match="made with folds 0123456789abcdef"):
        _collect(comp)


@pytest.mark.parametrize(("which", "message"), [("train", "trained on training data"), ("test", "predicted test data")])
def test_data_fingerprint_mismatch_is_refused(comp, which, message):
    write_predictor(comp, "a", 1.0, 1.0, seed=1)
    prints = {"train": "train-fingerprint", "test": TEST_FP, which: "other-data"}
    write_predictor(comp, "b", 1.0, 1.0, seed=2, data_fingerprint=prints)
    with pytest.raises(FingerprintError, match=message):
        _collect(comp)


def test_missing_oof_rows_are_refused(comp):
    run = write_predictor(comp, "a", 1.0, 1.0, seed=1)
    oof = pd.read_csv(run / "oof.csv", dtype={"id": str})
    _rewrite(run, oof=oof.drop(index=[5]))
    with pytest.raises(DataError, match="repeat 0: 1 ids missing"):
        _collect(comp)


def test_duplicate_oof_rows_are_refused(comp):
    run = write_predictor(comp, "a", 1.0, 1.0, seed=1)
    oof = pd.read_csv(run / "oof.csv", dtype={"id": str})
    _rewrite(run, oof=pd.concat([oof, oof.iloc[[3]]], ignore_index=True))
    with pytest.raises((DataError, FingerprintError), match=r"twice|more than once"):
        _collect(comp)


def test_unknown_oof_ids_and_a_missing_repeat_are_refused(comp):
    run = write_predictor(comp, "a", 1.0, 1.0, seed=1)
    oof = pd.read_csv(run / "oof.csv", dtype={"id": str})
    extra = oof.iloc[[0]].assign(id="zz-not-a-train-id")
    _rewrite(run, oof=pd.concat([oof, extra], ignore_index=True))
    with pytest.raises(DataError, match="1 unknown ids"):
        _collect(comp)
    _rewrite(run, oof=oof[oof["repeat"] == 0])
    with pytest.raises(DataError, match=r"repeats \[0\], but the folds file has repeats 0..1"):
        _collect(comp)


def test_oof_rows_in_another_fold_than_the_folds_file_are_refused(comp):
    run = write_predictor(comp, "a", 1.0, 1.0, seed=1)
    oof = pd.read_csv(run / "oof.csv", dtype={"id": str})
    oof.loc[4, "fold"] = (oof.loc[4, "fold"] + 1) % 3
    _rewrite(run, oof=oof)
    with pytest.raises(FingerprintError, match="but the folds file puts it in fold"):
        _collect(comp)


def test_missing_test_rows_are_refused(comp):
    run = write_predictor(comp, "a", 1.0, 1.0, seed=1)
    test = pd.read_csv(run / "test.csv", dtype={"id": str})
    _rewrite(run, test=test.iloc[1:])
    with pytest.raises(DataError, match="test ids: 1 ids missing"):
        _collect(comp)


def test_current_folds_file_must_match_the_runs(comp):
    """Folds rewritten with another seed: the same runs no longer match the folds file."""
    from competition.folds import load_folds, write_folds

    write_predictor(comp, "a", 1.0, 1.0, seed=1)
    cfg = comp.cfg.model_copy(update={"folds": comp.cfg.folds.model_copy(update={"seed": 99})})
    write_folds(comp.train, cfg)
    with pytest.raises(FingerprintError, match="current folds file"):
        collect(run_dirs(cfg.runs_dir / "baseline", []), load_folds(cfg, comp.train), comp.test.ids, TEST_FP)
