"""`make data`: credentials check, client failures, unpacking Kaggle's zip of .7z files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import py7zr
import pytest
from competition.config import CompetitionConfig
from competition.console import console
from competition.data.download import FILES, client_failure, download, run_client, summary, unpack
from competition.data.loader import read_dataset
from competition.errors import DataError, UserError
from competition.kaggle.credentials import find_credentials, has_credentials

REPO = Path(__file__).resolve().parents[1]
KAGGLE_VARS = ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR", "XDG_CONFIG_HOME")


@pytest.fixture
def empty_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME without Kaggle credentials, and no credentials in the environment."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in KAGGLE_VARS:
        monkeypatch.delenv(name, raising=False)
    return home


def test_without_credentials_it_says_how_to_get_them(tmp_path: Path, empty_home: Path) -> None:
    cfg = CompetitionConfig(data_dir=tmp_path / "data")
    assert not has_credentials()
    with pytest.raises(UserError) as err:
        download(cfg)
    message = str(err.value)
    for part in ("no Kaggle credentials", "Generate New Token", "KAGGLE_API_TOKEN", "~/.kaggle/kaggle.json", "KAGGLE_USERNAME", "make simulate"):
        assert part in message, (part, message)
    assert f"kaggle.com/c/{cfg.slug}/rules" in message
    assert not cfg.data_dir.exists()  # nothing written


def test_cli_without_credentials_exits_2_without_traceback(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in KAGGLE_VARS} | {"HOME": str(home), "COLUMNS": "400"}
    result = subprocess.run(
        [sys.executable, "-m", "competition", "data", f"data_dir={tmp_path / 'data'}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "no Kaggle credentials" in result.stderr and "make simulate" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize("source", ["token", "username and key", "kaggle.json", "config dir", "access_token"])
def test_credentials_are_found_but_never_shown(tmp_path: Path, empty_home: Path, monkeypatch: pytest.MonkeyPatch, source: str) -> None:
    secret = "s3cr3t-value-1234"
    if source == "token":
        monkeypatch.setenv("KAGGLE_API_TOKEN", secret)
    elif source == "username and key":
        monkeypatch.setenv("KAGGLE_USERNAME", "someone")
        monkeypatch.setenv("KAGGLE_KEY", secret)
    elif source == "config dir":
        monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "cfg"))
        (tmp_path / "cfg").mkdir()
        (tmp_path / "cfg" / "kaggle.json").write_text(json.dumps({"username": "someone", "key": secret}))
    else:
        (empty_home / ".kaggle").mkdir()
        if source == "kaggle.json":
            (empty_home / ".kaggle" / "kaggle.json").write_text(json.dumps({"username": "someone", "key": secret}))
        else:
            (empty_home / ".kaggle" / "access_token").write_text(secret)
    found = find_credentials()
    assert secret not in repr(found)


def test_username_without_key_is_not_credentials(empty_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    assert not has_credentials()


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("403 Client Error: Forbidden for url: https://www.kaggle.com/api/v1/competitions/data/download-all", "accept the competition rules"),
        ("401 - Unauthorized - Unauthenticated", "rejected the credentials"),
        ("404 Client Error: Not Found", "check `slug`"),
        ("ConnectionError: HTTPSConnectionPool(host='www.kaggle.com'): Max retries exceeded", "no network"),
        ("something odd happened", "the Kaggle client failed"),
    ],
)
def test_client_failures_become_clear_messages(output: str, expected: str) -> None:
    message = client_failure(output, 1, CompetitionConfig())
    assert expected in message and "exit code 1" in message and "make simulate" in message
    assert output.splitlines()[0][:40] in message  # the client's own words are kept


def test_real_client_failure_becomes_a_user_error(tmp_path: Path, empty_home: Path) -> None:
    """The genuine client, run offline with no credentials, fails; the user gets the cause and the fix."""
    cfg = CompetitionConfig(data_dir=tmp_path / "data")
    with pytest.raises(UserError) as err:
        run_client(["competitions", "download", "-c", cfg.slug, "-p", str(tmp_path / "dl")], cfg)
    message = str(err.value)
    assert "found no usable credentials" in message and "Generate New Token" in message and "exit code 1" in message
    assert not (tmp_path / "dl").exists() or not any((tmp_path / "dl").iterdir())


def test_client_failure_hides_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAGGLE_KEY", "abcdef123456")
    message = client_failure("error: bad key abcdef123456 for user x", 1, CompetitionConfig())
    assert "abcdef123456" not in message and "***" in message


def _kaggle_bundle(tmp_path: Path, records: list, test_records: list, names: tuple[str, ...] = FILES) -> Path:
    """A zip laid out like Kaggle's download: one .7z per file."""
    src, staging = tmp_path / "src", tmp_path / "download"
    src.mkdir()
    staging.mkdir()
    contents = {"train.json": json.dumps(records), "test.json": json.dumps(test_records), "sample_submission.csv": "id,is_iceberg\n"}
    with zipfile.ZipFile(staging / "statoil-iceberg-classifier-challenge.zip", "w") as bundle:
        for name in names:
            (src / name).write_text(contents[name])
            with py7zr.SevenZipFile(src / f"{name}.7z", "w") as z:
                z.write(src / name, name)
            bundle.write(src / f"{name}.7z", f"{name}.7z")
    return staging


def test_unpack_installs_the_files_from_the_7z_archives(tmp_path: Path, make_records) -> None:
    records, test_records = make_records(3), make_records(2, "test")
    staging = _kaggle_bundle(tmp_path, records, test_records)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "train.json").write_text("old simulated data")

    installed = unpack(staging, data_dir)

    assert installed == [data_dir / name for name in FILES]
    for name in FILES:
        assert (data_dir / name).read_bytes() == (tmp_path / "src" / name).read_bytes()
    train = read_dataset(data_dir / "train.json", "train")
    np.testing.assert_array_equal(train.images[1, ..., 0].ravel(), np.float32(records[1]["band_1"]))
    assert read_dataset(data_dir / "test.json", "test").ids.tolist() == [r["id"] for r in test_records]
    assert sorted(p.name for p in data_dir.iterdir()) == sorted(FILES)  # no leftovers

    with console.capture() as captured:
        console.print(summary(CompetitionConfig(data_dir=data_dir)))
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in captured.get().splitlines()]
    rows = {row[0]: row[1:] for row in cells if row and row[0] in ("train", "test")}
    assert rows == {"train": ["3", "0.333", "1", "0"], "test": ["2", "-", "0", "0"]}


def test_incomplete_download_keeps_the_old_files(tmp_path: Path, make_records) -> None:
    staging = _kaggle_bundle(tmp_path, make_records(3), make_records(2, "test"), names=("train.json", "sample_submission.csv"))
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "train.json").write_text("previous")
    with pytest.raises(DataError, match="holds no test.json"):
        unpack(staging, data_dir)
    assert (data_dir / "train.json").read_text() == "previous"
    assert sorted(p.name for p in data_dir.iterdir()) == ["train.json"]


def test_damaged_zip_is_a_data_error(tmp_path: Path) -> None:
    staging = tmp_path / "download"
    staging.mkdir()
    (staging / "statoil-iceberg-classifier-challenge.zip").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="not a readable zip"):
        unpack(staging, tmp_path / "data")


def test_download_uses_only_the_kaggle_client_interface() -> None:
    """competition/data/download.py imports nothing of competition.kaggle but its client, and never the `kaggle` package."""
    import ast

    import competition.data.download as module

    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert {m for m in imported if m.startswith("competition.kaggle")} == {"competition.kaggle.client"}
    assert not {m for m in imported if m == "kaggle" or m.startswith("kaggle.")}
