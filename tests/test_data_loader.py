"""Reading and validating the competition JSON (competition.data.loader)."""

from __future__ import annotations

import copy
import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import py7zr
import pytest
from competition import fingerprint
from competition.config import CompetitionConfig
from competition.data.loader import angle_decimals, load_test, load_train, read_dataset
from competition.errors import DataError, MissingArtefactError

REPO = Path(__file__).resolve().parents[1]
METADATA = REPO.parent / "shared" / "data" / "statoil" / "metadata.csv"


def write(path: Path, records: Any) -> Path:
    """Write as Kaggle's files are written (Python's json, ', ' separators; NaN allowed)."""
    path.write_text(json.dumps(records))
    return path


def test_reads_records_into_arrays(tmp_path: Path, make_records) -> None:
    records = make_records(5)
    data = read_dataset(write(tmp_path / "train.json", records), "train")

    assert data.ids.tolist() == [r["id"] for r in records] and data.ids.dtype.kind == "U"
    assert data.images.shape == (5, 75, 75, 2) and data.images.dtype == np.float32
    # row-major 75 x 75, HH then HV
    np.testing.assert_array_equal(data.images[2, 3, 4], np.float32([records[2]["band_1"][3 * 75 + 4], records[2]["band_2"][3 * 75 + 4]]))
    np.testing.assert_array_equal(data.images[4, ..., 1].ravel(), np.float32(records[4]["band_2"]))
    assert np.isnan(data.angle[1]) and data.angle_missing.tolist() == [False, True, False, False, False]
    assert data.angle[0] == records[0]["inc_angle"] and data.angle.dtype == np.float64
    assert data.labels is not None and data.labels.dtype == np.int8
    assert data.labels.tolist() == [r["is_iceberg"] for r in records]
    assert data.fingerprint == fingerprint.of_file(tmp_path / "train.json")


def test_test_split_has_no_labels(tmp_path: Path, make_records) -> None:
    data = read_dataset(write(tmp_path / "test.json", make_records(3, "test")), "test")
    assert data.labels is None and len(data) == 3


@pytest.mark.parametrize("layout", ["compact", "indented", "odd"])
def test_layouts_read_the_same(tmp_path: Path, make_records, layout: str) -> None:
    """Compact, pretty-printed and unusual (a '}' inside a string, a nested object) files agree."""
    records = make_records(4)
    expected = read_dataset(write(tmp_path / "plain.json", records), "train")
    if layout == "compact":
        raw = orjson.dumps(records)
    elif layout == "indented":
        raw = json.dumps(records, indent=2).encode()
    else:
        odd = copy.deepcopy(records)
        odd[0]["note"] = "a } and a { inside a string"
        odd[2]["extra"] = {"nested": [1, 2]}
        raw = b"\n\t[ " + json.dumps(odd).encode() + b" ]\r\n"
        raw = raw.replace(b"[ [", b"[").replace(b"] ]", b"]")
    path = tmp_path / f"{layout}.json"
    path.write_bytes(raw)
    got = read_dataset(path, "train")
    np.testing.assert_array_equal(got.images, expected.images)
    np.testing.assert_array_equal(got.angle, expected.angle)
    assert got.ids.tolist() == expected.ids.tolist() and got.labels.tolist() == expected.labels.tolist()


@pytest.mark.parametrize(
    ("text", "decimals"),
    [("43.9239", 4), ("39.0", 0), ("40", 0), ("42.5", 1), ("34.47215562", 8), ("30.311230908293968", 15), ("36.10000", 1), ("1e-05", 5)],
)
def test_angle_decimals_as_written(text: str, decimals: int) -> None:
    assert angle_decimals(orjson.loads(text)) == decimals


def test_angle_decimals_from_the_file(tmp_path: Path, make_records) -> None:
    records = make_records(3, "test")
    raw = json.dumps(records)
    for rec, literal in zip(records, ["45.2877", "30.311230908293968", "33.6352"], strict=True):
        raw = raw.replace(f'"inc_angle": {rec["inc_angle"]!r}', f'"inc_angle": {literal}')
    path = tmp_path / "test.json"
    path.write_text(raw)
    data = read_dataset(path, "test")
    assert data.angle_decimals.tolist() == [4, 15, 4] and data.angle_decimals.dtype == np.int8
    assert data.machine_generated.tolist() == [False, True, False]


@pytest.mark.skipif(not METADATA.is_file(), reason="needs the team's shared real metadata")
def test_machine_generated_rule_on_real_angles() -> None:
    """Every real angle as published: decimals from the parsed float match the community rule."""
    with open(METADATA) as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "test"]
    assert len(rows) == 8424
    for row in rows:
        text = row["inc_angle"]
        written = len(text.partition(".")[2].rstrip("0"))
        got = angle_decimals(orjson.loads(text))
        assert (got > 4) == (row["machine_generated_guess"] == "1"), text
        if len(text.replace(".", "").lstrip("0")) <= 15:
            assert got == written, text


def _set(field: str, value: Any):
    def mutate(records: list[dict[str, Any]]) -> None:
        records[2][field] = value

    return mutate


def _drop(field: str):
    def mutate(records: list[dict[str, Any]]) -> None:
        del records[2][field]

    return mutate


def _pixel(field: str, k: int, value: Any):
    def mutate(records: list[dict[str, Any]]) -> None:
        records[2][field][k] = value

    return mutate


def _short_band(records: list[dict[str, Any]]) -> None:
    records[2]["band_1"] = records[2]["band_1"][:-1]


def _duplicate(records: list[dict[str, Any]]) -> None:
    records[2]["id"] = records[0]["id"]


def _not_object(records: list[dict[str, Any]]) -> None:
    records[2] = [1, 2, 3]


REC = 'record 2 (id "tr000002")'
RECORD_CASES = {
    "missing band": (_drop("band_2"), [REC, "field 'band_2'", "missing"]),
    "missing angle": (_drop("inc_angle"), [REC, "field 'inc_angle'", "missing"]),
    "missing label": (_drop("is_iceberg"), [REC, "field 'is_iceberg'", "missing"]),
    "missing id": (_drop("id"), ["record 2 (no id)", "field 'id'", "missing"]),
    "id not a string": (_set("id", 17), ["record 2 (no id)", "field 'id'", "non-empty string"]),
    "band too short": (_short_band, [REC, "field 'band_1'", "expected 5625 values", "got 5624"]),
    "band not a list": (_set("band_1", "abc"), [REC, "field 'band_1'", "got a string"]),
    "string pixel": (_pixel("band_1", 7, "abc"), [REC, "field 'band_1'", "value 7 is a string"]),
    "null pixel": (_pixel("band_2", 3, None), [REC, "field 'band_2'", "value 3 is null"]),
    "boolean pixel": (_pixel("band_1", 0, True), [REC, "field 'band_1'", "value 0 is a boolean"]),
    "NaN pixel": (_pixel("band_1", 5, float("nan")), [REC, "field 'band_1'", "value 5 is NaN", "finite"]),
    "Infinity pixel": (_pixel("band_2", 9, float("-inf")), [REC, "field 'band_2'", "value 9 is -Infinity", "finite"]),
    "pixel beyond float32": (_pixel("band_1", 11, 1e300), [REC, "field 'band_1'", "value 11", "float32"]),
    "angle a word": (_set("inc_angle", "abc"), [REC, "field 'inc_angle'", '"abc"', '"na"', "null"]),
    "angle a numeric string": (_set("inc_angle", "43.1"), [REC, "field 'inc_angle'", '"43.1"']),
    "angle boolean": (_set("inc_angle", True), [REC, "field 'inc_angle'", "got true"]),
    "angle out of range": (_set("inc_angle", -4.5), [REC, "field 'inc_angle'", "between 0 and 90"]),
    "angle NaN": (_set("inc_angle", float("nan")), [REC, "field 'inc_angle'", "got NaN"]),
    "label 2": (_set("is_iceberg", 2), [REC, "field 'is_iceberg'", "got 2"]),
    "label string": (_set("is_iceberg", "1"), [REC, "field 'is_iceberg'", 'got "1"']),
    "label float": (_set("is_iceberg", 0.5), [REC, "field 'is_iceberg'", "got 0.5"]),
    "label boolean": (_set("is_iceberg", True), [REC, "field 'is_iceberg'", "got true"]),
    "duplicate id": (_duplicate, ['record 2 (id "tr000000")', "field 'id'", "duplicate", "record 0"]),
    "record not an object": (_not_object, ["record 2 (no id)", "field '(record)'", "got a list"]),
}


@pytest.mark.parametrize("case", RECORD_CASES)
def test_bad_record_names_record_and_field(tmp_path: Path, make_records, case: str) -> None:
    mutate, expected = RECORD_CASES[case]
    records = make_records(4)
    mutate(records)
    path = write(tmp_path / "train.json", records)
    with pytest.raises(DataError) as err:
        read_dataset(path, "train")
    message = str(err.value)
    assert message.startswith(str(path)), message
    for part in expected:
        assert part in message, (part, message)


def test_test_split_needs_no_label_but_checks_the_rest(tmp_path: Path, make_records) -> None:
    records = make_records(3, "test")
    records[1]["band_2"] = records[1]["band_2"][:100]
    with pytest.raises(DataError, match=r"record 1 \(id \"te000001\"\), field 'band_2': expected 5625 values"):
        read_dataset(write(tmp_path / "test.json", records), "test")


FILE_CASES = {
    "empty": (lambda raw: b"", "the file is empty"),
    "only whitespace": (lambda raw: b" \n\t ", "the file is empty"),
    "not JSON": (lambda raw: b"id,band_1\nabc,1\n", "not valid JSON (line 1, column 1)"),
    "truncated in a record": (lambda raw: raw[: len(raw) // 2], "truncated (it ends inside record 1)"),
    "truncated before the end": (lambda raw: raw[:-1], "truncated"),
    "truncated after '['": (lambda raw: b"[", "truncated"),
    "broken inside a record": (lambda raw: raw.replace(b'"band_2"', b'"band_2" :: ', 1), "not valid JSON (line 1, column"),
    "trailing comma": (lambda raw: raw[:-1] + b", ]", "not valid JSON"),
    "garbage after the list": (lambda raw: raw + b" [", "not valid JSON"),
    "top level an object": (lambda raw: b'{"records": ' + raw + b"}", "expected a JSON list of records at the top level, got an object"),
    "top level a number": (lambda raw: b"42", "expected a JSON list of records at the top level, got a number"),
    "no records": (lambda raw: b"[ ]", "holds no records"),
}


@pytest.mark.parametrize("case", FILE_CASES)
def test_bad_file_is_refused(tmp_path: Path, make_records, case: str) -> None:
    broken, expected = FILE_CASES[case]
    path = tmp_path / "train.json"
    path.write_bytes(broken(json.dumps(make_records(3)).encode()))
    with pytest.raises(DataError) as err:
        read_dataset(path, "train")
    assert expected in str(err.value) and str(path) in str(err.value), str(err.value)


def test_reads_the_7z_kaggle_ships(tmp_path: Path, make_records) -> None:
    json_path = write(tmp_path / "train.json", make_records(3))
    archive = tmp_path / "train.json.7z"
    with py7zr.SevenZipFile(archive, "w") as z:
        z.write(json_path, "train.json")
    from_json, from_7z = read_dataset(json_path, "train"), read_dataset(archive, "train")
    np.testing.assert_array_equal(from_7z.images, from_json.images)
    assert from_7z.fingerprint == from_json.fingerprint  # the data's hash, whatever the container


def test_bad_record_inside_7z_names_the_archive(tmp_path: Path, make_records) -> None:
    records = make_records(3)
    records[1]["is_iceberg"] = 3
    json_path = write(tmp_path / "x.json", records)
    archive = tmp_path / "train.json.7z"
    with py7zr.SevenZipFile(archive, "w") as z:
        z.write(json_path, "train.json")
    with pytest.raises(DataError, match=r"train\.json\.7z:train\.json: record 1 .*field 'is_iceberg'"):
        read_dataset(archive, "train")


def test_damaged_7z_is_a_data_error(tmp_path: Path) -> None:
    archive = tmp_path / "train.json.7z"
    archive.write_bytes(b"7z\xbc\xaf\x27\x1c" + os.urandom(200))
    with pytest.raises(DataError, match="not a readable 7z archive"):
        read_dataset(archive, "train")


def test_missing_file_says_how_to_get_it(tmp_path: Path) -> None:
    cfg = CompetitionConfig(data_dir=tmp_path)
    for load in (load_train, load_test):
        with pytest.raises(MissingArtefactError, match=r"make data.*make simulate"):
            load(cfg)


def _run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "400"}
    return subprocess.run([sys.executable, "-m", "competition", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_cli_reports_a_bad_file_without_traceback(tmp_path: Path, make_records) -> None:
    records = make_records(4)
    records[1]["band_1"][12] = "x"
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    write(data_dir / "train.json", records)
    config = tmp_path / "competition.yaml"
    config.write_text(f"data_dir: {data_dir}\n")

    result = _run_cli(tmp_path, "folds", "-c", str(config))

    assert result.returncode == 2, result.stderr
    assert "record 1 (id \"tr000001\"), field 'band_1': value 12 is a string" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (data_dir / "cache").exists() or not any((data_dir / "cache").glob("train-*"))
    assert not (data_dir / "folds.csv").exists()
