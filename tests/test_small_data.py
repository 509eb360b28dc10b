"""Tiny and one-class training data: refused at `folds` with one line when the flow cannot learn
from it; when it can (5 ships + 5 icebergs), folds and stacking run through, with the inner folds
of the blenders and the stacker fitted to the data and said so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from competition.config import CompetitionConfig, FoldsConfig
from competition.data.dataset import Dataset
from competition.errors import DataError
from competition.folds import ensure_folds, make_folds, members_needed, write_folds
from competition.stacking import crossval
from competition.stacking.blenders import RankMeanBlender
from competition.stacking.crossval import cross_validate, inner_folds_for
from competition.stacking.pipeline import run_stack
from competition.stacking.settings import StackConfig
from competition.stacking.stacker import LGBMStacker
from competition.submission import validate_submission

from stack_data import TEST_FP, TRAIN_FP, Competition, _dataset, _write_json, write_predictor

ROOT = Path(__file__).resolve().parents[1]


def _train(labels: list[int], seed: int = 0, angles: list[float] | None = None) -> Dataset:
    rng = np.random.default_rng(seed)
    angle = np.round(rng.uniform(30, 45, len(labels)), 4) if angles is None else np.array(angles, dtype=np.float64)
    return _dataset("tr", angle, np.array(labels, dtype=np.int8), TRAIN_FP, rng)


def _config(root: Path, k: int = 5, group_by_angle: bool = False) -> CompetitionConfig:
    return CompetitionConfig(
        data_dir=root / "data", runs_dir=root / "runs", submissions_dir=root / "subs", folds=FoldsConfig(k=k, group_by_angle=group_by_angle)
    )


def _artefacts(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("folds.*"))


def _one_line(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ([0] * 12, "train.json: every one of the 12 training images has is_iceberg 0; the flow needs both classes: add labelled icebergs (is_iceberg 1)"),
        (
            [0] * 9 + [1],
            "train.json: only 1 of the 10 training images has is_iceberg 1 (icebergs), fewer than folds.k=5: every fold needs one of "
            "each class; no folds.k works with so few: add labelled icebergs (the flow needs at least 3 of each class, with folds.k=3)",
        ),
    ],
    ids=["one_class", "ten_one_iceberg"],
)
def test_cli_folds_refuses_unlearnable_data_with_one_line(tmp_path, labels, expected):
    """`competition folds` on train.json: exit 2, one line naming the problem and what to do, no folds file."""
    train = _train(labels)
    _write_json(tmp_path / "data" / "train.json", train)
    config = tmp_path / "competition.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\n")
    done = subprocess.run(
        [sys.executable, "-m", "competition", "folds", "-c", str(config)],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "COLUMNS": "400"}, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == [f"error: {expected}"], done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert _artefacts(tmp_path) == []


@pytest.mark.parametrize("command", [["train", "mobilenetv2_100"], ["stack"]])
def test_later_steps_on_unlearnable_data_name_the_data_not_the_missing_folds(tmp_path, command):
    """Without a folds file, `train` and `stack` on one-class data refuse the data (a hint to run `make folds`
    would be circular: it refuses the same data)."""
    _write_json(tmp_path / "data" / "train.json", _train([0] * 12))
    test = _dataset("te", np.full(4, 35.0), None, TEST_FP, np.random.default_rng(1))
    _write_json(tmp_path / "data" / "test.json", test)
    pd.DataFrame({"id": test.ids, "is_iceberg": 0.5}).to_csv(tmp_path / "data" / "sample_submission.csv", index=False)
    config = tmp_path / "competition.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\nruns_dir: {tmp_path / 'runs'}\n")
    done = subprocess.run(
        [sys.executable, "-m", "competition", *command, "-c", str(config)],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "COLUMNS": "400"}, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert "the flow needs both classes" in done.stderr and "make folds" not in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and _artefacts(tmp_path) == []


@pytest.mark.parametrize(
    ("labels", "k", "expected"),
    [
        ([0] * 60, 5, "every one of the 60 training images has is_iceberg 0; the flow needs both classes"),
        ([1] * 7 + [0] * 4, 5, "only 4 of the 11 training images have is_iceberg 0 (ships), fewer than folds.k=5: every fold needs one of each class; use folds.k=4"),
        (
            [0] * 5 + [1] * 3, 2,
            "the 3 training images with is_iceberg 1 (icebergs) leave only 1 in an outer training part with folds.k=2, and the blenders "
            "and the stacker need at least 2 of each class there for their inner split (with folds.k=2 each class needs at least 4); "
            "use folds.k=3",
        ),
    ],
    ids=["one_class", "fewer_than_folds", "too_few_for_nested_cv"],
)  # fmt: skip
def test_make_all_path_refuses_before_writing(tmp_path, labels, k, expected):
    """ensure_folds (what `make all` calls) refuses with the same line and writes nothing."""
    cfg = _config(tmp_path, k=k)
    with pytest.raises(DataError) as info:
        ensure_folds(_train(labels), cfg)
    message = str(info.value)
    assert message.startswith("train.json: ") and expected in message and "\n" not in message
    assert _artefacts(tmp_path) == []


def test_grouping_by_angle_needs_as_many_angles_as_folds(tmp_path):
    angles = [30.0] * 4 + [31.5] * 3 + [33.25] * 3
    cfg = _config(tmp_path, k=5, group_by_angle=True)
    with pytest.raises(DataError, match=r"only 3 distinct incidence angles .*, fewer than folds\.k=5, .*; use folds\.k=3 or folds\.group_by_angle=false"):
        write_folds(_train([0, 1] * 5, angles=angles), cfg)
    # enough angles, but one class sits in one scene: an outer training part would lack it
    with pytest.raises(DataError, match=r"leaves only 0 images with is_iceberg 1 \(icebergs\) outside fold .* folds\.group_by_angle=false"):
        make_folds(_train([0] * 5 + [1] * 5, angles=[30.0, 31.0, 32.0, 33.0, 34.0] + [40.0] * 5), FoldsConfig(k=2, group_by_angle=True))
    assert _artefacts(tmp_path) == []


def test_members_needed_per_fold_count():
    """One member per fold and two left in every outer training part: c >= k and c - ceil(c/k) >= 2."""
    assert [members_needed(k) for k in (2, 3, 4, 5, 10)] == [4, 3, 4, 5, 10]
    make_folds(_train([0] * 3 + [1] * 3), FoldsConfig(k=3))  # the smallest learnable data
    make_folds(_train([0] * 4 + [1] * 4), FoldsConfig(k=2))


def test_inner_folds_adapt_to_the_smallest_class_and_stay_at_least_two():
    assert inner_folds_for(5, np.array([0] * 40 + [1] * 30)) == 5
    assert inner_folds_for(5, np.array([0] * 40 + [1] * 3)) == 3
    assert inner_folds_for(3, np.array([0] * 2 + [1] * 9)) == 2
    assert inner_folds_for(2, np.array([0] * 9 + [1] * 9)) == 2
    with pytest.raises(DataError, match="at least 2 of each class"):
        inner_folds_for(5, np.array([0] * 9 + [1]))
    # the blenders' eps choice and the stacker's own inner CV in nested CV on 10 rows (4 + 4 per outer training part)
    y = np.array([0, 1] * 5)
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"pred_a": np.clip(0.3 + 0.4 * y + rng.normal(0, 0.15, 10), 0.01, 0.99), "angle": np.round(rng.uniform(30, 45, 10), 1)})
    fold = np.array([np.arange(10) // 2])
    blend = cross_validate(lambda r, f: RankMeanBlender(), [X[["pred_a"]]], y, fold, [1e-3, 1e-2], 5, 0)
    assert blend.inner_configured == 5 and (blend.inner_folds == 4).all()
    stack = cross_validate(lambda r, f: LGBMStacker(n_trials=2, inner_folds=6, max_rounds=50), [X], y, fold, [1e-3, 1e-2], 5, 0)
    assert stack.inner_configured == 6 and (stack.inner_folds == 4).all()
    assert np.isfinite(stack.scores).all() and np.isfinite(blend.scores).all()


def test_lightgbm_stacker_fits_eight_rows():
    """Eight rows, three inner folds of five-row fit parts: no LightGBM error, finite probabilities."""
    rng = np.random.default_rng(1)
    y = np.array([0, 1] * 4)
    X = pd.DataFrame({"pred_a": np.clip(0.3 + 0.4 * y + rng.normal(0, 0.1, 8), 0.01, 0.99), "angle": [31.0, 31.0, 35.5, 36.0, 40.0, 40.0, np.nan, 42.0]})
    stacker = LGBMStacker(n_trials=3, inner_folds=5, max_rounds=100).fit(X, y)
    assert stacker.inner_folds_ == 4 and stacker.fit_rows_ == 6 and stacker.params_["min_data_in_leaf"] <= 3
    p = stacker.predict_proba(X)
    assert p.shape == (8, 2) and np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()
    assert np.isfinite(stacker.oof_).all()


def test_ten_balanced_goes_through_folds_and_stacking(tmp_path, monkeypatch, capsys):
    """5 ships + 5 icebergs, 5 folds: folds written, every method stacked with inner folds reduced to
    the 4 members of each class in an outer training part (said once each), a valid submission."""
    monkeypatch.setattr(crossval, "_said", set())
    cfg = _config(tmp_path, k=5)
    rng = np.random.default_rng(3)
    labels = np.array([0, 1] * 5, dtype=np.int8)
    train = _train(labels.tolist(), seed=3)
    test_labels = rng.integers(0, 2, 8)
    test = _dataset("te", np.round(rng.uniform(30, 45, 8), 4), None, TEST_FP, rng)
    folds, written = ensure_folds(train, cfg)
    assert written and cfg.folds_json.is_file() and folds.params.k == 5
    cfg.sample_submission.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"id": test.ids, "is_iceberg": 0.5}).to_csv(cfg.sample_submission, index=False)
    comp = Competition(cfg, train, test, test_labels, folds)
    write_predictor(comp, "m0", 1.0, 1.0, seed=1)
    write_predictor(comp, "m1", 0.8, 1.2, seed=2)
    scfg = StackConfig(inner_folds=5, features={"band_stats": True}, stacker={"n_trials": 2, "inner_folds": 5, "max_rounds": 50, "timeout_s": None})
    summary = run_stack(cfg, scfg, train, test)
    err = _one_line(capsys.readouterr().err)
    assert set(summary.methods) == {"single:m0", "single:m1", *scfg.methods}
    assert all(np.isfinite(m.cv_mean) and len(m.fold_scores) == 5 for m in summary.methods.values())
    assert validate_submission(Path(summary.submission), cfg.sample_submission) == 8
    assert err.count("inner folds of the blenders (eps choice): 4 instead of 5 (the smallest class has 4 members in an outer training part)") == 1
    assert err.count("inner folds of the LightGBM stacker: 4 instead of 5 (the smallest class has 4 members in an outer training part)") == 1
    assert "Traceback" not in err
    sidecar = json.loads(Path(summary.submission).with_suffix(".json").read_text())
    assert sidecar["folds_fingerprint"] == folds.fingerprint


def test_a_folds_file_written_before_the_check_is_refused_by_later_steps(tmp_path, monkeypatch):
    """load_folds(cfg, data) (train, stack) refuses unlearnable data even when its folds file exists."""
    import competition.folds as folds_module

    cfg = _config(tmp_path, k=2)
    train = _train([0] * 6 + [1] * 2)
    with monkeypatch.context() as m:
        m.setattr(folds_module, "check_learnable", lambda *a, **k: None)
        m.setattr(folds_module, "check_assignment", lambda *a, **k: None)
        write_folds(train, cfg)
    with pytest.raises(DataError, match=r"the 2 training images with is_iceberg 1 \(icebergs\) leave only 1 in an outer training part"):
        folds_module.load_folds(cfg, train)
