"""The fold manager: one split of the training ids that every model and the stacker share.

The folds file is the anchor of honest CV: every OOF table records its fingerprint, and the
stacker refuses tables made on different folds.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from competition import fingerprint
from competition.atomic import atomic_path, write_json
from competition.config import CompetitionConfig, FoldsConfig
from competition.data.dataset import Dataset
from competition.errors import FingerprintError, MissingArtefactError


@dataclass(frozen=True)
class Folds:
    """table: one row per (id, repeat) with the fold that holds the id out in that repeat."""

    table: pd.DataFrame
    params: FoldsConfig
    fingerprint: str
    data_fingerprint: str

    def describe(self) -> str:
        return f"{self.params.k} folds x {self.params.repeats} repeats, fingerprint {self.fingerprint}"

    def units(self) -> Iterator[tuple[int, int]]:
        """Every (repeat, fold) pair, in a fixed order."""
        for r in range(self.params.repeats):
            for f in range(self.params.k):
                yield r, f

    def assignment(self, ids: np.ndarray, repeat: int) -> np.ndarray:
        """Fold of each id in `ids` for `repeat`; unknown ids are an error (data and folds disagree)."""
        rows = self.table[self.table["repeat"] == repeat].set_index("id")["fold"]
        missing = pd.Index(ids).difference(rows.index)
        if len(missing):
            raise FingerprintError(f"folds file has no fold for {len(missing)} training ids (e.g. {missing[0]!r}): run `make folds` again")
        return rows.loc[ids].to_numpy()

    def check(self, found: str, artefact: str) -> None:
        """Refuse an artefact whose recorded folds fingerprint is not this one."""
        if found != self.fingerprint:
            raise FingerprintError(
                f"{artefact} was made with folds {found}, but the current folds file has {self.fingerprint}: "
                "its out-of-fold predictions would leak or misalign; retrain it on the current folds"
            )


def angle_groups(angle: np.ndarray) -> np.ndarray:
    """Group id per exact angle value (one radar scene); each missing angle is its own group."""
    keys = np.where(np.isnan(angle), np.arange(len(angle)) + 1e6, angle)
    return np.unique(keys, return_inverse=True)[1]


def assign_folds(data: Dataset, params: FoldsConfig) -> pd.DataFrame:
    """Stratified (optionally angle-grouped) fold of every training id for every repeat."""
    if data.labels is None:
        raise ValueError("folds need a labelled (training) dataset")
    frames = []
    for r in range(params.repeats):
        fold = np.empty(len(data), dtype=np.int16)
        seed = params.seed + r
        if params.group_by_angle:
            splitter = StratifiedGroupKFold(n_splits=params.k, shuffle=True, random_state=seed)
            splits = splitter.split(data.images[:, 0, 0, 0], data.labels, groups=angle_groups(data.angle))
        else:
            splitter = StratifiedKFold(n_splits=params.k, shuffle=True, random_state=seed)
            splits = splitter.split(data.images[:, 0, 0, 0], data.labels)
        for f, (_, held_out) in enumerate(splits):
            fold[held_out] = f
        frames.append(pd.DataFrame({"id": data.ids, "repeat": r, "fold": fold}))
    return pd.concat(frames, ignore_index=True)


def folds_fingerprint(data: Dataset, params: FoldsConfig) -> str:
    """Hash of the ids, the labels and the split parameters (what fixes the split)."""
    return fingerprint.of_bytes(
        "\n".join(data.ids.tolist()).encode(),
        np.ascontiguousarray(data.labels, dtype=np.int8).tobytes(),
        fingerprint.of_json(params.model_dump()).encode(),
    )


def make_folds(data: Dataset, params: FoldsConfig) -> Folds:
    return Folds(assign_folds(data, params), params, folds_fingerprint(data, params), data.fingerprint)


def write_folds(data: Dataset, cfg: CompetitionConfig) -> Folds:
    """Write folds.csv and then folds.json (the json, written last, marks the pair complete)."""
    folds = make_folds(data, cfg.folds)
    with atomic_path(cfg.folds_csv) as tmp:
        folds.table.to_csv(tmp, index=False)
    write_json(
        cfg.folds_json,
        {
            "params": cfg.folds.model_dump(),
            "fingerprint": folds.fingerprint,
            "data_fingerprint": folds.data_fingerprint,
            "csv_fingerprint": fingerprint.of_file(cfg.folds_csv),
            "n_ids": len(data),
        },
    )
    return folds


def load_folds(cfg: CompetitionConfig, data: Dataset | None = None) -> Folds:
    """Read the folds file; with `data`, refuse it if it was made from other training data."""
    if not cfg.folds_json.is_file() or not cfg.folds_csv.is_file():
        raise MissingArtefactError(f"{cfg.folds_json} not found: run `make folds` first")
    meta = json.loads(Path(cfg.folds_json).read_text())
    if fingerprint.of_file(cfg.folds_csv) != meta["csv_fingerprint"]:
        raise FingerprintError(f"{cfg.folds_csv} was changed after {cfg.folds_json} was written: run `make folds` again")
    if data is not None and data.fingerprint != meta["data_fingerprint"]:
        raise FingerprintError(
            f"{cfg.folds_json} was made from training data {meta['data_fingerprint']}, "
            f"but {cfg.train_json} is now {data.fingerprint}: run `make folds` again"
        )
    table = pd.read_csv(cfg.folds_csv, dtype={"id": str, "repeat": np.int16, "fold": np.int16})
    return Folds(table, FoldsConfig(**meta["params"]), meta["fingerprint"], meta["data_fingerprint"])


def ensure_folds(data: Dataset, cfg: CompetitionConfig) -> tuple[Folds, bool]:
    """The current folds file when it matches this data and these parameters, else a new one.

    Returns (folds, written). Rewriting only when something changed keeps finished runs valid
    across repeated `make all` calls.
    """
    try:
        folds = load_folds(cfg, data)
    except (MissingArtefactError, FingerprintError):
        return write_folds(data, cfg), True
    if folds.params != cfg.folds or folds.fingerprint != folds_fingerprint(data, cfg.folds):
        return write_folds(data, cfg), True
    return folds, False
