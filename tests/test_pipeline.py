"""`make all` end to end: tiny simulated data and tiny timm networks, then a dataset of the user's own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from competition.config import CompetitionConfig, FoldsConfig, SimulateConfig
from competition.folds import load_folds
from competition.kaggle.ledger import Ledger
from competition.pipeline import run_all
from competition.submission import validate_submission
from competition.training.store import load_run

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["mobilenetv3_small_050", "resnet10t"]  # timm architectures by name, random init
TINY = ["weights=none", "channels=[hh,hv]", "image_size=32", "head.hidden=[8]", "epochs=2", "batch_size=16",
        "save_models=false", "tta=[id,flip]", "stack.stacker.n_trials=2", "stack.stacker.inner_folds=2",
        "stack.features.band_stats=false", f"models={json.dumps(MODELS)}"]  # fmt: skip


def test_make_all_steps_leave_every_artefact_with_agreeing_fingerprints(tmp_path: Path) -> None:
    cfg = CompetitionConfig(
        data_dir=tmp_path / "data", runs_dir=tmp_path / "runs", submissions_dir=tmp_path / "subs",
        simulate=SimulateConfig(n_train=60, n_test=30, seed=5), folds=FoldsConfig(k=3),
    )  # fmt: skip
    result = run_all(cfg, TINY, profile="cpu")

    assert result["data"]["kind"] == "simulated" and result["data"]["dir"] == str(cfg.data_dir.resolve())
    for name in ("train.json", "test.json", "sample_submission.csv", "hidden/solution.csv", "folds.csv", "folds.json"):
        assert (cfg.data_dir / name).is_file(), name
    folds = load_folds(cfg)
    runs = [load_run(cfg.runs_dir / cfg.experiment / m) for m in MODELS]
    for run in runs:
        assert run.meta.folds_fingerprint == folds.fingerprint
        assert run.meta.data_fingerprint.train == folds.data_fingerprint
    assert len({json.dumps(r.meta.data_fingerprint.model_dump(), sort_keys=True) for r in runs}) == 1

    summary = result["summary"]
    assert summary.folds_fingerprint == folds.fingerprint
    assert {f"single:{m}" for m in MODELS} <= set(summary.methods)
    submission = Path(summary.submission)
    assert validate_submission(submission, cfg.sample_submission) == 30
    sidecar = json.loads(submission.with_suffix(".json").read_text())
    assert sidecar["folds_fingerprint"] == folds.fingerprint

    (entry,) = Ledger(cfg.runs_dir / "ledger.sqlite").entries()
    assert entry.file == str(submission) and entry.score_source == "offline"
    assert result["scores"] == (entry.public_score, entry.private_score)
    assert all(np.isfinite(s) and 0 < s < 5 for s in result["scores"])

    report = Path(result["report"])
    page = report.read_text()
    for png in ("fold_scores.png", "calibration.png", "correlation.png", "cv_vs_lb.png"):
        assert (report.parent / png).stat().st_size > 1000 and png in page
    assert [name for name, _ in result["timings"]] == ["data", "folds", *(f"train {m}" for m in MODELS), "stack", "submit", "report"]


def _own_records(n: int, rng: np.random.Generator, labelled: bool, prefix: str = "chip") -> list[dict]:
    """SAR-like chips of the user's own collection: bright blobs on speckled sea, ids of any form."""
    yy, xx = np.mgrid[:75, :75]
    records = []
    for i in range(n):
        label = int(rng.random() < 0.5)
        sea = 10 * np.log10(rng.gamma(4.0, 1 / 4.0, size=(2, 75, 75))) - np.array([22.0, 28.0])[:, None, None]
        radius = 3 + 4 * label + rng.random() * 2
        blob = ((yy - 37) ** 2 + (xx - 37) ** 2 < radius**2) * (12 - 5 * label)
        band = (sea + blob).astype(np.float32)
        rec = {"id": f"{prefix}-{i:04d}", "band_1": band[0].ravel().tolist(), "band_2": band[1].ravel().tolist(),
               "inc_angle": "na" if labelled and i % 17 == 0 else round(float(rng.uniform(30, 45)), 4)}  # fmt: skip
        if labelled:
            rec["is_iceberg"] = label
        records.append(rec)
    return records


def _own_competition(tmp_path: Path) -> tuple[Path, Path]:
    """A user's own competition folder (48 labelled chips, 18 test chips) and a 3-fold config naming it: (config, data)."""
    rng = np.random.default_rng(0)
    data = tmp_path / "mine"
    data.mkdir()
    (data / "train.json").write_bytes(orjson.dumps(_own_records(48, rng, labelled=True)))
    test = _own_records(18, rng, labelled=False, prefix="unseen")  # test ids are never training ids
    (data / "test.json").write_bytes(orjson.dumps(test))
    pd.DataFrame({"id": [r["id"] for r in test], "is_iceberg": 0.5}).to_csv(data / "sample_submission.csv", index=False)
    config = tmp_path / "competition.yaml"
    config.write_text(f"data_dir: {data}\nruns_dir: {tmp_path / 'runs'}\nsubmissions_dir: {tmp_path / 'subs'}\nfolds:\n  k: 3\n")
    return config, data


def test_a_users_own_dataset_runs_through_the_same_command(tmp_path: Path) -> None:
    config, data = _own_competition(tmp_path)

    done = subprocess.run([sys.executable, "-m", "competition", "all", "-c", str(config), "--profile", "cpu", *TINY],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "send it with `make submit`" in " ".join(done.stderr.split())  # own data: nothing is scored or sent
    (submission,) = (tmp_path / "subs").glob("*.csv")
    assert validate_submission(submission, data / "sample_submission.csv") == 18
    assert not (tmp_path / "runs" / "ledger.sqlite").exists()
    assert (tmp_path / "runs" / "baseline" / "report" / "index.html").is_file()


def test_make_all_on_kaggles_archives_as_they_arrive(tmp_path: Path) -> None:
    """../shared/cases archives_only: every step reads the .7z files; nothing is written beside them;
    the run says it is real data, and nothing is scored against a hidden solution."""
    import hashlib

    import py7zr
    from competition.simulate import write_simulated

    source = tmp_path / "source"
    write_simulated(CompetitionConfig(data_dir=source, simulate=SimulateConfig(n_train=48, n_test=20, seed=5)))
    data = tmp_path / "kaggle"
    data.mkdir()
    for name, inner in (
        ("train.json", "data/processed/train.json"),
        ("test.json", "data/processed/test.json"),
        ("sample_submission.csv", "sample_submission.csv"),
    ):
        with py7zr.SevenZipFile(data / f"{name}.7z", "w") as z:
            z.write(source / name, arcname=inner)
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in data.iterdir()}
    work = tmp_path / "work"
    args = [f"data_dir={data}", f"work_dir={work}", f"runs_dir={tmp_path / 'runs'}", f"submissions_dir={tmp_path / 'subs'}", "folds.k=3"]

    done = subprocess.run([sys.executable, "-m", "competition", "all", "--profile", "cpu", *args, *TINY],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)  # fmt: skip
    said = " ".join(done.stderr.split())
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"data: real data (no offline scoring) in {data}" in said and "simulating" not in said
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in data.iterdir()} == before
    assert (work / "folds.json").is_file() and not (tmp_path / "runs" / "ledger.sqlite").exists()
    (submission,) = (tmp_path / "subs").glob("*.csv")
    assert validate_submission(submission, source / "sample_submission.csv") == 20
    sidecar = json.loads(submission.with_suffix(".json").read_text())
    assert sidecar["data"]["kind"] == "real" and sidecar["data"]["dir"] == str(data)

    stack = subprocess.run([sys.executable, "-m", "competition", "stack", *args, "stack.stacker.n_trials=2", "stack.stacker.inner_folds=2",
                            "stack.features.band_stats=false", "stack.methods=[mean,lgbm]"], cwd=ROOT, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert stack.returncode == 0, stack.stderr[-3000:]  # `stack` alone reads the archived sample submission too


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the training child in Linux's /proc")
def test_make_all_killed_by_sigterm_leaves_no_training_process_behind(tmp_path: Path) -> None:
    """`kill PID` (or `timeout`, a cancelled CI job) reaches the CLI process only, not its process group as Ctrl-C
    does; the per-model training child it spawned must end too, not train on as an orphan (found in session 8)."""
    config, _ = _own_competition(tmp_path)
    args = ["weights=none", "channels=[hh,hv]", "image_size=32", "head.hidden=[8]", "epochs=100000", "patience=100000",
            "save_models=false", "tta=[id]", 'models=["resnet10t"]']  # fmt: skip
    cli = subprocess.Popen([sys.executable, "-m", "competition", "all", "-c", str(config), "--profile", "cpu", *args], cwd=ROOT,
                           start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    child = None
    try:
        child = _wait_until(lambda: _spawned_child(cli.pid), timeout_s=300)
        assert child is not None, "the training child never started"
        time.sleep(3)  # training under way
        cli.send_signal(signal.SIGTERM)
        cli.wait(timeout=60)
        assert _wait_until(lambda: not _running(child), timeout_s=30), f"training child {child} still running 30 s after its CLI process ended"
    finally:
        for pid in (cli.pid, child):
            if pid is not None and _running(pid):
                os.kill(pid, signal.SIGKILL)


def _wait_until(found: Callable[[], Any], timeout_s: float) -> Any:
    """Poll `found` every 0.2 s until it returns something truthy (returned) or `timeout_s` passes (its last value)."""
    deadline = time.monotonic() + timeout_s
    while not (value := found()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return value


def _spawned_child(parent: int) -> int | None:
    """The pid of `parent`'s multiprocessing spawn child (Linux /proc), or None."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError):
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if ppid == parent and b"spawn_main" in (stat.parent / "cmdline").read_bytes():
                return int(stat.parent.name)
    return None


def _running(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie (an ended child nobody reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
