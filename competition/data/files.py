"""The competition's files as the user has them: the one resolver every step reads them through.

A data folder (`data_dir`) may hold each of `train.json`, `test.json` and `sample_submission.csv`
in any of the forms Kaggle and its users produce:

- the plain file (`make simulate`, `make data`, a user's own dataset);
- the `.7z` archive Kaggle ships (`train.json.7z`), with the file at any path inside it
  (Kaggle's hold `data/processed/train.json`);
- the zip the official client downloads (`kaggle competitions download` gives
  `<slug>.zip` holding the three `.7z` archives).

Archives are extracted once into `<work_dir>/cache/extracted/<content hash of the archive>/`,
never into the data folder, which may be read-only (a Kaggle kernel's `/kaggle/input`). Only the
top level of the data folder is searched. A plain file beside its `.7z` (`train.json` and
`train.json.7z`, e.g. after extracting by hand) is read only when the archive holds the same bytes
(content hashes, remembered like the archives'), with a one-line note saying so; when they differ
the read is refused, naming both: which one the user means cannot be guessed.

The simulator marks the folders it writes (`hidden/simulated.json`, with the fingerprint of
the test file it wrote), so that its hidden solution is used only for the test data it belongs
to, and so that it never writes over competition files that are not its own.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from competition import fingerprint
from competition.artefact import read_json
from competition.atomic import write_json
from competition.config import CompetitionConfig
from competition.console import console
from competition.data.cache import INDEX, Stamp, read_index, write_index
from competition.errors import DataError, MissingArtefactError

TRAIN, TEST, SAMPLE = "train.json", "test.json", "sample_submission.csv"
NAMES = (TRAIN, TEST, SAMPLE)
SIMULATED_MARKER = "simulated.json"  # in data_dir/hidden/, written by the simulator
DataKind = Literal["simulated", "real"]


@dataclass(frozen=True)
class Found:
    """Where one competition file is in a data folder: `path` itself, or `member` inside archive `path`."""

    name: str
    path: Path
    form: Literal["plain", "7z", "zip"]
    beside: Path | None = None  # a plain file's `.7z` in the same folder, read only to check it holds the same file

    def describe(self) -> str:
        return str(self.path) if self.form == "plain" else f"{self.path} ({self.name} inside)"


def locate(data_dir: Path) -> dict[str, Found]:
    """The competition files found at the top level of `data_dir`, by name (absent names left out)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        return {}
    found: dict[str, Found] = {}
    for name in NAMES:
        if (data_dir / name).is_file():
            archive = data_dir / f"{name}.7z"
            found[name] = Found(name, data_dir / name, "plain", archive if archive.is_file() else None)
        elif (data_dir / f"{name}.7z").is_file():
            found[name] = Found(name, data_dir / f"{name}.7z", "7z")
    missing = [name for name in NAMES if name not in found]
    for archive in sorted(data_dir.glob("*.zip")) if missing else []:
        for name in _zip_holds(archive, missing):
            found.setdefault(name, Found(name, archive, "zip"))
    return found


def _zip_holds(archive: Path, names: list[str]) -> list[str]:
    """Which of `names` a zip holds, plain or as `.7z`, at any path inside; an unreadable zip holds none."""
    try:
        with zipfile.ZipFile(archive) as z:
            members = {Path(m).name for m in z.namelist()}
    except (zipfile.BadZipFile, OSError):
        return []
    return [name for name in names if name in members or f"{name}.7z" in members]


def resolve(cfg: CompetitionConfig, name: str) -> Path:
    """A plain, readable path of competition file `name` (one of NAMES), extracting archives once.

    Raises MissingArtefactError when the data folder holds the file in no form, DataError when
    an archive is damaged or does not hold exactly one such file, or when a plain file and its
    `.7z` beside it hold different files.
    """
    found = locate(cfg.data_dir).get(name)
    if found is None:
        raise MissingArtefactError(missing_message(cfg, [name]))
    root = cfg.cache_dir / "extracted"
    if found.form != "plain":
        return _member(extracted(found.path, root), name, found.path)
    if found.beside is not None:
        _check_same(found.path, _member(extracted(found.beside, root), name, found.beside), found.beside, root)
    return found.path


def _check_same(plain: Path, member: Path, archive: Path, root: Path) -> None:
    """Refuse (DataError) a plain file whose `.7z` beside it holds another file; note once that the archive is a copy."""
    if content_hash(plain, root) != content_hash(member, root):
        raise DataError(
            f"{plain.parent}/: {plain.name} ({plain.stat().st_size:,} bytes) and {archive.name} (holding {member.stat().st_size:,} bytes) "
            "are different files and only one can be read: move away the one you do not mean (the harness never changes or deletes either)"
        )
    _note_copy(plain, archive)


@functools.cache
def _note_copy(plain: Path, archive: Path) -> None:
    console.print(f"[yellow]note[/]: reading {plain}; {archive.name} beside it holds the same file and is ignored", soft_wrap=True)


def sample_submission(cfg: CompetitionConfig) -> Path:
    """The sample submission of `cfg.data_dir` (plain or archived), the ids every submission must hold."""
    return resolve(cfg, SAMPLE)


def missing_message(cfg: CompetitionConfig, names: list[str]) -> str:
    """What is missing in the data folder, the forms that are accepted, and how to get the files."""
    where = cfg.data_dir
    there = sorted(p.name for p in where.iterdir())[:8] if where.is_dir() else []
    holds = f"it holds {', '.join(there)}" if there else "it is empty or does not exist"
    return (
        f"{where}/: no {', '.join(names)} ({holds}). Accepted: the plain files, Kaggle's .7z archives "
        f"(train.json.7z, ...) or the competition zip. Run `make data` for the real competition, "
        "`make simulate` for the simulated one, or point data_dir=... at your files"
    )


def _member(folder: Path, name: str, archive: Path) -> Path:
    """The one file called `name` under an extracted archive (nested archives extracted in turn)."""
    hits = sorted(folder.rglob(name))
    if not hits:
        packed = sorted(folder.rglob(f"{name}.7z"))
        if len(packed) == 1:
            return _member(extracted(packed[0], folder.parent), name, packed[0])
    if len(hits) != 1:
        where = ", ".join(str(h.relative_to(folder)) for h in hits) or "none"
        raise DataError(f"{archive}: expected exactly one {name} inside the archive, found {len(hits)} ({where}); download it again")
    return hits[0]


def extracted(archive: Path, root: Path) -> Path:
    """The folder under `root` holding `archive`'s extracted contents, keyed by the archive's content hash."""
    target = root / f"{archive.name}-{content_hash(archive, root)}"
    if target.is_dir():
        return target
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{archive.name}.", dir=root))
    try:
        extract(archive, work)
        os.replace(work, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def extract(archive: Path, dest: Path) -> None:
    """Extract a `.zip` or `.7z` archive into `dest`; a damaged archive is a DataError.

    `.7z` uses py7zr when it is installed and else the `7z` program (Kaggle's image has the
    program but not the package).
    """
    if archive.suffix == ".zip":
        try:
            with zipfile.ZipFile(archive) as z:
                z.extractall(dest)
        except (zipfile.BadZipFile, EOFError, OSError) as exc:
            raise DataError(f"{archive}: not a readable zip ({exc}); download it again") from None
        return
    try:
        import py7zr
    except ImportError:
        _extract_with_7z_program(archive, dest)
        return
    try:
        with py7zr.SevenZipFile(archive, mode="r") as z:
            z.extractall(path=dest)
    except (py7zr.exceptions.ArchiveError, py7zr.exceptions.PasswordRequired, EOFError, OSError) as exc:
        raise DataError(f"{archive}: not a readable 7z archive ({exc.__class__.__name__}: {exc}); download it again") from None


def _extract_with_7z_program(archive: Path, dest: Path) -> None:
    program = shutil.which("7z") or shutil.which("7za")
    if program is None:
        raise DataError(f"{archive}: reading .7z archives needs the py7zr package or the 7z program (apt-get install p7zip-full)")
    proc = subprocess.run([program, "x", "-y", f"-o{dest}", str(archive)], capture_output=True, text=True)
    if proc.returncode != 0:
        last = " | ".join(line for line in proc.stderr.splitlines() if line.strip())[-300:]
        raise DataError(f"{archive}: not a readable 7z archive (7z exit code {proc.returncode}: {last}); download it again")


def content_hash(path: Path, root: Path) -> str:
    """`fingerprint.of_file(path)`, remembered in `root/index.json` under the file's size and mtime (cache.Stamp)."""
    index_file = root / INDEX
    index = read_index(index_file)
    stat = os.stat(path)
    key = str(Path(path).resolve())
    known = index.get(key)
    if known is not None and known.matches(stat):
        return known.fingerprint
    digest = fingerprint.of_file(path)
    write_index(index_file, {**index, key: Stamp.of(stat, digest)})
    return digest


# -- simulated or real --------------------------------------------------------------------------


def marker_path(cfg: CompetitionConfig) -> Path:
    return cfg.data_dir / "hidden" / SIMULATED_MARKER


class SimulationMarker(BaseModel):
    """`data_dir/hidden/simulated.json` (docs/architecture.md), written by `mark_simulation`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    simulate: dict[str, Any]  # the simulator's parameters
    test_fingerprint: str | None  # of the test file it wrote; None while a simulation is being written


def read_marker(cfg: CompetitionConfig) -> SimulationMarker | None:
    """The simulator's marker of `cfg.data_dir`, or None when the simulator did not write this folder.

    Raises DataError (one line naming the file and what to do) when the marker is there but damaged:
    whether the folder's test data is simulated (and its hidden solution applies) cannot be told then.
    """
    path = marker_path(cfg)
    if not path.is_file():
        return None
    fix = f"the simulator's marker is damaged: if {cfg.data_dir}/ holds simulated data, delete the folder and simulate again; else delete {path}"
    return read_json(path, SimulationMarker, fix, DataError)


def simulated_solution(cfg: CompetitionConfig, test_fingerprint: str) -> Path | None:
    """The hidden solution of simulated data, only when it was written for the test data `test_fingerprint`."""
    marker = read_marker(cfg)
    if marker is None or marker.test_fingerprint != test_fingerprint or not cfg.solution_csv.is_file():
        return None
    return cfg.solution_csv


def data_kind(cfg: CompetitionConfig, test_fingerprint: str) -> DataKind:
    """`simulated` when the simulator wrote this test data (its hidden solution applies), else `real`."""
    return "simulated" if simulated_solution(cfg, test_fingerprint) is not None else "real"


def describe(cfg: CompetitionConfig, train_fingerprint: str, test_fingerprint: str) -> dict[str, str]:
    """What a run was made on, for the terminal, the report, submission sidecars and the ledger."""
    return {
        "kind": data_kind(cfg, test_fingerprint),
        "dir": str(Path(cfg.data_dir).resolve()),
        "train": train_fingerprint,
        "test": test_fingerprint,
    }


def check_simulation_target(cfg: CompetitionConfig) -> None:
    """Refuse to simulate into a folder holding competition files that the simulator did not write.

    Raises DataError naming the files and what to do.
    """
    found = locate(cfg.data_dir)
    if not found:
        return
    marker = read_marker(cfg)
    ours = marker is not None and (
        marker.test_fingerprint is None or (TEST in found and found[TEST].form == "plain" and fingerprint.of_file(found[TEST].path) == marker.test_fingerprint)
    )
    if not ours:
        files = ", ".join(sorted({f.path.name for f in found.values()}))
        raise DataError(
            f"{cfg.data_dir}/ holds competition files the simulator did not write ({files}): "
            "the simulator never writes over them; simulate into another folder (data_dir=...)"
        )


def mark_simulation(cfg: CompetitionConfig, params: dict[str, Any], test_fingerprint: str | None) -> None:
    """Write the simulator's marker (test_fingerprint None: a simulation is being written)."""
    write_json(marker_path(cfg), SimulationMarker(simulate=params, test_fingerprint=test_fingerprint).model_dump(mode="json"))
