"""The binary cache of parsed datasets (competition.data.cache, via load_train / load_test)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import py7zr
import pytest
from competition import fingerprint
from competition.config import CompetitionConfig
from competition.data.cache import DatasetCache
from competition.data.dataset import Dataset
from competition.data.loader import load_test, load_train, read_dataset
from competition.errors import DataError


class CountingReader:
    """The real reader, counting how often the cache had to parse a file."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, path: Path, split):
        self.calls += 1
        return read_dataset(path, split)


@pytest.fixture
def hash_calls(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Paths the cache hashed (the real hash function, recorded)."""
    calls: list[Path] = []
    real = fingerprint.of_file

    def recorded(path):
        calls.append(Path(path))
        return real(path)

    monkeypatch.setattr("competition.data.cache.fingerprint.of_file", recorded)
    return calls


def assert_same(a: Dataset, b: Dataset) -> None:
    assert a.ids.tolist() == b.ids.tolist() and a.fingerprint == b.fingerprint
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.angle, b.angle)
    np.testing.assert_array_equal(a.angle_decimals, b.angle_decimals)
    assert a.images.dtype == b.images.dtype == np.float32
    if a.labels is None or b.labels is None:
        assert a.labels is None and b.labels is None
    else:
        assert a.labels.tolist() == b.labels.tolist() and a.labels.dtype == b.labels.dtype == np.int8


def write(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records))
    return path


def test_second_load_comes_from_the_cache_without_rehashing(tmp_path: Path, make_records, hash_calls: list[Path]) -> None:
    source = write(tmp_path / "train.json", make_records(4))
    cache, reader = DatasetCache(tmp_path / "cache"), CountingReader()

    first = cache.load_or_read(source, "train", reader)
    hashes_after_first = len(hash_calls)
    second = cache.load_or_read(source, "train", reader)

    assert reader.calls == 1 and len(hash_calls) == hashes_after_first  # no parse, no hash: the stat matched
    assert_same(second, first)
    assert_same(second, read_dataset(source, "train"))


def test_touched_file_is_rehashed_but_not_parsed(tmp_path: Path, make_records, hash_calls: list[Path]) -> None:
    source = write(tmp_path / "train.json", make_records(3))
    cache, reader = DatasetCache(tmp_path / "cache"), CountingReader()
    cache.load_or_read(source, "train", reader)
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    hash_calls.clear()

    cache.load_or_read(source, "train", reader)
    assert reader.calls == 1 and hash_calls == [source]
    hash_calls.clear()
    cache.load_or_read(source, "train", reader)  # the new stat is remembered
    assert hash_calls == []


def test_changed_file_is_read_again_and_the_old_entry_dropped(tmp_path: Path, make_records) -> None:
    cfg = CompetitionConfig(data_dir=tmp_path)
    write(cfg.train_json, make_records(3, seed=1))
    old = load_train(cfg)
    write(cfg.train_json, make_records(5, seed=2))
    new = load_train(cfg)

    assert len(new) == 5 and new.fingerprint != old.fingerprint
    assert_same(new, read_dataset(cfg.train_json, "train"))
    assert [p.name for p in cfg.cache_dir.iterdir() if p.is_dir()] == [f"train-{new.fingerprint}"]


def test_cached_arrays_are_writable_copies(tmp_path: Path, make_records) -> None:
    """Images are mapped copy-on-write: changing them never changes the cache."""
    cfg = CompetitionConfig(data_dir=tmp_path)
    write(cfg.test_json, make_records(3, "test"))
    load_test(cfg)
    data = load_test(cfg)
    original = float(data.images[0, 0, 0, 0])
    data.images[0, 0, 0, 0] = 999.0
    assert float(load_test(cfg).images[0, 0, 0, 0]) == original
    assert load_test(cfg).labels is None


@pytest.mark.parametrize("damage", ["no meta", "truncated images", "other format"])
def test_damaged_entry_is_read_again(tmp_path: Path, make_records, damage: str) -> None:
    source = write(tmp_path / "train.json", make_records(3))
    cache, reader = DatasetCache(tmp_path / "cache"), CountingReader()
    entry = cache.save("train", read_dataset(source, "train"))
    if damage == "no meta":
        (entry / "meta.json").unlink()
    elif damage == "truncated images":
        images = entry / "images.npy"
        images.write_bytes(images.read_bytes()[:1000])
    else:
        meta = json.loads((entry / "meta.json").read_text())
        (entry / "meta.json").write_text(json.dumps({**meta, "format": -1}))

    data = cache.load_or_read(source, "train", reader)
    assert reader.calls == 1
    assert_same(data, read_dataset(source, "train"))
    assert cache.load("train", data.fingerprint) is not None  # repaired


def test_nothing_is_cached_from_a_bad_file(tmp_path: Path, make_records) -> None:
    cfg = CompetitionConfig(data_dir=tmp_path)
    records = make_records(3)
    records[2]["inc_angle"] = "unknown"
    write(cfg.train_json, records)
    with pytest.raises(DataError, match=r"record 2 .*field 'inc_angle'"):
        load_train(cfg)
    assert not cfg.cache_dir.exists() or not any(cfg.cache_dir.iterdir())


def test_loads_the_7z_when_the_json_is_absent(tmp_path: Path, make_records, hash_calls: list[Path]) -> None:
    cfg = CompetitionConfig(data_dir=tmp_path)
    plain = write(tmp_path / "plain" / "train.json", make_records(3))
    with py7zr.SevenZipFile(tmp_path / "train.json.7z", "w") as z:
        z.write(plain, "train.json")

    first = load_train(cfg)
    hash_calls.clear()
    second = load_train(cfg)
    assert hash_calls == []  # neither the archive nor its JSON hashed again
    assert first.fingerprint == fingerprint.of_file(plain)
    assert_same(second, read_dataset(plain, "train"))


@pytest.mark.parametrize(("damage", "said"), [("{not json", "not valid JSON"), ('{"x": {"size": 1}}', "field 'x.mtime_ns' missing")])
def test_a_damaged_index_is_rebuilt_with_a_note_naming_it(tmp_path: Path, make_records, capsys: pytest.CaptureFixture[str], damage: str, said: str) -> None:
    source = write(tmp_path / "train.json", make_records(3))
    cache, reader = DatasetCache(tmp_path / "cache"), CountingReader()
    first = cache.load_or_read(source, "train", reader)
    (tmp_path / "cache" / "index.json").write_text(damage)
    capsys.readouterr()

    again = cache.load_or_read(source, "train", reader)
    note = capsys.readouterr().err
    assert reader.calls == 1  # the entry is found again by the source's hash: nothing parsed
    assert_same(again, first)
    assert f"{tmp_path / 'cache' / 'index.json'}: {said}" in note and "rebuilt from its source" in note
    assert cache.known_fingerprint(source, source.stat()) == first.fingerprint  # the index is whole again


def test_an_entry_whose_meta_lists_an_unknown_array_is_read_again(tmp_path: Path, make_records, capsys: pytest.CaptureFixture[str]) -> None:
    source = write(tmp_path / "train.json", make_records(3))
    cache, reader = DatasetCache(tmp_path / "cache"), CountingReader()
    entry = cache.save("train", read_dataset(source, "train"))
    meta = json.loads((entry / "meta.json").read_text())
    (entry / "meta.json").write_text(json.dumps({**meta, "arrays": [*meta["arrays"], "pixels"]}))

    cache.load_or_read(source, "train", reader)
    assert reader.calls == 1
    assert "field 'arrays.5'" in capsys.readouterr().err
    assert cache.load("train", read_dataset(source, "train").fingerprint) is not None  # repaired
