"""The fold manager: stratified, complete, deterministic, fingerprinted, and refused when stale."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from competition.config import CompetitionConfig, FoldsConfig
from competition.data.dataset import Dataset
from competition.errors import FingerprintError, MissingArtefactError
from competition.folds import angle_groups, ensure_folds, load_folds, make_folds, write_folds


def make_dataset(n: int = 300, seed: int = 0, fingerprint: str = "data-a") -> Dataset:
    """Labelled data with ~47% icebergs and repeated exact angles (scenes), some missing."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.47).astype(np.int8)
    scene_angles = np.round(rng.uniform(30, 45, size=n // 4), 4)
    angle = scene_angles[rng.integers(0, len(scene_angles), size=n)]
    angle[rng.random(n) < 0.08] = np.nan
    return Dataset(
        ids=np.array([f"{i:08x}" for i in rng.permutation(1 << 20)[:n]]),
        images=np.zeros((n, 75, 75, 2), dtype=np.float32),
        angle=angle,
        angle_decimals=np.full(n, 4, dtype=np.int8),
        labels=labels,
        fingerprint=fingerprint,
    )


def test_every_id_once_per_repeat_and_folds_balanced():
    data = make_dataset()
    folds = make_folds(data, FoldsConfig(k=5, repeats=3, seed=7))
    table = folds.table
    assert len(table) == 3 * len(data)
    for r in range(3):
        part = table[table["repeat"] == r]
        assert sorted(part["id"]) == sorted(data.ids.tolist())
        sizes = part["fold"].value_counts()
        assert set(sizes.index) == set(range(5))
        assert sizes.max() - sizes.min() <= 1


def test_folds_are_stratified_by_label():
    data = make_dataset(n=500)
    folds = make_folds(data, FoldsConfig(k=5, repeats=1))
    labels = pd.Series(data.labels, index=data.ids)
    rate = labels.mean()
    for _, part in folds.table.groupby("fold"):
        assert abs(labels.loc[part["id"]].mean() - rate) < 0.02


def test_repeats_differ_but_seed_is_deterministic():
    data = make_dataset()
    a = make_folds(data, FoldsConfig(k=5, repeats=2, seed=1))
    b = make_folds(data, FoldsConfig(k=5, repeats=2, seed=1))
    pd.testing.assert_frame_equal(a.table, b.table)
    assert a.fingerprint == b.fingerprint
    r0, r1 = (a.table[a.table["repeat"] == r]["fold"].to_numpy() for r in (0, 1))
    assert (r0 != r1).mean() > 0.5


def test_grouping_keeps_each_scene_in_one_fold():
    data = make_dataset(n=400)
    folds = make_folds(data, FoldsConfig(k=5, group_by_angle=True))
    groups = angle_groups(data.angle)
    fold = folds.assignment(data.ids, 0)
    for g in np.unique(groups):
        assert len(np.unique(fold[groups == g])) == 1
    assert len(np.unique(fold)) == 5


def test_missing_angles_are_not_one_group():
    groups = angle_groups(np.array([np.nan, np.nan, 30.0, 30.0]))
    assert groups[0] != groups[1] and groups[2] == groups[3]


@pytest.mark.parametrize(
    "change",
    [
        lambda d: (d, FoldsConfig(k=4)),
        lambda d: (d, FoldsConfig(seed=43)),
        lambda d: (d, FoldsConfig(group_by_angle=True)),
        lambda d: (d.subset(np.arange(len(d) - 1)), FoldsConfig()),
        lambda d: (Dataset(d.ids, d.images, d.angle, d.angle_decimals, 1 - d.labels, d.fingerprint), FoldsConfig()),
    ],
    ids=["k", "seed", "grouping", "ids", "labels"],
)
def test_fingerprint_changes_with_what_fixes_the_split(change):
    data = make_dataset()
    base = make_folds(data, FoldsConfig())
    other_data, other_params = change(data)
    assert make_folds(other_data, other_params).fingerprint != base.fingerprint


def cfg_in(tmp_path) -> CompetitionConfig:
    return CompetitionConfig(data_dir=tmp_path / "data", runs_dir=tmp_path / "runs")


def test_write_then_load_round_trip(tmp_path):
    data = make_dataset()
    cfg = cfg_in(tmp_path)
    written = write_folds(data, cfg)
    loaded = load_folds(cfg, data)
    assert loaded.fingerprint == written.fingerprint
    pd.testing.assert_frame_equal(loaded.table, written.table, check_dtype=False)
    assert loaded.params == cfg.folds
    assert not list(cfg.data_dir.glob(".*tmp*")), "no temporary files left behind"


def test_load_refuses_other_training_data(tmp_path):
    cfg = cfg_in(tmp_path)
    write_folds(make_dataset(fingerprint="data-a"), cfg)
    with pytest.raises(FingerprintError, match="run `make folds` again"):
        load_folds(cfg, make_dataset(fingerprint="data-b"))


def test_load_refuses_an_edited_folds_csv(tmp_path):
    cfg = cfg_in(tmp_path)
    write_folds(make_dataset(), cfg)
    text = cfg.folds_csv.read_text().replace(",0,0\n", ",0,1\n", 1)
    cfg.folds_csv.write_text(text)
    with pytest.raises(FingerprintError, match="changed after"):
        load_folds(cfg)


def test_missing_folds_file_says_what_to_run(tmp_path):
    with pytest.raises(MissingArtefactError, match="make folds"):
        load_folds(cfg_in(tmp_path))


def test_check_names_the_artefact_and_both_fingerprints():
    folds = make_folds(make_dataset(), FoldsConfig())
    folds.check(folds.fingerprint, "runs/x/oof.csv")
    with pytest.raises(FingerprintError, match=r"runs/x/oof.csv was made with folds deadbeef.*" + folds.fingerprint):
        folds.check("deadbeef", "runs/x/oof.csv")


def test_ensure_folds_reuses_a_matching_file_and_rewrites_a_stale_one(tmp_path):
    data = make_dataset()
    cfg = cfg_in(tmp_path)
    first, written = ensure_folds(data, cfg)
    assert written
    again, written = ensure_folds(data, cfg)
    assert not written and again.fingerprint == first.fingerprint
    changed = cfg.model_copy(update={"folds": FoldsConfig(k=3)})
    third, written = ensure_folds(data, changed)
    assert written and third.fingerprint != first.fingerprint and load_folds(changed).params.k == 3
    other, written = ensure_folds(make_dataset(fingerprint="data-b"), changed)
    assert written and other.data_fingerprint == "data-b"
