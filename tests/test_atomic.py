"""Atomic writes: a failure inside the block leaves the old file untouched and no temporary behind."""

from __future__ import annotations

import json

import pytest
from competition import fingerprint
from competition.atomic import atomic_path, write_json, write_text


def test_failed_write_keeps_old_content_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.csv"
    write_text(target, "old\n")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]


def test_temporary_keeps_suffix_for_writers_that_choose_format_by_extension(tmp_path):
    with atomic_path(tmp_path / "plot.png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path
        tmp.write_bytes(b"x")
    assert (tmp_path / "plot.png").read_bytes() == b"x"


def test_write_json_is_stable_for_equal_content(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    write_json(a, {"b": 1, "a": [1, 2]})
    write_json(b, {"a": [1, 2], "b": 1})
    assert a.read_bytes() == b.read_bytes()
    assert json.loads(a.read_text()) == {"a": [1, 2], "b": 1}


def test_fingerprints_separate_parts_and_follow_content(tmp_path):
    assert fingerprint.of_bytes(b"ab", b"c") != fingerprint.of_bytes(b"a", b"bc")
    assert fingerprint.of_json({"x": 1, "y": 2}) == fingerprint.of_json({"y": 2, "x": 1})
    path = tmp_path / "f"
    path.write_bytes(b"hello")
    first = fingerprint.of_file(path)
    path.write_bytes(b"hellO")
    assert fingerprint.of_file(path) != first


def test_written_files_get_the_usual_mode_not_mkstemps_0600(tmp_path):
    import os

    path = write_text(tmp_path / "x.txt", "x")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
