"""The binary cache of parsed datasets: after the first read, loading test.json takes milliseconds.

Layout under `cfg.cache_dir` (default `data/cache/`):

    <split>-<fingerprint>/  ids.npy images.npy angle.npy angle_decimals.npy [labels.npy] meta.json
    index.json              {source path: {size, mtime_ns, fingerprint}}

An entry is keyed by the content hash of its source file (the Dataset's fingerprint), so a
changed file is never served stale arrays. Hashing the 1.5 GB test.json takes seconds, so
`index.json` remembers each source's hash under its (path, size, mtime_ns) and the file is
re-hashed only when that stat changes: a touched but unchanged file costs one re-hash and then
hits the same entry. An edit that keeps both the size and the nanosecond mtime goes unnoticed,
the same trade make and rsync make; delete the cache folder to force a re-read.

Each array is written atomically and `meta.json` last, so an entry without it is incomplete
and ignored; an unreadable entry is read again from the source. `meta.json` and `index.json` are
read through competition.artefact.read_json as `EntryMeta` and `StampIndex`; a damaged one is
derived data, so it is rebuilt (with a one-line note naming the file), never refused. When a source gets a new
fingerprint, the entry of the old one is deleted unless another source still uses it, so the
cache holds one entry per data file. Images are memory-mapped copy-on-write: loading reads no
pixels, callers may modify their arrays, and the files on disk never change.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeVar, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, RootModel

from competition import fingerprint
from competition.artefact import read_json
from competition.atomic import atomic_path, write_json
from competition.console import console
from competition.data.dataset import Dataset, Split
from competition.errors import DataError

FORMAT = 1
INDEX = "index.json"
META = "meta.json"
ArrayName = Literal["ids", "images", "angle", "angle_decimals", "labels"]
ARRAYS: tuple[ArrayName, ...] = get_args(ArrayName)
M = TypeVar("M", bound=BaseModel)


class EntryMeta(BaseModel):
    """An entry's `meta.json`, written after its arrays: an entry whose meta.json reads as this model is complete."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: int  # FORMAT of the harness that wrote it; another one is read again from the source
    split: Split
    fingerprint: str  # the Dataset's (the content hash of its JSON)
    n: int = Field(ge=0)  # images
    arrays: list[ArrayName]  # the .npy files stored (labels only for train)


class Stamp(BaseModel):
    """A source file's fingerprint remembered under its size and nanosecond mtime (see the module's docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: int
    mtime_ns: int
    fingerprint: str

    @classmethod
    def of(cls, stat: os.stat_result, data_fingerprint: str) -> Stamp:
        return cls(size=stat.st_size, mtime_ns=stat.st_mtime_ns, fingerprint=data_fingerprint)

    def matches(self, stat: os.stat_result) -> bool:
        """Whether the file still has the size and mtime it had when its fingerprint was taken."""
        return (self.size, self.mtime_ns) == _stat_key(stat)


class StampIndex(RootModel[dict[str, Stamp]]):
    """An `index.json`: each source file's Stamp by its resolved path."""


def read_cached(path: Path, model: type[M]) -> M | None:
    """The cache file `path` as `model` (competition.artefact.read_json), or None when it is missing or damaged.

    A cache holds derived data: a damaged file is computed again, never refused; it is named in a one-line note.
    """
    if not path.is_file():
        return None
    try:
        return read_json(path, model, "rebuilt from its source (a cache)", DataError)
    except (OSError, DataError) as exc:
        console.print(f"[yellow]note[/]: {exc}", soft_wrap=True)
        return None


def read_index(path: Path) -> dict[str, Stamp]:
    """The Stamps of an `index.json` (empty when missing or damaged)."""
    index = read_cached(path, StampIndex)
    return {} if index is None else dict(index.root)


def write_index(path: Path, index: dict[str, Stamp]) -> None:
    write_json(path, StampIndex(index).model_dump(mode="json"))


class DatasetCache:
    """Datasets stored as .npy files under `root`, keyed by source content hash."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def load_or_read(self, source: Path, split: Split, read: Callable[[Path, Split], Dataset]) -> Dataset:
        """The cached Dataset of `source`, or `read(source, split)` stored for next time.

        `read` raises on a bad file before anything is stored, so nothing is cached from it.
        """
        stat = os.stat(source)
        known = self.known_fingerprint(source, stat)
        if known is None and source.suffix == ".json":
            known = fingerprint.of_file(source)
        cached = self.load(split, known) if known is not None else None
        if cached is not None:
            self.remember(source, stat, cached.fingerprint)
            return cached
        data = read(source, split)
        self.save(split, data)
        if _stat_key(os.stat(source)) == _stat_key(stat):  # unchanged while it was read
            self.remember(source, stat, data.fingerprint)
        return data

    def entry(self, split: Split, data_fingerprint: str) -> Path:
        return self.root / f"{split}-{data_fingerprint}"

    def load(self, split: Split, data_fingerprint: str) -> Dataset | None:
        """The stored Dataset, or None when absent, incomplete, of another format or unreadable."""
        entry = self.entry(split, data_fingerprint)
        meta = read_cached(entry / META, EntryMeta)
        if meta is None or meta.format != FORMAT or meta.fingerprint != data_fingerprint or meta.split != split:
            return None
        try:
            arrays = {name: _load_array(entry / f"{name}.npy") for name in meta.arrays}
            return Dataset(labels=arrays.pop("labels", None), fingerprint=data_fingerprint, **arrays)
        except (OSError, ValueError, TypeError, AssertionError):
            return None

    def save(self, split: Split, data: Dataset) -> Path:
        """Write the arrays, then meta.json (which marks the entry complete)."""
        entry = self.entry(split, data.fingerprint)
        stored: list[ArrayName] = [name for name in ARRAYS if getattr(data, name) is not None]
        for name in stored:
            with atomic_path(entry / f"{name}.npy") as tmp:
                np.save(tmp, getattr(data, name), allow_pickle=False)
        meta = EntryMeta(format=FORMAT, split=split, fingerprint=data.fingerprint, n=len(data), arrays=stored)
        write_json(entry / META, meta.model_dump(mode="json"))
        return entry

    def known_fingerprint(self, source: Path, stat: os.stat_result) -> str | None:
        """The fingerprint remembered for `source` if its size and mtime are unchanged."""
        found = read_index(self.root / INDEX).get(_index_key(source))
        return found.fingerprint if found is not None and found.matches(stat) else None

    def remember(self, source: Path, stat: os.stat_result, data_fingerprint: str) -> None:
        """Record `source`'s fingerprint under its stat; drop the entry it no longer uses."""
        index = read_index(self.root / INDEX)
        key = _index_key(source)
        new = Stamp.of(stat, data_fingerprint)
        if index.get(key) == new:
            return
        previous = index.get(key)
        old = previous.fingerprint if previous is not None else None
        index[key] = new
        write_index(self.root / INDEX, index)
        if old and old != data_fingerprint and all(v.fingerprint != old for v in index.values()):
            for split in ("train", "test"):
                shutil.rmtree(self.entry(split, old), ignore_errors=True)


def _load_array(path: Path) -> np.ndarray:
    """Images are mapped copy-on-write (no read until used); small arrays are read whole."""
    if path.name == "images.npy":
        return np.asarray(np.load(path, mmap_mode="c", allow_pickle=False))
    return np.load(path, allow_pickle=False)


def _index_key(source: Path) -> str:
    return str(Path(source).resolve())


def _stat_key(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_size, stat.st_mtime_ns
