"""One writer per folder: `fcntl.flock` on a lock file, refused at once with a line that names the holder.

Each step locks the folder it writes (`train`: its run folder, `stack`: runs/<exp>/stack and the
submission it writes, `report`: runs/<exp>/report, `folds`/`simulate`: the work folder of the
folds file). A second command that wants the same folder stops at once with `LockedError` (exit
2) naming the folder, the holder's pid and command line, and what to do. The kernel drops a
flock when its holder dies, however it dies (kill -9 included), so a lock is never left stuck;
the lock file stays behind (what it says about its last holder means nothing once unlocked) beside
a folder that exists: a holder that ends without the folder (a failed first run, its partial folder
removed) deletes the lock file while it still holds the lock, and a process that takes a lock
checks that the file it locked is still the one on disk (else it opens the path again), so a
process that opened the file just before it was deleted never holds a lock of a deleted file.

Locks are re-entrant within one process (a step that calls another step's function takes the
same lock again for free), and a child process may work under its parent's locks: the holder
names them in an environment variable its children inherit, and a child that finds a lock taken
proceeds only when the lock file names that same holder. (`make all` trains each model in a
child, which takes its run folder's lock itself; the parent holds none of it.)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shlex
import sys
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from competition.errors import UserError

LOCK_SUFFIX = ".lock"


class LockedError(UserError):
    """Another process is writing the folder this command wants to write."""


ENV = "COMPETITION_HELD_LOCKS"  # JSON {lock file: pid} of the locks held by this process and its ancestors
_held: dict[Path, int] = {}  # lock file -> descriptor, the locks this process holds
_guard = threading.Lock()


def lock_file(folder: Path) -> Path:
    """runs/<exp>/.stack.lock for runs/<exp>/stack: beside the folder, since the folder itself is replaced whole."""
    folder = Path(folder)
    return folder.parent / f".{folder.name}{LOCK_SUFFIX}"


def _holder(path: Path) -> str:
    """What the lock file says about its holder ('pid 123 (`competition stack`) since 04:31:10')."""
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        text = ""
    return text or "another process (it has not written its pid yet)"


def _describe_self() -> str:
    program = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path("python")
    name = program.parent.name if program.name == "__main__.py" else program.name  # `python -m competition`: competition
    command = shlex.join([name, *sys.argv[1:]])
    return f"pid {os.getpid()} (`{command}`) since {datetime.now():%Y-%m-%d %H:%M:%S}"


UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS}  # file systems without flock (some network mounts)
_said: set[str] = set()


def _say_unlocked(path: Path, exc: OSError) -> None:
    """Work on where locking is impossible, saying so once per file system."""
    if str(path.parent) not in _said:
        _said.add(str(path.parent))
        from competition.console import console

        console.print(f"[yellow]note:[/] {path.parent} cannot be locked ({exc.strerror}): two commands writing it at once would not be stopped")


def _inherited() -> dict[str, int]:
    """Locks held by the processes this one descends from (lock file -> holder pid), from the environment."""
    try:
        found = json.loads(os.environ.get(ENV, "{}"))
    except ValueError:
        return {}
    return {str(k): int(v) for k, v in found.items()} if isinstance(found, dict) else {}


def _publish(key: Path, add: bool) -> None:
    """Name this process's locks in the environment its children inherit."""
    held = _inherited()
    if add:
        held[str(key)] = os.getpid()
    elif held.get(str(key)) == os.getpid():
        del held[str(key)]
    if held:
        os.environ[ENV] = json.dumps(held)
    else:
        os.environ.pop(ENV, None)


def _held_by_ancestor(key: Path, path: Path) -> bool:
    """The lock is held by the process that started this one (or its parent...), as the environment and the lock file both say."""
    pid = _inherited().get(str(key))
    return pid is not None and pid != os.getpid() and _holder(path).startswith(f"pid {pid} ")


@contextlib.contextmanager
def hold(folder: Path, what: str | None = None, *, lock_path: Path | None = None) -> Iterator[Path]:
    """Hold the lock of `folder` for the block, or raise LockedError at once if another process holds it.

    `what` names the folder in the message (default: its path); `lock_path` puts the lock file
    elsewhere than beside the folder (inside a folder that is never replaced, e.g. the data folder).
    Re-entrant in one process; a child process (e.g. `train_isolated`'s) proceeds under a lock
    its parent process holds.
    """
    folder = Path(folder)
    path = Path(lock_path) if lock_path is not None else lock_file(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = path.resolve()
    with _guard:
        reentered = key in _held
    if reentered:
        yield folder
        return
    fd, unsupported = _take(path)
    if fd is None:
        if unsupported:
            yield folder
            return
        if not _held_by_ancestor(key, path):
            raise LockedError(
                f"{what or folder} is being written by {_holder(path)}: wait for it to finish or stop it "
                f"(kill its pid), then run this command again (lock file {path})"
            )
        yield folder
        return
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (_describe_self() + "\n").encode(), 0)
        with _guard:
            _held[key] = fd
            _publish(key, add=True)
        try:
            yield folder
        finally:
            with _guard:
                _held.pop(key, None)
                _publish(key, add=False)
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            if not folder.exists():  # nothing left to guard (a failed first run): no lock file either, deleted while still locked
                with contextlib.suppress(OSError):
                    path.unlink()
    finally:
        os.close(fd)  # closing the only descriptor releases the flock


def _take(path: Path) -> tuple[int | None, bool]:
    """Lock `path` (created if missing) without waiting: (its descriptor, False) when taken; (None, False)
    when another process holds it; (None, True) when its file system cannot lock (said once).

    A holder deletes the file when it ends without its folder (see `hold`), so a descriptor opened
    just before that deletion may lock a file no longer on disk: taken only when the locked file is
    still the one at `path`, else the path is opened again."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in UNSUPPORTED:
                _say_unlocked(path, exc)
                return None, True
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            return None, False
        if _same_file(fd, path):
            return fd, False
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    """Whether the open descriptor `fd` is the file at `path` now (not one deleted or replaced since)."""
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def is_locked(folder: Path, *, lock_path: Path | None = None) -> bool:
    """Whether another process holds the lock of `folder` now (this process's own locks count as free)."""
    path = Path(lock_path) if lock_path is not None else lock_file(Path(folder))
    if not path.is_file() or path.resolve() in _held:
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:  # its holder ended without its folder and deleted it
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


# -- the folders each step writes ----------------------------------------------------------
def run_lock(run_dir: Path) -> contextlib.AbstractContextManager[Path]:
    """`train`: runs/<exp>/<run>."""
    return hold(run_dir, f"run folder {run_dir}")


def stack_lock(stack_dir: Path) -> contextlib.AbstractContextManager[Path]:
    """`stack`: runs/<exp>/stack and the submission it writes."""
    return hold(stack_dir, f"stack folder {stack_dir} (and the submission it writes)")


def report_lock(report_dir: Path) -> contextlib.AbstractContextManager[Path]:
    """`report`: runs/<exp>/report."""
    return hold(report_dir, f"report folder {report_dir}")


def folds_lock(folds_json: Path) -> contextlib.AbstractContextManager[Path]:
    """`folds`, `simulate`: the work folder holding the folds file (lock file inside it: that folder is never replaced)."""
    work = Path(folds_json).parent
    return hold(work, f"work folder {work} (folds)", lock_path=work / f".folds{LOCK_SUFFIX}")
