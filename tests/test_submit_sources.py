"""`make submit` on any submission a user has: the stacker's (sidecar), the kernel's
(`submission.csv` + `submission.json`), or a file without a sidecar (CV unknown); offline scores
only against the hidden solution of the test data the submission was made for; the ledger
records which data, and `make lb` copes with unknown CVs."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from competition.config import CompetitionConfig, SimulateConfig
from competition.data.loader import load_test
from competition.errors import DataError, MissingArtefactError
from competition.kaggle import submit as submit_module
from competition.kaggle.leaderboard import lb_table, leaderboard
from competition.kaggle.ledger import Entry, Ledger
from competition.kaggle.scoring import score_submission
from competition.kaggle.submit import message, parse_message, submit
from competition.submission import write_submission
from rich.console import Console

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> Path:
    """One tiny simulated competition (60 train / 40 test), copied by each test that changes it."""
    from competition.simulate import write_simulated

    root = tmp_path_factory.mktemp("sim")
    write_simulated(CompetitionConfig(data_dir=root / "data", simulate=SimulateConfig(n_train=60, n_test=40, seed=3)))
    return root / "data"


@pytest.fixture
def cfg(tmp_path, simulated) -> CompetitionConfig:
    shutil.copytree(simulated, tmp_path / "data")
    return CompetitionConfig(data_dir=tmp_path / "data", runs_dir=tmp_path / "runs", submissions_dir=tmp_path / "subs")


@pytest.fixture
def kaggle_calls(monkeypatch) -> list[list[str]]:
    """Record what would be sent to Kaggle instead of sending it."""
    calls: list[list[str]] = []

    def fake(args: list[str]) -> str:
        calls.append(list(args))
        return "Successfully submitted. Submission ref: 42\n"

    monkeypatch.setattr(submit_module, "run_kaggle", fake)
    return calls


def _ids(cfg: CompetitionConfig) -> np.ndarray:
    return pd.read_csv(cfg.sample_submission, dtype=str)["id"].to_numpy()


def _bare(cfg: CompetitionConfig, name: str = "by_hand.csv") -> Path:
    """A submission without a sidecar, as a user writes it by hand (R's write.csv: every field quoted)."""
    path = cfg.runs_dir.parent / "elsewhere" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = _ids(cfg)
    probs = np.random.default_rng(0).uniform(0.1, 0.9, len(ids))
    path.write_text('"id","is_iceberg"\n' + "".join(f'"{i}",{p:.6f}\n' for i, p in zip(ids, probs, strict=True)))
    return path


def _stacked(cfg: CompetitionConfig, *, test_fp: str, kind: str = "simulated", cv: float = 0.2012) -> Path:
    """A submission as the stacker writes it: CSV + sidecar with fingerprints and the data it was made on."""
    ids = _ids(cfg)
    data = {"kind": kind, "dir": str(cfg.data_dir), "train": "trainfp", "test": test_fp}
    return write_submission(
        cfg.submissions_dir, ids, np.linspace(0.05, 0.95, len(ids)), cfg.sample_submission, "exp", "lgbm", cv,
        {"cv_std": 0.011, "eps": 0.001, "config_hash": "cafe", "folds_fingerprint": "ff", "data_fingerprint": {"train": "trainfp", "test": test_fp},
         "data": data},
    )  # fmt: skip


# -- files without a sidecar --------------------------------------------------------------------


def test_a_file_without_sidecar_is_scored_offline_and_recorded_with_cv_unknown(cfg, kaggle_calls):
    path = _bare(cfg)
    entry = submit(cfg, cfg.slug, path)  # auto: the current test data is the simulator's, so offline
    assert kaggle_calls == []
    (row,) = Ledger(cfg.runs_dir / "ledger.sqlite").entries()
    expected = score_submission(path, cfg.solution_csv)
    assert (row.score_source, row.status, row.public_score, row.private_score) == ("offline", "complete", expected.public, expected.private)
    assert (row.cv_mean, row.cv_std, row.experiment, row.method, row.config_hash, row.data_kind) == (None, None, None, None, None, None)
    assert "cv unknown" in row.message and entry.id == row.id


def test_a_file_without_sidecar_goes_to_kaggle_saying_cv_unknown(cfg, kaggle_calls):
    path = _bare(cfg)
    entry = submit(cfg, cfg.slug, path, target="kaggle")
    (call,) = kaggle_calls
    assert call[:2] == ["competitions", "submit"] and call[call.index("-f") + 1] == str(path)
    assert call[call.index("-m") + 1] == "by_hand.csv | no sidecar | cv unknown | cfg ?" == entry.message
    (row,) = Ledger(cfg.runs_dir / "ledger.sqlite").entries()
    assert (row.score_source, row.status, row.kaggle_ref, row.cv_mean) == ("kaggle", "pending", "42", None)


def test_the_cv_unknown_message_reads_back_as_unknown_fields():
    assert parse_message(message(None, Path("x/submission.csv"))) == {"experiment": None, "method": None, "cv_mean": None, "cv_std": None, "config_hash": None}
    assert parse_message("base | lgbm | cv 0.17020 +/- 0.01230 | cfg c0ffee12") == {
        "experiment": "base",
        "method": "lgbm",
        "cv_mean": "0.17020",
        "cv_std": "0.01230",
        "config_hash": "c0ffee12",
    }
    assert parse_message("web upload") is None


def test_cli_submit_says_the_cv_is_unknown(cfg, tmp_path):
    path = _bare(cfg)
    done = subprocess.run(
        [sys.executable, "-m", "competition", "submit", "--file", str(path), f"data_dir={cfg.data_dir}", f"work_dir={cfg.work_dir}", f"runs_dir={cfg.runs_dir}",
         f"submissions_dir={cfg.submissions_dir}"],
        cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "400"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    said = " ".join(done.stderr.split())
    assert f"no sidecar beside {path}: recorded with CV unknown" in said
    assert "cv unknown" in said and "public" in said and "Traceback" not in said


# -- the kernel's output ------------------------------------------------------------------------


def test_the_kernels_submission_csv_with_its_sidecar_submits(cfg, kaggle_calls):
    stacked = _stacked(cfg, test_fp=load_test(cfg).fingerprint)
    out = cfg.runs_dir / "kaggle" / "output"
    out.mkdir(parents=True)
    shutil.copy(stacked, out / "submission.csv")
    shutil.copy(stacked.with_suffix(".json"), out / "submission.json")
    entry = submit(cfg, cfg.slug, out / "submission.csv")
    assert kaggle_calls == [] and entry.score_source == "offline" and entry.status == "complete"
    (row,) = Ledger(cfg.runs_dir / "ledger.sqlite").entries()
    assert (row.file, row.experiment, row.method, row.cv_mean, row.cv_std, row.config_hash) == (
        str(out / "submission.csv"),
        "exp",
        "lgbm",
        0.2012,
        0.011,
        "cafe",
    )
    assert row.data_kind == "simulated" and json.loads(row.data_fingerprint)["test"] == load_test(cfg).fingerprint
    assert row.message == "exp | lgbm | cv 0.20120 +/- 0.01100 | cfg cafe"


def test_a_broken_sidecar_is_refused_naming_the_file(cfg, kaggle_calls):
    path = _bare(cfg, "submission.csv")
    path.with_suffix(".json").write_text("{not json")
    with pytest.raises(DataError, match=r"submission\.json: not valid JSON \(line 1\): fix or remove the sidecar of submission\.csv"):
        submit(cfg, cfg.slug, path)
    assert kaggle_calls == [] and not (cfg.runs_dir / "ledger.sqlite").exists()


# -- never scored against a hidden solution that is not the submission's -----------------------


def test_a_submission_made_for_other_test_data_is_never_scored_offline(cfg, kaggle_calls):
    foreign = _stacked(cfg, test_fp="0123456789abcdef", kind="real")  # made on other (real) test data, same ids
    with pytest.raises(MissingArtefactError) as info:
        submit(cfg, cfg.slug, foreign, target="offline")
    text = str(info.value)
    assert "\n" not in text and "belongs to other test data" in text and "0123456789abcdef" in text and "kaggle.submit_target=kaggle" in text
    assert not (cfg.runs_dir / "ledger.sqlite").exists()
    entry = submit(cfg, cfg.slug, foreign)  # auto: no solution of its own, so Kaggle
    assert (entry.score_source, entry.public_score, entry.data_kind) == ("kaggle", None, "real") and len(kaggle_calls) == 1


def test_real_data_beside_a_stale_simulated_solution_goes_to_kaggle(cfg, tmp_path, kaggle_calls):
    """The user replaced the simulated test.json by other data; the old hidden/ folder stayed."""
    from competition.simulate import write_simulated

    other = CompetitionConfig(data_dir=tmp_path / "other", simulate=SimulateConfig(n_train=60, n_test=40, seed=3, machine_generated_fraction=0.5))
    write_simulated(other)
    shutil.copy(other.test_json, cfg.test_json)  # same ids would not matter: the content differs
    shutil.copy(other.sample_submission, cfg.sample_submission)
    path = _bare(cfg)
    entry = submit(cfg, cfg.slug, path)
    assert entry.score_source == "kaggle" and len(kaggle_calls) == 1
    with pytest.raises(MissingArtefactError, match=r"belongs to other test data than the one .*by_hand\.csv was made for"):
        submit(cfg, cfg.slug, path, target="offline")


def test_real_data_without_any_solution_refuses_offline_and_reads_no_test_data(cfg, monkeypatch, kaggle_calls):
    shutil.rmtree(cfg.data_dir / "hidden")
    monkeypatch.setattr("competition.data.loader.load_test", lambda cfg: pytest.fail("the test data need not be read"))
    with pytest.raises(MissingArtefactError, match=r"solution\.csv does not exist \(only simulated data has a hidden solution\)"):
        submit(cfg, cfg.slug, _bare(cfg), target="offline")
    assert submit(cfg, cfg.slug, _bare(cfg)).score_source == "kaggle"


def test_the_scorer_refuses_ids_that_are_not_the_solutions(cfg, tmp_path):
    sol = pd.read_csv(cfg.solution_csv, dtype={"id": str})
    path = tmp_path / "other_ids.csv"
    pd.DataFrame({"id": [f"x{i}" for i in range(len(sol))], "is_iceberg": 0.5}).to_csv(path, index=False)
    with pytest.raises(DataError) as info:
        score_submission(path, cfg.solution_csv)
    text = str(info.value)
    assert "its ids are not the ids of the hidden solution" in text and "40 test id(s) of the solution missing" in text
    assert "40 id(s) not in the solution" in text and "\n" not in text
    swapped = tmp_path / "swapped.csv"  # columns in the other order, quoted, BOM: read as Kaggle does
    swapped.write_bytes(b"\xef\xbb\xbf" + ('"is_iceberg","id"\r\n' + "".join(f'"0.5","{i}"\r\n' for i in sol["id"])).encode())
    assert score_submission(swapped, cfg.solution_csv).public == pytest.approx(np.log(2))


# -- the ledger ---------------------------------------------------------------------------------


def test_an_old_ledger_gains_the_data_kind_column(tmp_path):
    path = tmp_path / "ledger.sqlite"
    with sqlite3.connect(path) as con:  # the schema before data_kind existed
        con.execute(
            "CREATE TABLE submissions (id INTEGER PRIMARY KEY AUTOINCREMENT, file TEXT NOT NULL, submitted_at TEXT NOT NULL, "
            "experiment TEXT, method TEXT, cv_mean REAL, cv_std REAL, config_hash TEXT, folds_fingerprint TEXT, data_fingerprint TEXT, "
            "message TEXT NOT NULL, score_source TEXT NOT NULL CHECK (score_source IN ('kaggle', 'offline')), public_score REAL, "
            "private_score REAL, status TEXT NOT NULL, kaggle_ref TEXT)"
        )
        con.execute("INSERT INTO submissions (file, submitted_at, cv_mean, message, score_source, status) VALUES "
                    "('old.csv', '2017-12-01', 0.2, 'm', 'kaggle', 'pending')")  # fmt: skip
    con.close()
    ledger = Ledger(path)
    (old,) = ledger.entries()
    assert (old.file, old.cv_mean, old.data_kind) == ("old.csv", 0.2, None)
    ledger.add(Entry("new.csv", "2017-12-02", "e", "m", None, None, None, None, None, "msg", "offline", data_kind="real"))
    assert [(e.file, e.data_kind, e.cv_mean) for e in Ledger(path).entries()] == [("old.csv", None, 0.2), ("new.csv", "real", None)]
    with sqlite3.connect(path) as con:
        assert "data_kind" in [row[1] for row in con.execute("PRAGMA table_info(submissions)")]
    con.close()


def test_lb_table_correlations_and_plot_cope_with_unknown_cv(tmp_path):
    cfg = CompetitionConfig(data_dir=tmp_path / "data", runs_dir=tmp_path / "runs", submissions_dir=tmp_path / "subs")
    ledger = Ledger(tmp_path / "runs" / "ledger.sqlite")
    for n, (cv, public, private) in enumerate([(0.20, 0.21, 0.22), (0.18, 0.19, 0.20), (0.25, 0.27, 0.26), (None, 0.15, 0.90), (None, None, None)]):
        ledger.add(Entry(f"s{n}.csv", f"2017-12-0{n + 1}", "e" if cv else None, "m" if cv else None, cv, 0.01 if cv else None, None, None, None,
                         "msg", "offline", public, private, "complete", data_kind="simulated" if cv else None))  # fmt: skip
    report = leaderboard(cfg, cfg.slug, online=False)
    r, n = report.correlations["private"]
    assert n == 3 and r == pytest.approx(np.corrcoef([0.20, 0.18, 0.25], [0.22, 0.20, 0.26])[0, 1])  # the unknown-CV rows are skipped
    assert report.correlations["public"][1] == 3 and report.plot.stat().st_size > 0
    console = Console(record=True, width=250)
    console.print(lb_table(report))
    lines = [line for line in console.export_text().splitlines() if "s3.csv" in line or "2017-12-04" in line]
    (row,) = lines
    cells = [c.strip() for c in row.split("│") if c.strip()]
    assert cells[2:7] == ["?", "?", "-", "-", "-"]  # experiment, method, data, CV, CV sd unknown
    assert cells[7:9] == ["0.1500", "0.9000"]
    assert report.placements[3][1] == "private" and report.placements[4] == (None, "")


def test_a_file_without_sidecar_through_the_real_client_then_lb(monkeypatch, cfg):
    """The real `kaggle` client against the fake server: the description says cv unknown, `lb` shows '-'."""
    from fake_kaggle import FakeKaggle, client_env

    server = FakeKaggle("alice", "k3y-0123456789abcdef").start()
    try:
        client_env(monkeypatch, cfg.runs_dir.parent, server, "alice", "k3y-0123456789abcdef")
        path = _bare(cfg, "submission.csv")
        args = [f"data_dir={cfg.data_dir}", f"work_dir={cfg.work_dir}", f"runs_dir={cfg.runs_dir}", f"submissions_dir={cfg.submissions_dir}"]
        run = [sys.executable, "-m", "competition"]
        done = subprocess.run(
            [*run, "submit", "--file", str(path), "kaggle.submit_target=kaggle", *args], cwd=REPO, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        assert "recorded with CV unknown" in " ".join(done.stderr.split())
        (create,) = server.requests("CreateSubmission")
        assert create["submissionDescription"] == "submission.csv | no sidecar | cv unknown | cfg ?"
        server.submissions[0].update(status="COMPLETE", publicScore="0.2", privateScore="0.21")
        server.leaderboard_csv = "TeamId,TeamName,SubmissionDate,Score\n" + "".join(f"{i},t{i},2018-01-23,{0.1 + i / 100:.5f}\n" for i in range(50))
        done = subprocess.run([*run, "lb", *args], cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "250"})
        assert done.returncode == 0, done.stderr
        assert "1 updated, 0 added" in done.stderr and "Traceback" not in done.stderr
        (row,) = Ledger(cfg.runs_dir / "ledger.sqlite").entries()
        assert (row.public_score, row.private_score, row.cv_mean, row.status) == (0.2, 0.21, None, "complete")
        table = [line for line in done.stdout.splitlines() + done.stderr.splitlines() if "│ 1 " in line]
        assert table and [c.strip() for c in table[0].split("│") if c.strip()][2:7] == ["?", "?", "-", "-", "-"]
    finally:
        server.stop()


def test_kaggles_archives_only_folder_validates_against_the_archived_sample(simulated, tmp_path, kaggle_calls):
    """Kaggle's download as it arrives (case archives_only): the sample submission exists only inside a .7z."""
    import py7zr

    data = tmp_path / "download"
    data.mkdir()
    for name, inner in (("train.json", "data/processed/train.json"), ("test.json", "data/processed/test.json"),
                        ("sample_submission.csv", "sample_submission.csv")):  # fmt: skip
        with py7zr.SevenZipFile(data / f"{name}.7z", "w") as z:
            z.write(simulated / name, arcname=inner)
    cfg = CompetitionConfig(data_dir=data, work_dir=tmp_path / "work", runs_dir=tmp_path / "runs", submissions_dir=tmp_path / "subs")
    ids = pd.read_csv(simulated / "sample_submission.csv", dtype=str)["id"]
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    pd.DataFrame({"id": ids, "is_iceberg": 0.5}).to_csv(good, index=False)
    pd.DataFrame({"id": ids[1:], "is_iceberg": 0.5}).to_csv(bad, index=False)
    with pytest.raises(DataError, match="1 test ids are missing"):
        submit(cfg, cfg.slug, bad)
    assert submit(cfg, cfg.slug, good).score_source == "kaggle" and len(kaggle_calls) == 1  # real-looking data: no offline score
    assert sorted(p.name for p in data.iterdir()) == ["sample_submission.csv.7z", "test.json.7z", "train.json.7z"]
