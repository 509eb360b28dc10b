"""The official `kaggle` command, run as a subprocess, with its failures turned into UserErrors.

Using the real client (not a re-implementation of its HTTP calls) keeps the harness working
when Kaggle changes its API: upgrading the `kaggle` package is enough. The client reports
some failures only in its output with exit code 0 ("Kernel push error: ..."), so the output
is checked as well as the exit code.
"""

from __future__ import annotations

import collections
import io
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from competition.errors import UserError
from competition.kaggle.credentials import HOW_TO, CredentialsError, find_credentials, has_credentials, redact

# The interface the rest of the harness uses (competition/data/download.py needs nothing else of competition.kaggle).
__all__ = ["KaggleClientError", "has_credentials", "kaggle_command", "redact", "run_kaggle", "stream_kaggle"]

# Lines the client prints, exit code 0 or not, when an operation did not happen.
_FAILURE_MARKERS = ("Kernel push error", "Dataset creation error", "Dataset version creation error", "Could not submit")
_AUTH_MARKERS = ("Authentication required", "401 Client Error", "Unauthorized", "Invalid credentials")


class KaggleClientError(UserError):
    """The `kaggle` command failed (network, permissions, rejected request)."""


def kaggle_command() -> list[str]:
    """The `kaggle` executable of this environment (the venv's), else `python -m kaggle`."""
    beside = Path(sys.executable).with_name("kaggle")
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("kaggle")
    return [found] if found else [sys.executable, "-m", "kaggle"]


def _quiet_env() -> dict[str, str]:
    """The environment without the client's verbose switches (verbose mode prints the auth header)."""
    return {k: v for k, v in os.environ.items() if k not in ("VERBOSE", "VERBOSE_OUTPUT")}


def run_kaggle(args: Sequence[str], timeout_s: float = 1800) -> str:
    """Run `kaggle ARGS` and return its standard output; raise a UserError when it failed."""
    find_credentials()
    cmd = [*kaggle_command(), *args]
    shown = "kaggle " + " ".join(args)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=_quiet_env())
    except subprocess.TimeoutExpired:
        raise KaggleClientError(f"`{shown}` did not finish within {timeout_s:.0f} s (network down?)") from None
    out = redact(proc.stdout + proc.stderr).strip()
    if any(marker in out for marker in _AUTH_MARKERS):
        raise CredentialsError(f"Kaggle rejected the credentials during `{shown}`; {HOW_TO}")
    failed = proc.returncode != 0 or any(marker in out for marker in _FAILURE_MARKERS)
    if failed:
        tail = "\n".join(out.splitlines()[-8:]) or f"exit code {proc.returncode}"
        raise KaggleClientError(f"`{shown}` failed:\n{tail}")
    return redact(proc.stdout)


def stream_kaggle(args: Sequence[str], tail_bytes: int = 4000) -> tuple[int, str]:
    """Run `kaggle ARGS` with its output shown live on stderr (progress bars); return its exit code and
    the last `tail_bytes` of its output, credentials redacted. Starting the client failing is a UserError."""
    try:
        proc = subprocess.Popen([*kaggle_command(), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_quiet_env())
    except OSError as exc:
        raise UserError(f"could not start the Kaggle client ({exc}): run `make setup`") from None
    stdout = proc.stdout
    assert isinstance(stdout, io.BufferedReader)  # stdout=PIPE with the default bufsize: a buffered binary reader
    tail: collections.deque[bytes] = collections.deque()
    while chunk := stdout.read1(1 << 14):
        sys.stderr.buffer.write(chunk)
        sys.stderr.flush()
        tail.append(chunk)
        while sum(map(len, tail)) > tail_bytes and len(tail) > 1:
            tail.popleft()
    return proc.wait(), redact(b"".join(tail).decode("utf-8", "replace"))
