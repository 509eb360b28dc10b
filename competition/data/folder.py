"""The folder the competition's files are written into (`data_dir`) by `simulate` and by `data` (the download):
refused in one line naming `data_dir`, before anything is written (no lock, no marker, no download), when the
step could not write it."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from competition.config import CompetitionConfig, apply_overrides, read_yaml
from competition.errors import DataError

WRITERS = {
    "simulate": "the simulator writes the competition there; simulate into a writable folder (data_dir=...)",
    "data": "the download installs the competition there; download into a writable folder (data_dir=...)",
}  # per step that writes data_dir: why it must be writable, and the way out


def check_writable(data_dir: Path, step: str) -> None:
    """Refuse (DataError naming `data_dir`) a folder that `step` (a key of WRITERS) could not write.

    An existing `data_dir` must be a folder it may write (os.access, which also sees a read-only mount
    as root does); a missing one must be creatable: its nearest existing parent a writable folder.
    """
    existing = next(p for p in (data_dir, *data_dir.parents) if p.exists())  # a relative path ends in '.', which exists
    where = "" if existing == data_dir else f" cannot be created: {existing}"
    if not existing.is_dir():
        raise DataError(f"data_dir {data_dir}{where} is a file, not a folder: {WRITERS[step]}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DataError(f"data_dir {data_dir}{where} is not writable: {WRITERS[step]}")


def check_configured_data_dir(overrides: Sequence[str], config: Path, step: str) -> None:
    """`check_writable` on the `data_dir` that `config` with `overrides` names, before the config is validated.

    The config's own rule for a null `work_dir` refuses a read-only `data_dir` naming `work_dir`, which cannot
    help a simulation or a download: they write `data_dir` itself. A `data_dir` that is not a path is left to the validation.
    """
    value = apply_overrides(read_yaml(Path(config)), overrides).get("data_dir", CompetitionConfig.model_fields["data_dir"].default)
    if isinstance(value, str | os.PathLike):
        check_writable(Path(value), step)
