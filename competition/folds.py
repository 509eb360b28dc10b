"""The fold manager: one split of the training ids that every model and the stacker share.

The folds file is the anchor of honest CV: every OOF table records its fingerprint, and the
stacker refuses tables made on different folds.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from competition import fingerprint
from competition.artefact import read_json
from competition.atomic import atomic_path, write_json
from competition.config import CompetitionConfig, FoldsConfig
from competition.data.dataset import Dataset
from competition.errors import DataError, FingerprintError, MissingArtefactError

MIN_INNER_MEMBERS = 2  # of each class in every outer training part: the blenders' and the stacker's inner split
CLASS_NAMES = {0: "ships", 1: "icebergs"}


def smallest_class(y: np.ndarray) -> int:
    """Members of the rarer class of `y` (0/1 labels; 0 when a class is absent): how many stratified folds an inner
    split of these rows can have (the stacker's inner folds, the policy race's)."""
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=2)
    return int(counts.min())


class FoldsMeta(BaseModel):
    """`<work_dir>/folds.json` (docs/architecture.md): written by `write_folds` after folds.csv, read by `load_folds`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    params: FoldsConfig
    fingerprint: str
    data_fingerprint: str
    csv_fingerprint: str
    n_ids: int


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


def members_needed(k: int) -> int:
    """Fewest members a class needs with k outer folds: one in every fold, and at least
    MIN_INNER_MEMBERS left in every outer training part (c - ceil(c / k) of them)."""
    c = k
    while c - math.ceil(c / k) < MIN_INNER_MEMBERS:
        c += 1
    return c


def _workable_k(counts: list[int], k: int, limit: int | None = None) -> int | None:
    """A folds.k other than `k` (at most `limit`) with which every class has the members it needs:
    the largest smaller one, else the smallest larger one (k=2 needs 4 members, k=3 only 3)."""
    top = min(counts) if limit is None else min(min(counts), limit)
    below = range(min(k - 1, top), 1, -1)
    above = range(k + 1, top + 1)
    return next((j for j in [*below, *above] if all(c >= members_needed(j) for c in counts)), None)


def _remedy(counts: list[int], k: int) -> str:
    """What to do: another folds.k that works, else more images of the short class."""
    better = _workable_k(counts, k)
    if better is not None:
        return f"use folds.k={better} (e.g. `competition folds folds.k={better}`)"
    best_k = min(range(2, 11), key=members_needed)
    short = CLASS_NAMES[int(np.argmin(counts))]
    return f"no folds.k works with so few: add labelled {short} (the flow needs at least {members_needed(best_k)} of each class, with folds.k={best_k})"


def check_learnable(data: Dataset, params: FoldsConfig, source: str = "train.json") -> None:
    """Refuse, with one line naming the problem and what to do, training data the flow cannot learn
    from: no images, one class only, a class with fewer members than folds or than nested CV needs
    (each outer training part must keep MIN_INNER_MEMBERS of each class for the inner splits), and
    with `group_by_angle` fewer distinct angles than folds."""
    if data.labels is None:
        raise DataError(f"{source}: no is_iceberg labels; folds need the labelled training data")
    n, k = len(data), params.k
    if n == 0:
        raise DataError(f"{source}: holds no training images; the flow needs labelled images of both classes (is_iceberg 0 and 1)")
    labels = np.asarray(data.labels, dtype=np.int64)
    counts = [int((labels == v).sum()) for v in (0, 1)]
    present = [v for v in (0, 1) if counts[v]]
    if len(present) == 1:
        v = present[0]
        who = "the only training image has" if n == 1 else f"every one of the {n} training images has"
        raise DataError(f"{source}: {who} is_iceberg {v}; the flow needs both classes: add labelled {CLASS_NAMES[1 - v]} (is_iceberg {1 - v})")
    v = int(np.argmin(counts))
    c = counts[v]
    if c < k:
        raise DataError(
            f"{source}: only {c} of the {n} training images {'has' if c == 1 else 'have'} is_iceberg {v} ({CLASS_NAMES[v]}), fewer than folds.k={k}: "
            f"every fold needs one of each class; {_remedy(counts, k)}"
        )
    left = c - math.ceil(c / k)
    if left < MIN_INNER_MEMBERS:
        raise DataError(
            f"{source}: the {c} training images with is_iceberg {v} ({CLASS_NAMES[v]}) leave only {left} in an outer training part "
            f"with folds.k={k}, and the blenders and the stacker need at least {MIN_INNER_MEMBERS} of each class there for their "
            f"inner split (with folds.k={k} each class needs at least {members_needed(k)}); {_remedy(counts, k)}"
        )
    if params.group_by_angle:
        groups = len(np.unique(angle_groups(data.angle)))
        if groups < k:
            better = _workable_k(counts, k, groups)
            fix = f"use folds.k={better} or folds.group_by_angle=false" if better is not None else "use folds.group_by_angle=false"
            raise DataError(
                f"{source}: the {n} training images have only {groups} distinct incidence angles (a missing angle counts as its own), "
                f"fewer than folds.k={k}, and folds.group_by_angle: true keeps each angle in one fold; {fix}"
            )


def check_assignment(labels: np.ndarray, fold: np.ndarray, params: FoldsConfig, repeat: int, source: str = "train.json") -> None:
    """Refuse a split (possible with `group_by_angle`, where whole scenes move together) that leaves a
    fold empty or an outer training part with fewer than MIN_INNER_MEMBERS of a class."""
    labels = np.asarray(labels, dtype=np.int64)
    grouping = " with folds.group_by_angle: true" if params.group_by_angle else ""
    fix = "use folds.group_by_angle=false" if params.k == 2 else "use a smaller folds.k"
    if params.group_by_angle and params.k > 2:
        fix += " or folds.group_by_angle=false"
    for f in range(params.k):
        if not (fold == f).any():
            raise DataError(f"{source}: folds.k={params.k}{grouping} leaves fold {f} of repeat {repeat} empty (too few distinct angles); {fix}")
        for v in (0, 1):
            left = int(((fold != f) & (labels == v)).sum())
            if left < MIN_INNER_MEMBERS:
                raise DataError(
                    f"{source}: folds.k={params.k}{grouping} leaves only {left} images with is_iceberg {v} ({CLASS_NAMES[v]}) outside "
                    f"fold {f} of repeat {repeat} (that class shares few angles), and the blenders and the stacker need at least "
                    f"{MIN_INNER_MEMBERS} of each class in an outer training part; {fix}"
                )


def assign_folds(data: Dataset, params: FoldsConfig, source: str = "train.json") -> pd.DataFrame:
    """Stratified (optionally angle-grouped) fold of every training id for every repeat; data the
    flow cannot learn from is refused first (`check_learnable`)."""
    check_learnable(data, params, source)
    assert data.labels is not None
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
        check_assignment(data.labels, fold, params, r, source)
        frames.append(pd.DataFrame({"id": data.ids, "repeat": r, "fold": fold}))
    return pd.concat(frames, ignore_index=True)


def folds_fingerprint(data: Dataset, params: FoldsConfig) -> str:
    """Hash of the ids, the labels and the split parameters (what fixes the split)."""
    return fingerprint.of_bytes(
        "\n".join(data.ids.tolist()).encode(),
        np.ascontiguousarray(data.labels, dtype=np.int8).tobytes(),
        fingerprint.of_json(params.model_dump()).encode(),
    )


def make_folds(data: Dataset, params: FoldsConfig, source: str = "train.json") -> Folds:
    """The folds of `data`; `source` names the training file in refusals (`check_learnable`)."""
    return Folds(assign_folds(data, params, source), params, folds_fingerprint(data, params), data.fingerprint)


def write_folds(data: Dataset, cfg: CompetitionConfig) -> Folds:
    """Write folds.csv and then folds.json (the json, written last, marks the pair complete);
    nothing is written for data the flow cannot learn from."""
    folds = make_folds(data, cfg.folds, Path(cfg.train_json).name)
    with atomic_path(cfg.folds_csv) as tmp:
        folds.table.to_csv(tmp, index=False)
    meta = FoldsMeta(params=cfg.folds, fingerprint=folds.fingerprint, data_fingerprint=folds.data_fingerprint,
                     csv_fingerprint=fingerprint.of_file(cfg.folds_csv), n_ids=len(data))  # fmt: skip
    write_json(cfg.folds_json, meta.model_dump(mode="json"))
    return folds


def load_folds(cfg: CompetitionConfig, data: Dataset | None = None) -> Folds:
    """Read the folds file; with `data`, refuse it if it was made from other training data, and refuse data the flow
    cannot learn from before saying that the file is missing (`make folds` would refuse that data too).

    Raises DataError (`check_learnable`) for such data, MissingArtefactError when the folds file is missing,
    FingerprintError when it was changed, made by another version or from other training data."""
    if not cfg.folds_json.is_file() or not cfg.folds_csv.is_file():
        if data is not None:
            check_learnable(data, cfg.folds, Path(cfg.train_json).name)
        raise MissingArtefactError(f"{cfg.folds_json} not found: run `make folds` first")
    meta = read_json(cfg.folds_json, FoldsMeta, "written by another version or edited; run `make folds` again", FingerprintError)
    if fingerprint.of_file(cfg.folds_csv) != meta.csv_fingerprint:
        raise FingerprintError(f"{cfg.folds_csv} was changed after {cfg.folds_json} was written: run `make folds` again")
    if data is not None and data.fingerprint != meta.data_fingerprint:
        raise FingerprintError(
            f"{cfg.folds_json} was made from training data {meta.data_fingerprint}, but {cfg.train_json} is now {data.fingerprint}: run `make folds` again"
        )
    if data is not None:
        check_learnable(data, meta.params, Path(cfg.train_json).name)  # a folds file written before this check existed
    table = pd.read_csv(cfg.folds_csv, dtype={"id": str, "repeat": np.int16, "fold": np.int16})
    return Folds(table, meta.params, meta.fingerprint, meta.data_fingerprint)


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
