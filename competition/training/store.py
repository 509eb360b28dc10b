"""The prediction store: per-unit files while training, then one run folder the stacker trusts.

Layout of `runs/<experiment>/<model>/` (formats in docs/architecture.md):

- `units/<r{repeat}_f{fold}_s{seed}>.npz`: held-out ids and predictions, test predictions;
- `units/<unit>.model/`: the unit's saved model (profile `save_models`), written from the files the
  unit returned (a worker never writes into the run folder: no shared filesystem is needed);
- `units/<unit>.json`: written last, marks the unit finished; holds its score, curve, timings and
  the fingerprints it was made with (a rerun refuses a unit whose fingerprints differ);
- `oof.csv`, `test.csv`, then `meta.json` last: meta records the two tables' file hashes, so a
  reader can tell a complete run from a half-written or edited one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from competition import fingerprint
from competition.artefact import read_json
from competition.atomic import atomic_path, write_json
from competition.errors import FingerprintError, MissingArtefactError
from competition.metrics import logloss

OOF_FILE, TEST_FILE, META_FILE, UNITS_DIR = "oof.csv", "test.csv", "meta.json", "units"
OOF_COLUMNS = ["id", "repeat", "fold", "prediction"]


class DataFingerprints(BaseModel):
    """The content hashes of the training and test data an artefact was made from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    train: str
    test: str


class FoldScore(BaseModel):
    """One unit's held-out score in `meta.json`'s `fold_scores` (the trainer adds `best_epoch`)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    repeat: int
    fold: int
    seed: int
    logloss: float


class Timings(BaseModel):
    """`meta.json`'s `timings`: seconds per unit and phase (`fit_s`, `cache_s`, ...), the run's wall time."""

    model_config = ConfigDict(extra="allow", frozen=True)

    units: dict[str, dict[str, float]] = Field(default_factory=dict)
    wall_s_this_run: float | None = None


class RunMeta(BaseModel):
    """A run's `meta.json` (docs/architecture.md): the typed owner every reader goes through (`load_run`).

    Required fields are what the stacker and the report rely on; a folder written before one of them
    existed is refused with one line saying to retrain it. Keys the trainer records for people
    (policy numbers, the profile chosen, ...) are kept as they are (`extra="allow"`).
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    model: str
    config: dict[str, Any]
    config_hash: str
    folds_fingerprint: str
    data_fingerprint: DataFingerprints
    weight_source: str
    policy: str
    policy_reason: str
    versions: dict[str, Any]
    timings: Timings
    fold_scores: list[FoldScore]
    cv_logloss: float
    curves: dict[str, dict[str, list[float]]]
    units: list[str]
    oof_fingerprint: str
    test_fingerprint: str
    # recorded by today's trainer; optional so that folders the stacker accepted before still read
    run_name: str | None = None
    policy_requested: str | None = None
    augment: str | None = None
    tta: list[str] | None = None
    prefix_cache: str | None = None
    trained_this_run: list[str] | None = None


REQUIRED_META = tuple(name for name, f in RunMeta.model_fields.items() if f.is_required())


def retrain_hint(run_dir: Path, meta: object = None) -> str:
    """What to do about a run folder whose meta.json (`meta`, as parsed) cannot be read: train it again from scratch."""
    model = meta.get("model") if isinstance(meta, dict) else None
    model = model if isinstance(model, str) and model else run_dir.name
    return f"run folder {run_dir} was written by another version or edited; retrain it with `competition train {model} --name {run_dir.name} --fresh`"


@dataclass(frozen=True, order=True)
class Unit:
    """One model fit: fold `fold` of repeat `repeat` held out, trained with seed `seed`."""

    repeat: int
    fold: int
    seed: int

    @property
    def name(self) -> str:
        return f"r{self.repeat}_f{self.fold}_s{self.seed}"


@dataclass(frozen=True)
class Fingerprints:
    """What a unit was made from; all must match for a finished unit to be reused. `settings` is the document
    `config_hash` is the hash of (kept in each unit's JSON so that a refusal can name the keys that changed)."""

    config_hash: str
    folds: str
    train: str
    test: str
    settings: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def recorded(self) -> dict[str, str]:
        """The four fingerprints, as a unit's JSON records them (`UnitFingerprints`)."""
        return {"config_hash": self.config_hash, "folds": self.folds, "train": self.train, "test": self.test}


@dataclass
class UnitResult:
    """Everything one unit produced."""

    unit: Unit
    oof_ids: np.ndarray
    oof: np.ndarray
    test: np.ndarray
    logloss: float
    best_epoch: int
    history: dict[str, list[float]]
    timings: dict[str, float]
    policy: dict[str, Any] = field(default_factory=dict)  # the PolicyDecision, as a dict
    weight_source: str = "none"
    prefix_cache: str | None = None  # cache folder the unit trained on, None = raw images
    augment: str = "none"  # what augmentation the unit really saw
    versions: dict[str, str] = field(default_factory=dict)  # python and libraries of the process that trained it
    model_files: dict[str, bytes] = field(default_factory=dict, repr=False)  # the saved model: relative path -> bytes (write_unit writes them)


class UnitFingerprints(BaseModel):
    """What a finished unit was made from (`Fingerprints`, as its JSON records them)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    config_hash: str
    folds: str
    train: str
    test: str


class UnitRecord(BaseModel):
    """`units/<unit>.json`, written last by `write_unit` (it marks the unit finished), read by `read_unit`."""

    model_config = ConfigDict(extra="allow", frozen=True)

    unit: dict[str, int]
    logloss: float
    best_epoch: int
    history: dict[str, list[float]]
    timings: dict[str, float]
    policy: dict[str, Any]
    weight_source: str
    prefix_cache: str | None
    augment: str
    fingerprints: UnitFingerprints
    npz_fingerprint: str
    versions: dict[str, str] = Field(default_factory=dict)  # absent in units written before it was recorded
    settings: dict[str, Any] | None = None  # what config_hash hashes (`Fingerprints.settings`); absent before session 11


def remove_leftovers(run_dir: Path) -> list[Path]:
    """Delete temporary files of atomic writes that a killed run left behind (`.name.*.tmp*`)."""
    found = [p for folder in (Path(run_dir), Path(run_dir) / UNITS_DIR) if folder.is_dir() for p in folder.glob(".*.tmp*")]
    for path in found:
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    return found


def unit_paths(run_dir: Path, unit: Unit) -> tuple[Path, Path]:
    base = Path(run_dir) / UNITS_DIR / unit.name
    return base.with_suffix(".npz"), base.with_suffix(".json")


def write_folder(path: Path, files: dict[str, bytes]) -> None:
    """Folder `path` holding `files` (relative path -> bytes), atomically: built beside it (`.name.*.tmp`, what
    `remove_leftovers` deletes), then renamed over whatever a killed run left there."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        for name, data in files.items():
            if Path(name).is_absolute() or ".." in Path(name).parts:
                raise ValueError(f"{name!r} is not a relative path inside the folder")
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_unit(run_dir: Path, result: UnitResult, prints: Fingerprints) -> None:
    """The saved model (if any), the arrays, then the JSON that marks the unit finished (each write atomic)."""
    npz_path, json_path = unit_paths(run_dir, result.unit)
    if result.model_files:
        write_folder(npz_path.with_suffix(".model"), result.model_files)
    with atomic_path(npz_path) as tmp:
        np.savez(tmp, oof_ids=result.oof_ids.astype(str), oof=result.oof, test=result.test)
    record = {
        "unit": asdict(result.unit),
        "logloss": result.logloss,
        "best_epoch": result.best_epoch,
        "history": result.history,
        "timings": result.timings,
        "policy": result.policy,
        "weight_source": result.weight_source,
        "prefix_cache": result.prefix_cache,
        "augment": result.augment,
        "versions": result.versions,
        "fingerprints": prints.recorded(),
        "settings": dict(prints.settings),
        "npz_fingerprint": fingerprint.of_file(npz_path),
    }
    UnitRecord.model_validate(record)  # what read_unit will require (a failure here is a bug in the trainer)
    write_json(json_path, record)


def flat_settings(doc: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested settings document as dotted keys -> leaf values (lists are leaves)."""
    flat: dict[str, Any] = {}
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flat_settings(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def changed_settings(before: Mapping[str, Any] | None, now: Mapping[str, Any], shown: int = 5) -> str:
    """The keys whose values differ between two settings documents, as text for a refusal, e.g.
    " (changed: model.auto.race.prior_margin_se 1.0 -> 0.0)"; empty when the unit did not record its settings."""
    if before is None or not now:
        return ""
    old, new = flat_settings(before), flat_settings(now)

    def shown_value(values: dict[str, Any], key: str) -> str:
        return repr(values[key]) if key in values else "(absent)"

    diffs = [
        f"{key} {shown_value(old, key)} -> {shown_value(new, key)}"
        for key in sorted(old.keys() | new.keys())
        if key not in old or key not in new or old[key] != new[key]
    ]
    if not diffs:
        return ""
    more = f" and {len(diffs) - shown} more" if len(diffs) > shown else ""
    return f" (changed: {'; '.join(diffs[:shown])}{more})"


def read_unit(run_dir: Path, unit: Unit, prints: Fingerprints) -> UnitResult | None:
    """A finished unit, None if it is not finished, FingerprintError if it was made from other inputs."""
    npz_path, json_path = unit_paths(run_dir, unit)
    if not json_path.is_file():
        return None
    fix = f"delete {Path(run_dir)} (or pass --fresh), or train under another run name (--name; make train NAME=...) or experiment name"
    info = read_json(json_path, UnitRecord, fix, FingerprintError)
    recorded = info.fingerprints.model_dump()
    stale = [f"{key} {recorded[key]} (now {now})" for key, now in prints.recorded().items() if recorded[key] != now]
    if stale:
        changed = changed_settings(info.settings, prints.settings) if recorded["config_hash"] != prints.config_hash else ""
        raise FingerprintError(f"{json_path}: finished unit was made with different {', '.join(stale)}{changed}; {fix}")
    if not npz_path.is_file() or fingerprint.of_file(npz_path) != info.npz_fingerprint:
        raise FingerprintError(f"{npz_path} is missing or was changed after {json_path} was written: delete both and run again")
    with np.load(npz_path) as arrays:
        return UnitResult(
            unit=unit,
            oof_ids=arrays["oof_ids"],
            oof=arrays["oof"],
            test=arrays["test"],
            logloss=info.logloss,
            best_epoch=info.best_epoch,
            history=info.history,
            timings=info.timings,
            policy=info.policy,
            weight_source=info.weight_source,
            prefix_cache=info.prefix_cache,
            augment=info.augment,
            versions=info.versions,
        )


def build_oof(results: list[UnitResult], train_ids: np.ndarray) -> pd.DataFrame:
    """`id,repeat,fold,prediction`: every training id once per repeat, averaged over seeds."""
    frames = [pd.DataFrame({"id": r.oof_ids, "repeat": r.unit.repeat, "fold": r.unit.fold, "seed": r.unit.seed, "prediction": r.oof}) for r in results]
    long = pd.concat(frames, ignore_index=True)
    per_seed = long.groupby(["repeat", "seed"])["id"]
    if (per_seed.nunique() != per_seed.size()).any() or (per_seed.nunique() != len(train_ids)).any():
        raise ValueError("units do not hold out every training id exactly once per repeat and seed")
    table = long.groupby(["repeat", "id", "fold"], as_index=False)["prediction"].mean()
    order = pd.Series(np.arange(len(train_ids)), index=train_ids)
    table = table.assign(_order=order.loc[table["id"]].to_numpy()).sort_values(["repeat", "_order"])
    return table[OOF_COLUMNS].reset_index(drop=True)


def build_test(results: list[UnitResult], predicted_ids: np.ndarray, all_ids: np.ndarray, fill: float) -> pd.DataFrame:
    """`id` (every test id), one column per unit (in unit order), and their `mean`.

    Rows the units did not predict (unscored machine-generated rows, when the profile skips
    them) get `fill` in every column, so the table always covers the sample submission.
    """
    ordered = sorted(results, key=lambda r: r.unit)
    predicted = pd.DataFrame({r.unit.name: r.test for r in ordered}, index=pd.Index(predicted_ids, name="id"))
    table = predicted.reindex(pd.Index(all_ids, name="id")).fillna(fill).reset_index()
    table["mean"] = table[[r.unit.name for r in ordered]].mean(axis=1)
    return table


def cv_logloss(oof: pd.DataFrame, labels: pd.Series) -> float:
    """Log loss (`competition.metrics.logloss`) of the OOF predictions, averaged over repeats (`labels` indexed by id)."""
    scores = [logloss(labels.loc[g["id"]].to_numpy(), g["prediction"].to_numpy()) for _, g in oof.groupby("repeat")]
    return float(np.mean(scores))


def write_run(run_dir: Path, oof: pd.DataFrame, test: pd.DataFrame, meta: dict[str, Any]) -> None:
    """oof.csv and test.csv, then meta.json with their hashes (meta last: its presence means complete)."""
    run_dir = Path(run_dir)
    hashes = {}
    for name, frame in ((OOF_FILE, oof), (TEST_FILE, test)):
        with atomic_path(run_dir / name) as tmp:
            frame.to_csv(tmp, index=False)
        hashes[name] = fingerprint.of_file(run_dir / name)
    payload = {**meta, "oof_fingerprint": hashes[OOF_FILE], "test_fingerprint": hashes[TEST_FILE]}
    RunMeta.model_validate(payload)  # what the readers will require (a failure here is a bug in the trainer)
    write_json(run_dir / META_FILE, payload)


@dataclass(frozen=True)
class Run:
    """One model's finished run, as the stacker sees it."""

    path: Path
    oof: pd.DataFrame
    test: pd.DataFrame
    meta: RunMeta

    @property
    def name(self) -> str:
        """The run folder's name (the model's, or `--name`): the stacker's column for this run."""
        return self.path.name

    @property
    def folds_fingerprint(self) -> str:
        return self.meta.folds_fingerprint

    @property
    def unit_columns(self) -> list[str]:
        return [c for c in self.test.columns if c not in ("id", "mean")]


def load_run(run_dir: Path | str) -> Run:
    """Read a run folder, refusing one that is incomplete, edited, or internally inconsistent."""
    run_dir = Path(run_dir)
    meta_path = run_dir / META_FILE
    if not meta_path.is_file():
        raise MissingArtefactError(
            f"{meta_path} not found: the run is not finished; run `make train MODEL=<model> NAME={run_dir.name}` (NAME can be left out when it is the model)"
        )
    meta = read_json(meta_path, RunMeta, lambda raw: retrain_hint(run_dir, raw), FingerprintError)
    for name, recorded in ((OOF_FILE, meta.oof_fingerprint), (TEST_FILE, meta.test_fingerprint)):
        path = run_dir / name
        if not path.is_file():
            raise MissingArtefactError(f"{path} not found although {meta_path} exists: train again")
        if fingerprint.of_file(path) != recorded:
            raise FingerprintError(f"{path} was changed after {meta_path} was written: train again")
    oof = pd.read_csv(run_dir / OOF_FILE, dtype={"id": str})
    test = pd.read_csv(run_dir / TEST_FILE, dtype={"id": str})
    _check_tables(run_dir, oof, test, meta)
    return Run(run_dir, oof, test, meta)


def _check_tables(run_dir: Path, oof: pd.DataFrame, test: pd.DataFrame, meta: RunMeta) -> None:
    """The contract the stacker relies on: columns, one row per id and repeat, probabilities."""
    if list(oof.columns) != OOF_COLUMNS:
        raise FingerprintError(f"{run_dir / OOF_FILE}: columns {list(oof.columns)}, expected {OOF_COLUMNS}")
    expected = ["id", *meta.units, "mean"]
    if list(test.columns) != expected:
        raise FingerprintError(f"{run_dir / TEST_FILE}: columns {list(test.columns)}, expected {expected}")
    if oof.duplicated(["id", "repeat"]).any():
        raise FingerprintError(f"{run_dir / OOF_FILE}: an id appears twice in one repeat")
    for name, values in ((OOF_FILE, oof["prediction"]), (TEST_FILE, test.drop(columns="id").stack())):
        if values.isna().any() or not values.between(0.0, 1.0).all():
            raise FingerprintError(f"{run_dir / name}: predictions must be probabilities in [0, 1] without gaps")
