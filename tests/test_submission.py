"""The submission validator rejects every malformed case; the writer never publishes a bad file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from competition.submission import SubmissionError, submission_name, validate_submission, write_submission

IDS = [f"{i:08x}" for i in range(12)]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def sample(tmp_path):
    path = tmp_path / "sample_submission.csv"
    pd.DataFrame({"id": IDS, "is_iceberg": 0.5}).to_csv(path, index=False)
    return path


def _write(tmp_path, lines: list[str], name="sub.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def _valid_lines() -> list[str]:
    return ["id,is_iceberg", *(f"{i},{0.1 + 0.05 * n:.3f}" for n, i in enumerate(IDS))]


def test_a_valid_file_passes_in_any_row_order(tmp_path, sample):
    lines = _valid_lines()
    assert validate_submission(_write(tmp_path, lines), sample) == len(IDS)
    assert validate_submission(_write(tmp_path, [lines[0], *lines[1:][::-1]]), sample) == len(IDS)
    edge = [lines[0], f"{IDS[0]},0", f"{IDS[1]},1", *lines[3:]]
    assert validate_submission(_write(tmp_path, edge), sample) == len(IDS)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda L: ["id,is_iceberg,extra", *L[1:]], "header must be exactly"),
        (lambda L: ["ID,is_iceberg", *L[1:]], "header must be exactly"),
        (lambda L: ["is_iceberg,id", *L[1:]], "header must be exactly"),
        (lambda L: [L[0], *L[2:]], r"1 test ids are missing, e.g. '00000000'"),
        (lambda L: [*L, "ffffffff,0.5"], r"1 ids are not test ids of the sample submission: line 14 \(id 'ffffffff'\)"),
        (lambda L: [*L, L[3]], r"1 ids appear more than once: line 14 \(id '00000002'\)"),
        (lambda L: [L[0], L[1], f"{IDS[1]},nan", *L[3:]], r"empty or NaN: line 3 \(id '00000001'\)"),
        (lambda L: [L[0], L[1], f"{IDS[1]},", *L[3:]], r"empty or NaN: line 3"),
        (lambda L: [L[0], L[1], L[2], f"{IDS[2]},1.2", *L[4:]], r"not a finite probability in \[0, 1\]: line 4 \(id '00000002'\)"),
        (lambda L: [L[0], f"{IDS[0]},-0.01", *L[2:]], r"not a finite probability in \[0, 1\]: line 2"),
        (lambda L: [L[0], f"{IDS[0]},inf", *L[2:]], r"not a finite probability"),
        (lambda L: [L[0], f"{IDS[0]},iceberg", *L[2:]], r"is_iceberg is not a number: line 2 \(id '00000000'\)"),
    ],
    ids=["extra-column", "header-case", "header-order", "missing-id", "extra-id", "duplicate-id", "nan", "empty", "above-1", "below-0", "inf", "non-numeric"],
)
def test_each_malformed_case_is_rejected_naming_the_row(tmp_path, sample, change, message):
    with pytest.raises(SubmissionError, match=message):
        validate_submission(_write(tmp_path, change(_valid_lines())), sample)


def test_all_problems_of_a_file_are_reported_together_with_the_first_rows(tmp_path, sample):
    lines = _valid_lines()
    bad = [lines[0], *(f"{i},2" for i in IDS[:8]), *lines[9:], "zzz,0.5"]
    with pytest.raises(SubmissionError) as info:
        validate_submission(_write(tmp_path, bad), sample)
    text = str(info.value)
    assert "not test ids" in text and "not a finite probability" in text
    assert "line 2 (id '00000000')" in text and "and 3 more" in text  # five rows named, the rest counted


def test_writer_writes_a_valid_file_in_sample_order_with_its_sidecar(tmp_path, sample):
    probs = np.linspace(0.05, 0.95, len(IDS))
    path = write_submission(tmp_path / "subs", np.array(IDS[::-1]), probs[::-1], sample, "exp_1", "logit_mean", 0.21234, {"eps": 0.001})
    assert path.name.endswith("_exp-1_logit-mean_cv0.2123.csv")
    datetime.strptime(path.name.split("_")[0], "%Y%m%d-%H%M%S")
    assert path.read_text().splitlines()[0] == "id,is_iceberg"
    frame = pd.read_csv(path, dtype={"id": str})
    assert frame["id"].tolist() == IDS and np.allclose(frame["is_iceberg"], probs)
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["method"] == "logit_mean" and sidecar["experiment"] == "exp_1" and sidecar["cv_mean"] == 0.21234 and sidecar["eps"] == 0.001


@pytest.mark.parametrize("bad", [np.nan, 1.5, -0.1])
def test_writer_refuses_a_bad_file_and_leaves_nothing(tmp_path, sample, bad):
    probs = np.full(len(IDS), 0.5)
    probs[3] = bad
    with pytest.raises(SubmissionError, match=r"(?s)\(not written\).*line 5 \(id '00000003'\)"):
        write_submission(tmp_path / "subs", np.array(IDS), probs, sample, "e", "m", 0.2, {})
    assert list((tmp_path / "subs").iterdir()) == []


def test_writer_refuses_missing_ids(tmp_path, sample):
    with pytest.raises(SubmissionError, match="1 test ids are missing"):
        write_submission(tmp_path / "subs", np.array(IDS[1:]), np.full(len(IDS) - 1, 0.5), sample, "e", "m", 0.2, {})
    assert list((tmp_path / "subs").iterdir()) == []


def test_submission_name_format():
    when = datetime(2026, 1, 2, 3, 4, 5)
    assert submission_name("base line", "single:resnet_18", 0.1, when) == "20260102-030405_base-line_single-resnet-18_cv0.1000.csv"


def test_cli_validate_exit_codes(tmp_path, sample):
    good = _write(tmp_path, _valid_lines(), "good.csv")
    bad = _write(tmp_path, [*_valid_lines(), _valid_lines()[1]], "bad.csv")
    env = {**os.environ, "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "competition", "validate"]
    ok = subprocess.run([*cmd, str(good), f"data_dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    assert "valid" in ok.stderr and "12 rows" in ok.stderr
    ko = subprocess.run([*cmd, str(bad), f"data_dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert ko.returncode == 2 and "appear more than once: line 14" in ko.stderr and "Traceback" not in ko.stderr
