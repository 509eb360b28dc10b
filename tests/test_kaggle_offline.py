"""Offline leaderboard for simulated data, placement on the real final board, credentials errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from competition.config import CompetitionConfig
from competition.data.files import mark_simulation
from competition.errors import DataError
from competition.kaggle.credentials import CredentialsError, find_credentials
from competition.kaggle.ledger import Ledger
from competition.kaggle.placement import known_cutoffs, read_board
from competition.kaggle.scoring import score_submission
from competition.kaggle.submit import submit
from sklearn.metrics import log_loss

from fake_kaggle import client_env

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "statoil"


def _solution(tmp_path: Path, n: int = 60, seed: int = 0) -> tuple[Path, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    sol = pd.DataFrame(
        {"id": [f"{i:08x}" for i in range(n)], "is_iceberg": rng.integers(0, 2, n), "Usage": rng.choice(["Public", "Private", "Ignored"], n, p=[0.3, 0.3, 0.4])}
    )
    path = tmp_path / "data" / "hidden" / "solution.csv"
    path.parent.mkdir(parents=True)
    sol.to_csv(path, index=False)
    return path, sol


def _submission(tmp_path: Path, ids: pd.Series, p: np.ndarray, cv: float = 0.2) -> Path:
    path = tmp_path / "subs" / f"20171201-100000_exp_mean_cv{cv:.4f}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"id": ids, "is_iceberg": p}).to_csv(path, index=False)
    sample = tmp_path / "data" / "sample_submission.csv"  # what the validator checks the ids against
    sample.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"id": ids, "is_iceberg": 0.5}).to_csv(sample, index=False)
    path.with_suffix(".json").write_text(
        json.dumps(
            {
                "experiment": "exp",
                "method": "mean",
                "cv_mean": cv,
                "cv_std": 0.01,
                "config_hash": "h",
                "folds_fingerprint": "f",
                "data_fingerprint": {"train": "tr", "test": "te"},
            }
        )
    )
    return path


def test_offline_score_matches_sklearn_on_public_and_private_rows_and_skips_ignored(tmp_path):
    sol_path, sol = _solution(tmp_path)
    p = np.random.default_rng(1).uniform(0.05, 0.95, len(sol))
    score = score_submission(_submission(tmp_path, sol["id"], p), sol_path)
    for usage, got in (("Public", score.public), ("Private", score.private)):
        rows = (sol["Usage"] == usage).to_numpy()
        assert got == pytest.approx(log_loss(sol["is_iceberg"][rows], p[rows], labels=[0, 1]), rel=1e-12)
    assert (score.n_public, score.n_private) == ((sol["Usage"] == "Public").sum(), (sol["Usage"] == "Private").sum())
    assert score.public != pytest.approx(score.private)
    ignored = (sol["Usage"] == "Ignored").to_numpy()
    wild = p.copy()
    wild[ignored] = 1.0 - sol["is_iceberg"][ignored]  # confidently wrong where nothing is scored
    assert score_submission(_submission(tmp_path, sol["id"], wild), sol_path) == score


def test_offline_score_clips_like_kaggle_and_refuses_incomplete_files(tmp_path):
    sol_path, sol = _solution(tmp_path)
    p = sol["is_iceberg"].astype(float).to_numpy().copy()
    first_public = int(np.flatnonzero(sol["Usage"] == "Public")[0])
    p[first_public] = 1.0 - p[first_public]  # one certain mistake costs -log(1e-15), not infinity
    score = score_submission(_submission(tmp_path, sol["id"], p), sol_path)
    assert score.public == pytest.approx(-np.log(1e-15) / score.n_public, rel=1e-6)
    assert score.private == pytest.approx(-np.log(1 - 1e-15), abs=1e-12)
    with pytest.raises(DataError, match="missing"):
        score_submission(_submission(tmp_path, sol["id"][1:], p[1:]), sol_path)


def test_submit_on_simulated_data_scores_offline_and_records_the_ledger(tmp_path):
    sol_path, sol = _solution(tmp_path)
    cfg = CompetitionConfig(data_dir=tmp_path / "data", runs_dir=tmp_path / "runs", submissions_dir=tmp_path / "subs")
    mark_simulation(cfg, {}, "te")  # the simulator wrote this solution for the test data "te" the sidecar names
    p = np.random.default_rng(2).uniform(0.1, 0.9, len(sol))
    path = _submission(tmp_path, sol["id"], p, cv=0.2345)
    entry = submit(cfg, cfg.slug)  # auto: the hidden solution of the submission's test data exists, so offline
    expected = score_submission(path, sol_path)
    (row,) = Ledger(tmp_path / "runs" / "ledger.sqlite").entries()
    assert (row.score_source, row.status, row.public_score, row.private_score) == ("offline", "complete", expected.public, expected.private)
    assert (row.file, row.experiment, row.method, row.cv_mean, row.config_hash, row.folds_fingerprint) == (str(path), "exp", "mean", 0.2345, "h", "f")
    assert entry.id == row.id


@pytest.mark.skipif(not (SHARED / "private_leaderboard.csv").is_file(), reason="shared leaderboard files absent")
def test_placement_on_the_real_private_leaderboard():
    board = read_board(SHARED / "private_leaderboard.csv")
    assert board.teams == 3330
    first, gold, silver, bronze, median = (board.place(s) for s in (0.0822, 0.1137, 0.1375, 0.1455, 0.2037))
    assert (first.rank, first.medal) == (1, "gold")
    assert gold.medal == "gold" and 2 <= gold.rank <= 16
    assert silver.medal == "silver" and 17 <= silver.rank <= 166
    assert bronze.medal == "bronze" and 167 <= bronze.rank <= 333
    assert median.medal == "" and abs(median.rank - 1665) <= 35 and 48 <= median.percentile <= 52
    assert board.place(0.6931).rank > 3000
    cut = known_cutoffs()  # offline interpolation agrees on the medals
    assert [cut.place(s).medal for s in (0.0822, 0.1137, 0.1375, 0.1455, 0.2037)] == ["gold", "gold", "silver", "bronze", ""]
    assert abs(cut.place(0.2037).rank - median.rank) <= 35 and "interpolated" in cut.place(0.2).basis


def test_credentials_sources_and_bad_files(monkeypatch, tmp_path):
    client_env(monkeypatch, tmp_path, None)
    with pytest.raises(CredentialsError, match="no Kaggle credentials"):
        find_credentials(os.environ)
    cfg_dir = Path(os.environ["KAGGLE_CONFIG_DIR"])
    cfg_dir.mkdir(parents=True)
    (cfg_dir / "kaggle.json").write_text('{"username": "bob", "key": ""}')
    with pytest.raises(CredentialsError, match="key missing or empty"):
        find_credentials(os.environ)
    (cfg_dir / "kaggle.json").write_text('{"username": "bob", "key": "abcd1234"}')
    assert find_credentials(os.environ).username == "bob"
    monkeypatch.setenv("KAGGLE_USERNAME", "carol")
    monkeypatch.setenv("KAGGLE_KEY", "zzzz9999")
    assert find_credentials(os.environ).username == "carol"


@pytest.mark.parametrize("kaggle_json", [None, "{not json"])
def test_submit_without_usable_credentials_exits_cleanly(monkeypatch, tmp_path, kaggle_json):
    client_env(monkeypatch, tmp_path, None)
    if kaggle_json is not None:
        (tmp_path / "kaggle-config").mkdir()
        (tmp_path / "kaggle-config" / "kaggle.json").write_text(kaggle_json)
    path = _submission(tmp_path, pd.Series(["a", "b"]), np.array([0.2, 0.8]))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "competition",
            "submit",
            "--file",
            str(path),
            f"runs_dir={tmp_path / 'runs'}",
            f"data_dir={tmp_path / 'data'}",
            f"work_dir={tmp_path / 'data'}",
            "kaggle.submit_target=kaggle",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert ("no Kaggle credentials" if kaggle_json is None else "not a readable JSON file") in " ".join(done.stderr.split())
    assert "kaggle.com/settings/api" in " ".join(done.stderr.split())
