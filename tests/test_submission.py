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
        (lambda L: ["id,is_iceberg,extra", *(f"{x},1" for x in L[1:])], r"line 1: the header must name the columns id,is_iceberg .*: remove column 'extra'"),
        (lambda L: ["ID,is_iceberg", *L[1:]], r"line 1: .*: rename 'ID' to 'id'$"),
        (lambda L: ["is_iceberg,id", *L[1:]], r"values under 'is_iceberg' are test ids: the header names the two columns in the other order"),
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


SIDECAR = {"cv_std": 0.01, "eps": 0.001, "config_hash": "cafe", "folds_fingerprint": "ff"}  # what the stacker passes, at least


def test_writer_writes_a_valid_file_in_sample_order_with_its_sidecar(tmp_path, sample):
    probs = np.linspace(0.05, 0.95, len(IDS))
    path = write_submission(tmp_path / "subs", np.array(IDS[::-1]), probs[::-1], sample, "exp_1", "logit_mean", 0.21234, SIDECAR)
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
    ok = subprocess.run([*cmd, str(good), f"data_dir={tmp_path}", f"work_dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    assert "valid" in ok.stderr and "12 rows" in ok.stderr
    ko = subprocess.run([*cmd, str(bad), f"data_dir={tmp_path}", f"work_dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert ko.returncode == 2 and "appear more than once: line 14" in ko.stderr and "Traceback" not in ko.stderr


# --- Submissions as users' tools write them: what Kaggle's reader accepts passes, the rest names the fix. ---


def _quoted_and_bom(tmp_path: Path) -> tuple[Path, Path]:
    """The forms of ../shared/cases/ (make_cases.py, case `submissions`): every field quoted, and a BOM."""
    import csv

    quoted = tmp_path / "quoted.csv"
    with open(quoted, "w", newline="") as f:
        w = csv.writer(f, quoting=csv.QUOTE_ALL)
        w.writerow(["id", "is_iceberg"])
        w.writerows([[i, 0.5] for i in IDS])
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + quoted.read_text().replace('"', "").encode())
    return quoted, bom


def test_the_field_cases_quoted_and_bom_validate(tmp_path, sample):
    quoted, bom = _quoted_and_bom(tmp_path)
    assert quoted.read_bytes().startswith(b'"id","is_iceberg"\r\n"00000000","0.5"\r\n')
    assert validate_submission(quoted, sample) == len(IDS)
    assert validate_submission(bom, sample) == len(IDS)


def _r_write_csv(path: Path, row_names: bool) -> Path:
    """What R's write.csv(df, path[, row.names = FALSE]) writes: every field quoted except numbers, LF ends."""
    head = ['""'] if row_names else []
    lines = [",".join([*head, '"id"', '"is_iceberg"'])]
    for n, i in enumerate(IDS):
        lines.append(",".join([*([f'"{n + 1}"'] if row_names else []), f'"{i}"', f"{0.05 + 0.07 * n:.15g}"]))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    "form",
    ["pandas", "excel-csv-utf8", "crlf-no-final-newline", "columns-swapped", "scientific-and-spaces", "r-write-csv", "blank-lines", "quote-all-python"],
)
def test_what_spreadsheets_pandas_and_r_write_is_accepted(tmp_path, sample, form):
    probs = np.linspace(0.0001, 0.9999, len(IDS))
    path = tmp_path / f"{form}.csv"
    lines = ["id,is_iceberg", *(f"{i},{p:.6f}" for i, p in zip(IDS, probs, strict=True))]
    if form == "pandas":
        pd.DataFrame({"id": IDS, "is_iceberg": probs}).to_csv(path, index=False)
    elif form == "excel-csv-utf8":  # Excel "CSV UTF-8 (comma delimited)": BOM and CRLF
        path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")
    elif form == "crlf-no-final-newline":
        path.write_bytes("\r\n".join(lines).encode())
    elif form == "columns-swapped":  # Kaggle matches the columns by name
        pd.DataFrame({"is_iceberg": probs, "id": IDS}).to_csv(path, index=False)
    elif form == "scientific-and-spaces":
        path.write_text("id,is_iceberg\n" + f"{IDS[0]},1E-15\n" + "".join(f"{i}, {p:.3e} \n" for i, p in zip(IDS[1:], probs[1:], strict=True)))
    elif form == "r-write-csv":
        _r_write_csv(path, row_names=False)
    elif form == "blank-lines":
        path.write_text("\n".join(lines) + "\n\n\n")
    else:
        import csv

        pd.DataFrame({"id": IDS, "is_iceberg": probs}).to_csv(path, index=False, quoting=csv.QUOTE_ALL)
    assert validate_submission(path, sample) == len(IDS)


@pytest.mark.parametrize(
    ("form", "hint"),
    [
        ("r-row-names", r"line 1: the first column has no name .*R's row names; write it with row\.names = FALSE$"),
        ("pandas-index", r"line 1: the first column is a row index .*pandas' index; write it with index=False$"),
        ("pandas-index-resaved", r"line 1: the first column is a row index \(',Unnamed: 0,id,is_iceberg'\).*index=False$"),
        ("semicolons", r"line 1: columns separated by semicolons .*save it as CSV with commas"),
        ("tabs", r"line 1: columns separated by tabs .*save it as CSV with commas"),
        ("missing-column", r"line 1: the header must name the columns id,is_iceberg \(in either order\), got 'id': add column 'is_iceberg'$"),
        ("wrong-name", r"got 'id,prediction': remove column 'prediction'; add column 'is_iceberg'$"),
        ("column-twice", r"name column 'id' once"),
        ("decimal-commas", r"12 rows do not have the header's 2 fields: line 2 \(3 fields\).*decimal commas\? write 0\.5, not 0,5$"),
        ("quoted-decimal-commas", r"is_iceberg is not a number \(decimal commas: write 0\.5, not 0,5\): line 2"),
        ("utf16", r"UTF-16 text .*save it as 'CSV UTF-8 \(comma delimited\)'"),
        ("latin1", r"not UTF-8 text"),
        ("empty", r"empty file: expected the header 'id,is_iceberg'"),
        ("r-na", r"is_iceberg is empty or NaN: line 2 \(id '00000000'\)"),
        ("broken-quotes", r"line 3: not readable as CSV .*check the quotes"),
    ],
)
def test_what_kaggle_would_not_read_is_refused_with_what_to_change(tmp_path, sample, form, hint):
    path = tmp_path / f"{form}.csv"
    rows = [f"{i},0.5" for i in IDS]
    if form == "r-row-names":
        _r_write_csv(path, row_names=True)
    elif form == "pandas-index":
        pd.DataFrame({"id": IDS, "is_iceberg": 0.5}).to_csv(path)
    elif form == "pandas-index-resaved":  # read back without index_col, written again with the index
        pd.DataFrame({"id": IDS, "is_iceberg": 0.5}).to_csv(path)
        pd.read_csv(path).to_csv(path)
    elif form == "semicolons":  # European Excel: ';' between fields, ',' for decimals
        path.write_bytes(("id;is_iceberg\r\n" + "".join(f"{i};0,5\r\n" for i in IDS)).encode())
    elif form == "tabs":
        path.write_text("id\tis_iceberg\n" + "".join(f"{i}\t0.5\n" for i in IDS))
    elif form == "missing-column":
        path.write_text("id\n" + "".join(f"{i}\n" for i in IDS))
    elif form == "wrong-name":
        path.write_text("id,prediction\n" + "\n".join(rows) + "\n")
    elif form == "column-twice":
        path.write_text("id,is_iceberg,id\n" + "".join(f"{r},{i}\n" for r, i in zip(rows, IDS, strict=True)))
    elif form == "decimal-commas":
        path.write_text("id,is_iceberg\n" + "".join(f"{i},0,5\n" for i in IDS))
    elif form == "quoted-decimal-commas":
        path.write_text("id,is_iceberg\n" + "".join(f'{i},"0,5"\n' for i in IDS))
    elif form == "utf16":  # Excel's "Unicode Text"
        path.write_bytes(("id\tis_iceberg\n" + "".join(f"{i}\t0.5\n" for i in IDS)).encode("utf-16"))
    elif form == "latin1":
        path.write_bytes(("id,is_iceberg\n" + "\n".join(rows) + "\n").encode() + "caf\xe9,0.5\n".encode("latin-1"))
    elif form == "empty":
        path.write_text("")
    elif form == "r-na":
        path.write_text("id,is_iceberg\n" + f"{IDS[0]},NA\n" + "\n".join(rows[1:]) + "\n")
    else:
        path.write_text("id,is_iceberg\n" + rows[0] + "\n" + f'"{IDS[1]}"x,0.5\n' + "\n".join(rows[2:]) + "\n")
    with pytest.raises(SubmissionError, match=hint) as info:
        validate_submission(path, sample)
    assert str(info.value).startswith(f"{path}: ")


def test_the_writer_output_is_unchanged(tmp_path, sample):
    path = write_submission(tmp_path / "subs", np.array(IDS), np.full(len(IDS), 0.25), sample, "e", "m", 0.2, SIDECAR)
    assert path.read_bytes() == ("id,is_iceberg\n" + "".join(f"{i},0.25\n" for i in IDS)).encode()


def test_cli_validate_accepts_the_cases_and_names_the_fix_for_row_names(tmp_path, sample):
    quoted, bom = _quoted_and_bom(tmp_path)
    r_file = _r_write_csv(tmp_path / "r.csv", row_names=True)
    env = {**os.environ, "COLUMNS": "300"}
    cmd = [sys.executable, "-m", "competition", "validate"]
    for path in (quoted, bom):
        ok = subprocess.run([*cmd, str(path), f"data_dir={tmp_path}", f"work_dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, env=env)
        assert ok.returncode == 0 and "12 rows" in ok.stderr, ok.stderr
    ko = subprocess.run([*cmd, str(r_file), f"data_dir={tmp_path}", f"work_dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert ko.returncode == 2 and "Traceback" not in ko.stderr
    assert "write it with row.names = FALSE" in " ".join(ko.stderr.split())


def test_a_submission_for_other_test_data_says_so(tmp_path, sample):
    path = _write(tmp_path, ["id,is_iceberg", *(f"zz{n:06d},0.5" for n in range(12))])
    with pytest.raises(SubmissionError, match=r"none of its ids is a test id of the sample submission: it was made for other test data \(point data_dir="):
        validate_submission(path, sample)


def test_a_header_without_rows_and_a_compressed_file_are_refused_in_one_line(tmp_path: Path) -> None:
    """Found by a newcomer: a header-only file raised an AttributeError; a .csv.gz was 'not UTF-8'."""
    import gzip

    from competition.submission import read_table

    empty = tmp_path / "header_only.csv"
    empty.write_text("id,is_iceberg\n")
    with pytest.raises(SubmissionError, match=r"header_only\.csv: the header 'id,is_iceberg' and no rows: expected one row per test id"):
        read_table(empty, str(empty))
    packed = tmp_path / "good.csv.gz"
    packed.write_bytes(gzip.compress(b"id,is_iceberg\na,0.5\n"))
    with pytest.raises(SubmissionError, match=r"good\.csv\.gz: a gzip archive, not a CSV: unpack it"):
        read_table(packed, str(packed))
