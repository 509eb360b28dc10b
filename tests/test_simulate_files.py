"""The simulator's files: Kaggle's exact formats, hidden answers, determinism, and the loader round trip."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest
from competition.cli import app
from competition.config import CompetitionConfig, SimulateConfig
from competition.data.loader import read_dataset
from competition.simulate import write_simulated
from typer.testing import CliRunner

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "competition.yaml"


def _config(root: Path, seed: int = 1, n_train: int = 60, n_test: int = 40) -> CompetitionConfig:
    return CompetitionConfig(
        data_dir=root, runs_dir=root / "runs", submissions_dir=root / "subs", simulate=SimulateConfig(n_train=n_train, n_test=n_test, seed=seed)
    )


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> CompetitionConfig:
    cfg = _config(tmp_path_factory.mktemp("sim"))
    write_simulated(cfg)
    return cfg


def _files(cfg: CompetitionConfig) -> list[Path]:
    return [cfg.train_json, cfg.test_json, cfg.sample_submission, cfg.solution_csv]


def test_json_records_have_kaggles_keys_types_and_sizes(written):
    train = orjson.loads(written.train_json.read_bytes())
    test = orjson.loads(written.test_json.read_bytes())
    assert len(train) == 60 and len(test) == 40
    assert all(list(r) == ["id", "band_1", "band_2", "inc_angle", "is_iceberg"] for r in train)
    assert all(list(r) == ["id", "band_1", "band_2", "inc_angle"] for r in test)
    ids = [r["id"] for r in train + test]
    assert len(set(ids)) == len(ids) and all(re.fullmatch(r"[0-9a-f]{8}", i) for i in ids)
    for record in train + test:
        for band in ("band_1", "band_2"):
            values = np.asarray(record[band], dtype=np.float64)
            assert values.shape == (5625,) and np.isfinite(values).all() and values.min() > -60 and values.max() < 60
    assert {r["is_iceberg"] for r in train} == {0, 1}
    assert any(r["inc_angle"] == "na" for r in train) and all(isinstance(r["inc_angle"], float) for r in test)
    assert all(r["is_iceberg"] == 0 for r in train if r["inc_angle"] == "na")


def test_sample_submission_and_hidden_solution_match_test_ids(written):
    test_ids = [r["id"] for r in orjson.loads(written.test_json.read_bytes())]
    sample = pd.read_csv(written.sample_submission)
    assert list(sample.columns) == ["id", "is_iceberg"] and sample.id.tolist() == test_ids and (sample.is_iceberg == 0.5).all()
    solution = pd.read_csv(written.solution_csv)
    assert list(solution.columns) == ["id", "is_iceberg", "Usage"] and solution.id.tolist() == test_ids
    assert set(solution.is_iceberg) <= {0, 1} and set(solution.Usage) == {"Public", "Private", "Ignored"}
    assert written.solution_csv.parent != written.train_json.parent  # kept apart from what models read


def test_round_trip_through_the_loader_marks_decoys_as_ignored(written):
    train, test = read_dataset(written.train_json, "train"), read_dataset(written.test_json, "test")
    assert train.images.shape == (60, 75, 75, 2) and train.images.dtype == np.float32
    assert np.isnan(train.angle).any() and (train.labels[np.isnan(train.angle)] == 0).all()
    raw = orjson.loads(written.train_json.read_bytes())[0]
    assert np.array_equal(train.images[0, ..., 0].ravel(), np.asarray(raw["band_1"], dtype=np.float32))
    solution = pd.read_csv(written.solution_csv)
    assert np.array_equal(test.machine_generated, (solution.Usage == "Ignored").to_numpy())


def test_same_seed_gives_identical_bytes_and_another_seed_differs(written, tmp_path):
    again, other = _config(tmp_path / "again"), _config(tmp_path / "other", seed=2)
    write_simulated(again)
    write_simulated(other)
    for a, b, c in zip(_files(written), _files(again), _files(other), strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name
        assert a.read_bytes() != c.read_bytes(), a.name


def test_cli_writes_files_with_overrides_and_rejects_bad_sizes(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["simulate", f"data_dir={tmp_path}", "simulate.n_train=30", "simulate.n_test=20", "--config", str(CONFIG)])
    assert result.exit_code == 0, result.output
    assert len(orjson.loads((tmp_path / "train.json").read_bytes())) == 30
    assert (tmp_path / "hidden" / "solution.csv").is_file()
    bad = runner.invoke(app, ["simulate", f"data_dir={tmp_path / 'bad'}", "simulate.n_train=5", "--config", str(CONFIG)])
    assert bad.exit_code != 0 and not (tmp_path / "bad" / "train.json").exists()
