"""Atomic writes: a killed process leaves the old file (or folder) or the new one, never half of one."""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any


def _file_mode() -> int:
    """The mode a plain `open(path, "w")` would give under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.

    Libraries that insist on writing to a path themselves (numpy, pandas, matplotlib, sqlite
    backups) write to the yielded path. The temporary keeps the target's suffix so that
    writers which choose a format by extension still do the right thing.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{target.suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600 files; artefacts get the usual umask-based mode
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Atomically replace `path` with `data`."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Atomically replace `path` with UTF-8 `text`."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Atomically write `obj` as indented, key-sorted JSON (stable bytes for the same content)."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


# -- folders replaced whole ------------------------------------------------------------------
STAGING = ".staging"  # beside the target: .staging/new/<name> is built, .staging/old/<name> is the one it replaces


def staging_path(target: str | os.PathLike[str]) -> Path:
    """Where the next version of `target` is built: <parent>/.staging/new/<name> (same file system, same name)."""
    target = Path(target)
    return target.parent / STAGING / "new" / target.name


def _old_path(target: Path) -> Path:
    return target.parent / STAGING / "old" / target.name


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def recover_folder(target: str | os.PathLike[str]) -> None:
    """Finish a swap that a killed process left between its two renames (target moved aside, new one not yet in).

    The old folder is moved aside only once the new one is complete, so the new one goes in;
    without it, the old one comes back. Leftovers of a finished swap are removed.
    """
    target = Path(target)
    old = _old_path(target)
    if not old.exists():
        return
    if not target.exists():
        new = staging_path(target)
        os.rename(new if new.is_dir() else old, target)
    if old.exists():
        _remove(old)


def _swap(new: Path, target: Path) -> None:
    old = _old_path(target)
    if old.exists():
        _remove(old)
    if target.exists():
        old.parent.mkdir(parents=True, exist_ok=True)
        os.rename(target, old)
    os.rename(new, target)
    with contextlib.suppress(OSError):  # make the renames durable
        fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    if old.exists():
        _remove(old)  # the empty .staging/{new,old} folders stay: removing them could race another folder's swap


def _link_or_copy(source: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
    try:
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)


@contextlib.contextmanager
def replaced_folder(
    target: str | os.PathLike[str], *, carry: Sequence[str] = (), link: Sequence[str] = (), keep_on_failure: Sequence[str] = ()
) -> Iterator[Path]:
    """Yield a staging folder to build the next `target` in; it replaces `target` whole when the block succeeds.

    A block that raises (or a killed process) leaves `target` exactly as it was. The caller must
    hold the folder's lock (competition.locks): the staging folder has a fixed name.
    `carry`: files copied from `target` into the staging folder before the block (state the new
    version continues, e.g. an Optuna study), unless a failed attempt kept a newer one there.
    `link`: files or folders of `target` that the new version keeps unchanged, hard-linked into
    the staging folder (copied where links are impossible); they must never be modified in place.
    `keep_on_failure`: glob patterns of staging files that survive a failure for the next attempt
    (an interrupted search resumes from them); everything else of a failed attempt is removed.
    """
    target = Path(target)
    recover_folder(target)
    new = staging_path(target)
    if new.is_dir():
        for child in new.iterdir():  # a failed or killed attempt's files
            if not any(fnmatch.fnmatch(child.name, pattern) for pattern in keep_on_failure):
                _remove(child)
    elif new.exists():
        _remove(new)
    new.mkdir(parents=True, exist_ok=True)
    for name in carry:
        if (target / name).is_file() and not (new / name).exists():
            shutil.copy2(target / name, new / name)
    for name in link:
        source = target / name
        if source.is_dir():
            shutil.copytree(source, new / name, copy_function=_link_or_copy)
        elif source.is_file():
            _link_or_copy(source, new / name)
    try:
        yield new
    except BaseException:
        kept = [c for c in new.iterdir() if any(fnmatch.fnmatch(c.name, p) for p in keep_on_failure)] if new.is_dir() else []
        if kept:
            for child in new.iterdir():
                if child not in kept:
                    _remove(child)
        else:
            shutil.rmtree(new, ignore_errors=True)
        raise
    _swap(new, target)
