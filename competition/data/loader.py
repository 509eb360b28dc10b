"""Read the competition's train.json / test.json (or the .7z files Kaggle ships) into a Dataset.

Every record is validated; the first bad one stops the read with a DataError naming the record
(index and id) and the field, so nothing downstream, the cache included, ever sees a bad file.

Speed and memory: a streaming scanner cuts the file into records and orjson parses one record
at a time, so memory stays near the size of the arrays (the real test.json is 1.5 GB of text
whose Python objects would need about 10 GB) and no Python loop touches single pixels. A file
the scanner does not recognise is handed whole to orjson, which either parses it or says where
it is broken.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson

from competition import fingerprint
from competition.config import CompetitionConfig
from competition.console import progress
from competition.data import files
from competition.data.cache import DatasetCache
from competition.data.dataset import BANDS, IMAGE_SIZE, Dataset, Split
from competition.errors import DataError, MissingArtefactError, as_json, record_error

PIXELS = IMAGE_SIZE * IMAGE_SIZE
ANGLE = "inc_angle"
LABEL = "is_iceberg"
_CHUNK = 1 << 24
_WHITESPACE = b" \t\n\r"
_PROGRESS_FROM_BYTES = 1 << 25  # only files this big are slow enough to deserve a progress bar
_MIB = 1 << 20


class _Irregular(Exception):
    """The scanner met a layout it does not handle; `record` is where (None: before any record)."""

    def __init__(self, record: int | None) -> None:
        super().__init__(record)
        self.record = record


def read_dataset(path: Path, split: Split) -> Dataset:
    """Read and validate a competition JSON file, or a .7z archive holding one (uncached)."""
    path = Path(path)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    if not path.is_file():
        raise MissingArtefactError(f"{path} not found")
    if path.suffix == ".7z":
        with tempfile.TemporaryDirectory(prefix="competition-7z-") as tmp:
            member = _json_member(path, Path(tmp))
            return _read_json(member, split, f"{path}:{member.name}")
    return _read_json(path, split, str(path))


def load_train(cfg: CompetitionConfig) -> Dataset:
    """The training set of `cfg.data_dir` (plain or archived), from the binary cache when unchanged."""
    return _load(cfg, "train")


def load_test(cfg: CompetitionConfig) -> Dataset:
    """The test set of `cfg.data_dir` (plain or archived), from the binary cache when unchanged."""
    return _load(cfg, "test")


def load_competition(cfg: CompetitionConfig) -> tuple[Dataset, Dataset]:
    """Train and test of `cfg.data_dir`, checked against each other and the sample submission.

    Raises DataError, before any work, when the folder mixes files that do not belong together:
    test ids that the sample submission does not list (or the reverse), or ids in both train and test.
    """
    from competition.submission import sample_ids

    train, test = load_train(cfg), load_test(cfg)
    check_consistent(train, test, sample_ids(files.sample_submission(cfg)), cfg.data_dir)
    return train, test


def check_consistent(train: Dataset, test: Dataset, sample: np.ndarray, where: Path) -> None:
    """Refuse a data folder whose train, test and sample submission contradict each other (DataError)."""
    test_ids, sample_set = set(test.ids.tolist()), set(sample.tolist())
    unlisted, unknown = sorted(test_ids - sample_set), sorted(sample_set - test_ids)
    if unlisted or unknown:
        raise DataError(
            f"{where}: the sample submission and test.json disagree ({len(unknown)} listed ids not in test.json, e.g. "
            f"{', '.join(as_json(i) for i in unknown[:3]) or '-'}; {len(unlisted)} test ids not listed, e.g. "
            f"{', '.join(as_json(i) for i in unlisted[:3]) or '-'}): the files come from different downloads; put the three files of one download together"
        )
    both = sorted(test_ids.intersection(train.ids.tolist()))
    if both:
        raise DataError(
            f"{where}: {len(both)} ids are in both train.json and test.json (e.g. {', '.join(as_json(i) for i in both[:3])}): "
            "test images must be unseen; check that train and test were not mixed up"
        )


def _load(cfg: CompetitionConfig, split: Split) -> Dataset:
    """The split's file as competition.data.files resolves it, through the cache (see cache.py)."""
    return DatasetCache(cfg.cache_dir).load_or_read(files.resolve(cfg, f"{split}.json"), split, read_dataset)


def _json_member(archive: Path, dest: Path) -> Path:
    """Extract the archive and return its one JSON file."""
    files.extract(archive, dest)
    members = sorted(dest.rglob("*.json"))
    if len(members) != 1:
        raise DataError(f"{archive}: expected exactly one .json file in the archive, found {len(members)}")
    return members[0]


def _read_json(path: Path, split: Split, source: str) -> Dataset:
    """Parse and validate one JSON file; `source` is the name errors use."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        if not fh.read(_CHUNK).strip(_WHITESPACE):
            raise DataError(f"{source}: the file is empty (expected a JSON list of records): download or simulate it again")
    builder = _Builder(source, split)
    try:
        with open(path, "rb") as fh, _Progress(path.name, size) as bar:
            for index, raw in enumerate(_Scanner(fh, source).records()):
                builder.add(index, _parse_record(raw, index))
                bar.update(fh.tell())
    except _Irregular as irregular:
        builder = _Builder(source, split)
        records = _parse_whole(path, source, irregular.record)
        if not isinstance(records, list):
            raise DataError(f"{source}: expected a JSON list of records at the top level, got {_kind(records)}") from None
        for index, record in enumerate(records):
            builder.add(index, record)
    return builder.build(fingerprint.of_file(path))


def _parse_record(raw: bytes, index: int) -> Any:
    """One record's JSON; Python's parser is the fallback for the NaN/Infinity orjson refuses."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(raw)
    except ValueError:
        raise _Irregular(index) from None


def _parse_whole(path: Path, source: str, near_record: int | None) -> Any:
    """Parse the whole file at once (unusual layouts); syntax errors say where."""
    data = path.read_bytes()
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        where = f" in record {near_record}" if near_record is not None else ""
        if exc.msg.startswith("unexpected end of data") or exc.pos >= len(data.rstrip(_WHITESPACE)):
            raise DataError(f"{source}: the file is truncated (the JSON ends early{where}): download or simulate it again") from None
        raise DataError(f"{source}: not valid JSON (line {exc.lineno}, column {exc.colno}{where}): {exc.msg}") from None


class _Scanner:
    """Cut a top-level JSON list of flat objects into the bytes of each object.

    A record ends at its first '}' (records hold no nested objects). If a '}' sits inside a
    string, the cut record does not parse, and the caller falls back to a whole-file parse;
    a cut that does parse is exactly the record.
    """

    def __init__(self, fh: IO[bytes], source: str) -> None:
        self.fh, self.source = fh, source
        self.buf, self.pos, self.eof = b"", 0, False

    def records(self) -> Iterator[bytes]:
        if self._next() != b"[":
            raise _Irregular(None)
        char, index = self._next(), 0
        while char != b"]":
            if char == b"":
                self._truncated(index)
            if char != b"{":
                raise _Irregular(index)
            yield self._record(index)
            char = self._next()
            if char == b",":
                char, index = self._next(), index + 1
                if char == b"]":
                    raise _Irregular(index)
            elif char not in (b"]", b""):
                raise _Irregular(index)
        if self._next() != b"":
            raise _Irregular(None)

    def _record(self, index: int) -> bytes:
        start, searched = self.pos - 1, self.pos
        while (end := self.buf.find(b"}", searched)) < 0:
            searched = len(self.buf) - start
            start = self._more(keep_from=start)
            if start < 0:
                self._truncated(index)
            searched += start
        self.pos = end + 1
        return self.buf[start : end + 1]

    def _next(self) -> bytes:
        """The next non-whitespace byte, or b"" at the end of the file."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in _WHITESPACE:
                self.pos += 1
            if self.pos < len(self.buf):
                self.pos += 1
                return self.buf[self.pos - 1 : self.pos]
            if self._more(keep_from=self.pos) < 0:
                return b""

    def _more(self, keep_from: int) -> int:
        """Read another chunk, dropping bytes before `keep_from`; return its new offset (-1 at EOF)."""
        chunk = b"" if self.eof else self.fh.read(_CHUNK)
        if not chunk:
            self.eof = True
            return -1
        self.buf = self.buf[keep_from:] + chunk
        self.pos -= keep_from
        return 0

    def _truncated(self, index: int) -> None:
        raise DataError(f"{self.source}: the file is truncated (it ends inside record {index}): download or simulate it again")


class _Builder:
    """Validate records one by one and collect their arrays."""

    def __init__(self, source: str, split: Split) -> None:
        self.source, self.split = source, split
        self.ids: list[str] = []
        self.first_index: dict[str, int] = {}
        self.images: list[np.ndarray] = []
        self.angles: list[float] = []
        self.decimals: list[int] = []
        self.labels: list[int] = []

    def add(self, index: int, record: Any) -> None:
        if not isinstance(record, dict):
            raise record_error(self.source, index, None, "(record)", f"expected an object with id, band_1, band_2, inc_angle, got {_kind(record)}")
        rid = self._id(index, record)
        image = np.empty((IMAGE_SIZE, IMAGE_SIZE, len(BANDS)), dtype=np.float32)
        for channel, field in enumerate(BANDS):
            image[..., channel] = self._band(index, rid, field, self._field(index, rid, record, field))
        angle, decimals = self._angle(index, rid, self._field(index, rid, record, ANGLE))
        if self.split == "train":
            self.labels.append(self._label(index, rid, self._field(index, rid, record, LABEL)))
        self.ids.append(rid)
        self.images.append(image)
        self.angles.append(angle)
        self.decimals.append(decimals)

    def build(self, source_fingerprint: str) -> Dataset:
        if not self.ids:
            raise DataError(f"{self.source}: the file holds no records (an empty list)")
        return Dataset(
            ids=np.array(self.ids, dtype=str),
            images=np.stack(self.images),
            angle=np.array(self.angles, dtype=np.float64),
            angle_decimals=np.array(self.decimals, dtype=np.int8),
            labels=np.array(self.labels, dtype=np.int8) if self.split == "train" else None,
            fingerprint=source_fingerprint,
        )

    def _error(self, index: int, rid: object, field: str, problem: str) -> DataError:
        return record_error(self.source, index, rid, field, problem)

    def _field(self, index: int, rid: str, record: dict[str, Any], field: str) -> Any:
        if field not in record:
            raise self._error(index, rid, field, "missing")
        return record[field]

    def _id(self, index: int, record: dict[str, Any]) -> str:
        if "id" not in record:
            raise self._error(index, None, "id", "missing")
        rid = record["id"]
        if not isinstance(rid, str) or not rid.strip():
            raise self._error(index, None, "id", f"expected a non-empty string, got {as_json(rid)}")
        if rid in self.first_index:
            raise self._error(index, rid, "id", f"duplicate id: record {self.first_index[rid]} has the same id")
        self.first_index[rid] = index
        return rid

    def _band(self, index: int, rid: str, field: str, values: Any) -> np.ndarray:
        if not isinstance(values, list):
            raise self._error(index, rid, field, f"expected a list of {PIXELS} numbers (75 x 75 dB values), got {_kind(values)}")
        if len(values) != PIXELS:
            raise self._error(index, rid, field, f"expected {PIXELS} values (75 x 75), got {len(values)}")
        if not set(map(type, values)) <= {float, int}:
            k = next(k for k, v in enumerate(values) if type(v) not in (float, int))
            raise self._error(index, rid, field, f"value {k} is {_kind(values[k])} ({as_json(values[k])}), expected a number")
        with np.errstate(over="ignore"):  # a value beyond float32 becomes inf, refused just below
            band = np.array(values, dtype=np.float32)
        finite = np.isfinite(band)
        if not finite.all():
            k = int(np.argmin(finite))
            raise self._error(index, rid, field, f"value {k} is {as_json(values[k])}, expected a finite number (within float32 range)")
        return band.reshape(IMAGE_SIZE, IMAGE_SIZE)

    def _angle(self, index: int, rid: str, value: Any) -> tuple[float, int]:
        """Degrees and their decimals; "na" (Kaggle) and null (pandas' NaN written back) are a missing angle."""
        if value == "na" or value is None:
            return math.nan, 0
        if type(value) not in (float, int) or not 0.0 < value < 90.0:
            raise self._error(index, rid, ANGLE, f'expected a number of degrees between 0 and 90, "na" or null, got {as_json(value)}')
        return float(value), angle_decimals(value)

    def _label(self, index: int, rid: str, value: Any) -> int:
        """0 or 1; JSON has one number type, so 0.0 and 1.0 (pandas writes labels back as floats) are 0 and 1."""
        if type(value) not in (int, float) or value not in (0, 1):
            raise self._error(index, rid, LABEL, f"expected 0 (ship) or 1 (iceberg), got {as_json(value)}")
        return int(value)


def angle_decimals(value: float | int) -> int:
    """Decimals of an angle as written in the JSON (at most 127).

    orjson hands over a float, not the text; its repr is the shortest string that reads back as
    the same float, which is the text as written (less trailing zeros) for up to 15 significant
    digits, and still long for the 16-17 digit angles of machine-generated test rows.
    """
    if isinstance(value, int):
        return 0
    exponent = Decimal(repr(value)).normalize().as_tuple().exponent
    assert isinstance(exponent, int), value
    return min(127, max(0, -exponent))


def _kind(value: Any) -> str:
    """The JSON name of a value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    names: dict[type, str] = {str: "a string", list: "a list", dict: "an object"}
    return names.get(type(value), type(value).__name__)


class _Progress:
    """A byte-count progress bar, shown only for files large enough to take seconds."""

    def __init__(self, name: str, size: int) -> None:
        self.bar = progress() if size >= _PROGRESS_FROM_BYTES else None
        self.name, self.size = name, size

    def __enter__(self) -> _Progress:
        if self.bar is not None:
            self.bar.start()
            self.task = self.bar.add_task(f"reading {self.name} (MiB)", total=self.size // _MIB)
        return self

    def update(self, position: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=position // _MIB)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
