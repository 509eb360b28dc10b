"""Collect the runs to stack and refuse any that disagree with the folds, the data or each other.

The trainer's reader (`competition.training.store.load_run`) refuses incomplete, edited or
malformed run folders. On top of that, OOF tables made on other folds or other data would leak
or misalign, so every run must carry the current folds fingerprint and data fingerprints, and
cover every training id exactly once per repeat, in the fold the folds file says; its test
table must hold every current test id exactly once, with one column per unit (`r{repeat}_f{fold}_s{seed}`,
`store.Unit.name`) covering every (repeat, fold) of the folds file. A run's column is named after
its folder.

Besides each run's mean test prediction, the collection keeps its test predictions by the models
of each (repeat, fold) (mean over seeds): the leak-free `group_pred` of a training row reads only
the models that never saw its label (competition.stacking.features).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from competition.config import RESERVED_RUN_NAMES
from competition.errors import DataError, FingerprintError, MissingArtefactError
from competition.folds import Folds
from competition.training.store import META_FILE, OOF_FILE, TEST_FILE, Run, load_run


@dataclass(frozen=True)
class Collection:
    """The runs' predictions aligned to the folds' training ids and the test ids.

    oof: R x n_train x n_runs; fold: R x n_train (outer fold of each id per repeat);
    test: n_test x n_runs (each run's `mean` column); test_by_fold: R x K x n_test x n_runs (each
    run's test predictions by the models of (repeat, fold), mean over seeds).
    """

    names: list[str]
    train_ids: np.ndarray
    test_ids: np.ndarray
    oof: np.ndarray
    fold: np.ndarray
    test: np.ndarray
    test_by_fold: np.ndarray
    folds_fingerprint: str
    data_fingerprint: dict[str, str]
    config_hashes: dict[str, str]


def run_dirs(experiment_dir: Path, names: Sequence[str]) -> list[Path]:
    """The named run folders, or every finished one (with meta.json) of the experiment, sorted."""
    if names:
        missing = [n for n in names if not (experiment_dir / n / META_FILE).is_file()]
        if missing:
            raise MissingArtefactError(f"{experiment_dir}: no finished run {missing} (meta.json not found): train it first or fix `runs` in configs/stack.yaml")
        return [experiment_dir / n for n in names]
    found = sorted(p.parent for p in experiment_dir.glob(f"*/{META_FILE}") if p.parent.name not in RESERVED_RUN_NAMES)
    if not found:
        raise MissingArtefactError(f"{experiment_dir}: no finished runs to stack (no */meta.json): train some models first")
    return found


def check_fingerprints(runs: Sequence[Run], folds: Folds, test_fingerprint: str) -> None:
    """Every run must have been made on the current folds, training data and test data."""
    for run in runs:
        folds.check(run.folds_fingerprint, f"run {run.path}")
        data = run.meta.data_fingerprint  # {train, test}: load_run validated it
        if data.train != folds.data_fingerprint:
            raise FingerprintError(
                f"run {run.path} was trained on training data {data.train}, but the folds file was made from "
                f"{folds.data_fingerprint}: retrain it on the current data"
            )
        if data.test != test_fingerprint:
            raise FingerprintError(
                f"run {run.path} predicted test data {data.test}, but the current test data is {test_fingerprint}: "
                "retrain it (or predict the current test file)"
            )


def _check_ids(found: pd.Series, expected: np.ndarray, path: Path, what: str) -> None:
    """Exactly the expected ids, each once; the message names the first offender."""
    dupes = found[found.duplicated()]
    if len(dupes):
        raise DataError(f"{path}: {what}: id {dupes.iloc[0]!r} appears more than once ({dupes.nunique()} duplicated ids)")
    missing = pd.Index(expected).difference(pd.Index(found))
    if len(missing):
        raise DataError(f"{path}: {what}: {len(missing)} ids missing (e.g. {missing[0]!r}): the run is incomplete or made on other data")
    extra = pd.Index(found).difference(pd.Index(expected))
    if len(extra):
        raise DataError(f"{path}: {what}: {len(extra)} unknown ids (e.g. {extra[0]!r}): the run was made on other data")


def train_ids(folds: Folds) -> np.ndarray:
    """The training ids in the folds file's order (that of the training data)."""
    return folds.table.loc[folds.table["repeat"] == 0, "id"].to_numpy()


def align_oof(run: Run, folds: Folds) -> tuple[np.ndarray, np.ndarray]:
    """The run's OOF predictions and folds as R x n arrays in the folds file's id order."""
    path = run.path / OOF_FILE
    order = train_ids(folds)
    repeats = sorted(int(r) for r in run.oof["repeat"].unique())
    if repeats != list(range(folds.params.repeats)):
        raise DataError(f"{path}: repeats {repeats}, but the folds file has repeats 0..{folds.params.repeats - 1}")
    preds, fold_of = [], []
    for r in range(folds.params.repeats):
        expected = folds.table[folds.table["repeat"] == r].set_index("id").loc[order].reset_index()
        rows = run.oof[run.oof["repeat"] == r]
        _check_ids(rows["id"], order, path, f"repeat {r}")
        rows = rows.set_index("id").loc[order]
        wrong = np.flatnonzero(rows["fold"].to_numpy() != expected["fold"].to_numpy())
        if len(wrong):
            i = int(wrong[0])
            raise FingerprintError(
                f"{path}: id {rows.index[i]!r} (repeat {r}) is in fold {rows['fold'].iloc[i]}, but the folds file puts it in "
                f"fold {expected['fold'].iloc[i]} ({len(wrong)} such rows): retrain the run on the current folds"
            )
        preds.append(rows["prediction"].to_numpy(dtype=np.float64))
        fold_of.append(expected["fold"].to_numpy())
    return np.stack(preds), np.stack(fold_of)


def align_test(run: Run, test_ids: np.ndarray) -> np.ndarray:
    """The run's mean test prediction in `test_ids` order."""
    path = run.path / TEST_FILE
    _check_ids(run.test["id"], test_ids, path, "test ids")
    return run.test.set_index("id").loc[test_ids, "mean"].to_numpy(dtype=np.float64)


UNIT_COLUMN = re.compile(r"r(\d+)_f(\d+)_s(\d+)")  # store.Unit.name


def align_test_by_fold(run: Run, test_ids: np.ndarray, folds: Folds) -> np.ndarray:
    """R x K x n_test: the run's test predictions by the models of each (repeat, fold), mean over seeds,
    in `test_ids` order; refused when a (repeat, fold) of the folds file has no unit column."""
    table = run.test.set_index("id").loc[test_ids]
    units: dict[tuple[int, int], list[str]] = {}
    for column in run.unit_columns:
        match = UNIT_COLUMN.fullmatch(column)
        if match is not None:
            units.setdefault((int(match[1]), int(match[2])), []).append(column)
    out = np.empty((folds.params.repeats, folds.params.k, len(test_ids)))
    for r, f in folds.units():
        if (r, f) not in units:
            raise DataError(f"{run.path / TEST_FILE}: no test predictions of the unit models of repeat {r}, fold {f}: retrain the run on the current folds")
        out[r, f] = table[units[r, f]].to_numpy(dtype=np.float64).mean(axis=1)
    return out


def collect(paths: Sequence[Path], folds: Folds, test_ids: np.ndarray, test_fingerprint: str) -> Collection:
    """Read, check and align the runs at `paths` against the current folds and test data."""
    runs = [load_run(p) for p in paths]
    names = [r.name for r in runs]
    check_fingerprints(runs, folds, test_fingerprint)
    aligned = [align_oof(r, folds) for r in runs]
    return Collection(
        names=names,
        train_ids=train_ids(folds),
        test_ids=np.asarray(test_ids),
        oof=np.stack([a[0] for a in aligned], axis=-1),
        fold=aligned[0][1],
        test=np.column_stack([align_test(r, np.asarray(test_ids)) for r in runs]),
        test_by_fold=np.stack([align_test_by_fold(r, np.asarray(test_ids), folds) for r in runs], axis=-1),
        folds_fingerprint=folds.fingerprint,
        data_fingerprint={"train": folds.data_fingerprint, "test": test_fingerprint},
        config_hashes={r.name: r.meta.config_hash for r in runs},
    )
