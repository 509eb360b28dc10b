"""Constructed inputs for the stacking tests: a small labelled dataset whose exact-angle groups
carry label information, its folds file, and run folders of noisy predictors in the trainer's format."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from competition.config import CompetitionConfig, FoldsConfig
from competition.data.dataset import Dataset
from competition.folds import Folds, write_folds
from competition.training.store import write_run

TRAIN_FP, TEST_FP = "train-fingerprint", "test-fingerprint"


@dataclass
class Competition:
    cfg: CompetitionConfig
    train: Dataset
    test: Dataset
    test_labels: np.ndarray
    folds: Folds


def _scenes(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Angles and labels of n rows: scenes of 1-8 rows share an exact angle and (95%) a label;
    about 8% of rows have no angle and are ships, as in the real data."""
    angles, labels = [], []
    while len(angles) < n:
        size = int(rng.integers(1, 9))
        scene_label = int(rng.integers(0, 2))
        angle = round(float(rng.uniform(30, 45)), 4)
        for _ in range(size):
            angles.append(angle)
            labels.append(scene_label if rng.random() < 0.95 else 1 - scene_label)
    angle, label = np.array(angles[:n]), np.array(labels[:n])
    missing = rng.random(n) < 0.08
    angle[missing] = np.nan
    label[missing] = 0
    return angle, label


def _dataset(prefix: str, angle: np.ndarray, labels: np.ndarray | None, fp: str, rng: np.random.Generator) -> Dataset:
    n = len(angle)
    images = rng.normal(-22.0, 4.0, size=(n, 75, 75, 2)).astype(np.float32)
    return Dataset(np.array([f"{prefix}{i:05x}" for i in range(n)]), images, angle, np.full(n, 4, np.int8), labels, fp)


def _write_json(path: Path, data: Dataset) -> None:
    """The competition's JSON format: id, band_1, band_2 (flattened dB), inc_angle ("na" if missing), is_iceberg."""
    records = []
    for i in range(len(data)):
        record = {
            "id": str(data.ids[i]),
            "band_1": data.images[i, :, :, 0].ravel().tolist(),
            "band_2": data.images[i, :, :, 1].ravel().tolist(),
            "inc_angle": "na" if np.isnan(data.angle[i]) else float(data.angle[i]),
        }
        if data.labels is not None:
            record["is_iceberg"] = int(data.labels[i])
        records.append(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records))


def make_competition(root: Path, n_train: int = 320, n_test: int = 120, k: int = 4, repeats: int = 1, seed: int = 0, via_json: bool = False) -> Competition:
    """Train and test rows drawn from the same scenes (so groups span both), folds file, sample submission.

    via_json: write data/train.json and data/test.json and read them back with the real loader
    (so the CLI can run on them); otherwise the Datasets live in memory only.
    """
    rng = np.random.default_rng(seed)
    angle, label = _scenes(n_train + n_test, rng)
    order = rng.permutation(n_train + n_test)
    tr, te = order[:n_train], order[n_train:]
    train = _dataset("tr", angle[tr], label[tr].astype(np.int8), TRAIN_FP, rng)
    test = _dataset("te", angle[te], None, TEST_FP, rng)
    cfg = CompetitionConfig(data_dir=root / "data", runs_dir=root / "runs", submissions_dir=root / "subs", folds=FoldsConfig(k=k, repeats=repeats, seed=seed))
    if via_json:
        from competition.data.loader import load_test, load_train

        _write_json(cfg.train_json, train)
        _write_json(cfg.test_json, test)
        train, test = load_train(cfg), load_test(cfg)
    folds = write_folds(train, cfg)
    cfg.sample_submission.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"id": test.ids, "is_iceberg": 0.5}).to_csv(cfg.sample_submission, index=False)
    return Competition(cfg, train, test, label[te], folds)


def noisy(labels: np.ndarray, strength: float, noise: float, rng: np.random.Generator) -> np.ndarray:
    """A predictor of the labels: sigmoid(strength * (+-1) + N(0, noise))."""
    return 1.0 / (1.0 + np.exp(-(strength * (2 * labels - 1) + rng.normal(0, noise, len(labels)))))


def write_predictor(comp: Competition, name: str, strength: float, noise: float, seed: int, experiment: str = "baseline", **meta_changes: object) -> Path:
    """A run folder of a noisy predictor in the trainer's format (oof.csv, test.csv, meta.json)."""
    rng = np.random.default_rng(seed)
    table = comp.folds.table
    oof = table.assign(prediction=np.concatenate([noisy(comp.train.labels.astype(float), strength, noise, rng) for _ in range(comp.folds.params.repeats)]))
    units = [f"r{r}_f{f}_s0" for r, f in comp.folds.units()]
    test = pd.DataFrame({"id": comp.test.ids, **{u: noisy(comp.test_labels.astype(float), strength, noise, rng) for u in units}})
    test["mean"] = test[units].mean(axis=1)
    meta = {
        "model": name, "config": {}, "config_hash": f"hash-{name}", "folds_fingerprint": comp.folds.fingerprint,
        "data_fingerprint": {"train": comp.train.fingerprint, "test": comp.test.fingerprint}, "weight_source": "none", "policy": "none",
        "policy_reason": "constructed", "versions": {}, "timings": {}, "fold_scores": [], "cv_logloss": 0.0,
        "curves": {}, "units": units, **meta_changes,
    }  # fmt: skip
    run_dir = comp.cfg.runs_dir / experiment / name
    write_run(run_dir, oof[["id", "repeat", "fold", "prediction"]], test, meta)
    return run_dir
