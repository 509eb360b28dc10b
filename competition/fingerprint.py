"""Fingerprints: short content hashes that tie every artefact to what produced it."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

_CHUNK = 1 << 20
LENGTH = 16


def of_bytes(*parts: bytes) -> str:
    """Hash byte strings (length-prefixed, so ("ab", "c") != ("a", "bc"))."""
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()[:LENGTH]


def of_json(obj: Any) -> str:
    """Hash a JSON-able object independent of key order."""
    return of_bytes(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode())


def of_array(arr: np.ndarray) -> str:
    """Hash an array's dtype, shape and contents."""
    a = np.ascontiguousarray(arr)
    return of_bytes(str(a.dtype).encode(), repr(a.shape).encode(), a.tobytes())


def of_file(path: str | os.PathLike[str]) -> str:
    """Hash a file's bytes in chunks (works for the 200 MB competition JSON)."""
    h = hashlib.sha256()
    with open(Path(path), "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()[:LENGTH]
