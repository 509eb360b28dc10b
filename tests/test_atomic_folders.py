"""Folders replaced whole or not at all: a step that fails leaves what the previous successful run wrote."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from competition.atomic import recover_folder, replaced_folder, staging_path
from competition.report import build_report
from competition.stacking import pipeline
from competition.stacking.pipeline import run_stack
from competition.stacking.settings import StackConfig

from stack_data import make_competition, write_predictor
from tiny_training import MODEL, tiny_competition
from tiny_training import TINY as TRAINER_TINY

QUICK = {"n_trials": 2, "inner_folds": 2, "max_rounds": 100, "timeout_s": None}


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _trials(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("select count(*) from trials").fetchone()[0]


# -- the helper ---------------------------------------------------------------------------
def test_a_finished_build_replaces_the_folder_whole(tmp_path):
    target = tmp_path / "stack"
    (target / "sub").mkdir(parents=True)
    (target / "old.txt").write_text("old")
    (target / "sub" / "x").write_text("x")
    with replaced_folder(target) as new:
        assert new == staging_path(target) and new.name == "stack" and list(new.iterdir()) == []
        (new / "new.txt").write_text("new")
        assert (target / "old.txt").read_text() == "old"  # the old folder stays in place while building
    assert snapshot(target) == {"new.txt": b"new"}
    assert not new.exists()


def test_a_failed_build_leaves_the_folder_byte_identical_and_keeps_only_what_it_was_told(tmp_path):
    target = tmp_path / "stack"
    target.mkdir()
    (target / "study.db").write_text("v1")
    (target / "table.csv").write_text("t1")
    before = snapshot(target)
    with pytest.raises(RuntimeError, match="late"), replaced_folder(target, carry=["study.db"], keep_on_failure=["study.db*"]) as new:
        assert (new / "study.db").read_text() == "v1"  # carried over
        (new / "study.db").write_text("v1 + trials")
        (new / "study.db-journal").write_text("j")
        (new / "table.csv").write_text("half")
        raise RuntimeError("late")
    assert snapshot(target) == before
    assert snapshot(staging_path(target)) == {"study.db": b"v1 + trials", "study.db-journal": b"j"}
    with replaced_folder(target, carry=["study.db"], keep_on_failure=["study.db*"]) as new:
        assert (new / "study.db").read_text() == "v1 + trials"  # the failed attempt's state, not the older one
        (new / "table.csv").write_text("t2")
    assert snapshot(target) == {"study.db": b"v1 + trials", "study.db-journal": b"j", "table.csv": b"t2"}
    with pytest.raises(KeyboardInterrupt), replaced_folder(target) as new:
        (new / "x").write_text("x")
        raise KeyboardInterrupt
    assert not new.exists() and (target / "table.csv").read_text() == "t2"


def test_a_swap_killed_between_its_renames_is_finished_by_the_next_writer(tmp_path):
    target = tmp_path / "report"
    target.mkdir()
    (target / "a").write_text("old")
    new, old = staging_path(target), tmp_path / ".staging" / "old" / "report"
    new.mkdir(parents=True)
    (new / "a").write_text("new")
    old.parent.mkdir(parents=True)
    target.rename(old)  # the first rename happened, the kill came before the second
    recover_folder(target)
    assert snapshot(target) == {"a": b"new"} and not old.exists() and not new.exists()
    # without a finished new folder the old one comes back
    target.rename(old)
    recover_folder(target)
    assert snapshot(target) == {"a": b"new"} and not old.exists()


# -- stack ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stacked(tmp_path_factory):
    comp = make_competition(tmp_path_factory.mktemp("atomic-stack"), n_train=120, n_test=40, k=3, seed=4, via_json=True)
    for j, (strength, noise) in enumerate([(1.0, 1.5), (0.8, 1.2)]):
        write_predictor(comp, f"m{j}", strength, noise, seed=20 + j)
    scfg = StackConfig(methods=["mean", "weights", "lgbm"], features={"band_stats": False}, stacker=QUICK)
    return comp, scfg, run_stack(comp.cfg, scfg, comp.train, comp.test)


def _boom(*args, **kwargs):
    raise RuntimeError("late failure")


@pytest.mark.parametrize("step", ["plot_results", "write_submission", "write_summary"])
def test_a_stack_that_fails_late_leaves_the_old_folder_and_no_new_submission(stacked, monkeypatch, step):
    comp, scfg, _ = stacked
    out = comp.cfg.stack_dir
    before, subs = snapshot(out), sorted(p.name for p in comp.cfg.submissions_dir.iterdir())
    monkeypatch.setattr(pipeline, step, _boom)
    changed = scfg.model_copy(update={"seed": 7})  # new studies: the search really runs before the failure
    with pytest.raises(RuntimeError, match="late failure"):
        run_stack(comp.cfg, changed, comp.train, comp.test)
    assert snapshot(out) == before
    assert sorted(p.name for p in comp.cfg.submissions_dir.iterdir()) == subs  # no submission without its stack folder
    kept = staging_path(out)
    assert [p.name for p in kept.iterdir()] == ["optuna.sqlite"]  # only the search's state waits for the next attempt
    assert _trials(kept / "optuna.sqlite") == _trials(out / "optuna.sqlite") + QUICK["n_trials"] * (comp.folds.params.k + 1)


def test_the_next_stack_resumes_the_failed_attempts_search(stacked, monkeypatch):
    comp, scfg, _ = stacked
    out = comp.cfg.stack_dir
    changed = scfg.model_copy(update={"seed": 8})
    monkeypatch.setattr(pipeline, "plot_results", _boom)
    with pytest.raises(RuntimeError):
        run_stack(comp.cfg, changed, comp.train, comp.test)
    searched = _trials(staging_path(out) / "optuna.sqlite")
    monkeypatch.undo()
    summary = run_stack(comp.cfg, changed, comp.train, comp.test)
    assert _trials(out / "optuna.sqlite") == searched  # every study was complete: no trial ran again
    assert Path(summary.submission).is_file() and not staging_path(out).exists()
    assert (out / "cv_scores.png").is_file() and (out / "summary.json").is_file()


# -- report ---------------------------------------------------------------------------------
def test_a_report_that_fails_late_leaves_the_old_report(stacked, monkeypatch):
    from competition import report

    comp, _, _ = stacked
    page = build_report(comp.cfg)
    folder = page.parent
    before = snapshot(folder)
    assert "index.html" in before and "fold_scores.png" in before
    monkeypatch.setattr(report, "plot_correlation", _boom)  # after two plots are written
    with pytest.raises(RuntimeError, match="late failure"):
        build_report(comp.cfg)
    assert snapshot(folder) == before and not staging_path(folder).exists()


# -- train --fresh ----------------------------------------------------------------------------
TINY = [*TRAINER_TINY, "epochs=1"]  # one epoch is enough here (a later override wins)


@pytest.fixture(scope="module")
def tiny_cfg(tmp_path_factory):
    """48 simulated training images in 3 folds, 16 test images."""
    return tiny_competition(tmp_path_factory.mktemp("fresh"))


@pytest.mark.slow
def test_a_fresh_train_that_fails_leaves_the_old_run_and_the_next_fresh_starts_over(tiny_cfg, monkeypatch):
    from competition.training import store, trainer

    run_dir = trainer.train_model(tiny_cfg, MODEL, "cpu", TINY)
    before = snapshot(run_dir)
    assert {"meta.json", "oof.csv", "test.csv", "units/r0_f0_s0.json"} <= set(before)
    real, calls = trainer.run_unit, []

    def second_unit_fails(plan, unit, on_epoch=None):
        calls.append(unit.name)
        if len(calls) > 1:
            raise RuntimeError("unit failed")
        return real(plan, unit, on_epoch)

    monkeypatch.setattr(trainer, "run_unit", second_unit_fails)
    with pytest.raises(RuntimeError, match="unit failed"):
        trainer.train_model(tiny_cfg, MODEL, "cpu", TINY, fresh=True)
    assert calls == ["r0_f0_s0", "r0_f1_s0"]  # the first unit trained anew (in the staging folder)
    assert snapshot(run_dir) == before and not staging_path(run_dir).exists()
    assert store.load_run(trainer.train_model(tiny_cfg, MODEL, "cpu", TINY)).meta.trained_this_run == []  # the old units, untouched

    monkeypatch.setattr(trainer, "run_unit", real)
    fresh = store.load_run(trainer.train_model(tiny_cfg, MODEL, "cpu", TINY, fresh=True))
    assert fresh.path == run_dir and fresh.meta.run_name == run_dir.name
    assert fresh.meta.trained_this_run == ["r0_f0_s0", "r0_f1_s0", "r0_f2_s0"] and not staging_path(run_dir).exists()


def test_a_stack_killed_mid_search_leaves_the_old_folder_and_the_rerun_resumes_its_trials(tmp_path):
    """kill -9 during the Optuna search: the old stack folder and submissions stay; the next run keeps the killed run's trials."""
    import os
    import signal
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parents[1]
    comp = make_competition(tmp_path, n_train=100, n_test=40, k=3, seed=6, via_json=True)
    for j, (strength, noise) in enumerate([(1.0, 1.5), (0.8, 1.2)]):
        write_predictor(comp, f"m{j}", strength, noise, seed=40 + j)
    cfg = comp.cfg
    base = ["stack", f"data_dir={cfg.data_dir}", f"work_dir={cfg.data_dir}", f"runs_dir={cfg.runs_dir}", f"submissions_dir={cfg.submissions_dir}",
            "folds.k=3", "folds.seed=6", "stack.stacker.inner_folds=2", "stack.stacker.max_rounds=100", "stack.methods=[mean, lgbm]",
            "stack.features.band_stats=false"]  # fmt: skip
    command = [sys.executable, "-m", "competition", *base]
    first = subprocess.run([*command, "stack.stacker.n_trials=2"], cwd=root, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    out = cfg.stack_dir
    before, subs = snapshot(out), sorted(p.name for p in cfg.submissions_dir.iterdir())

    study = staging_path(out) / "optuna.sqlite"
    proc = subprocess.Popen([*command, "stack.stacker.n_trials=8"], cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if study.is_file() and _complete(study) >= _complete(out / "optuna.sqlite") + 6:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the search ended before the kill"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert snapshot(out) == before and sorted(p.name for p in cfg.submissions_dir.iterdir()) == subs
    done_before_kill = _complete_trials(study)

    again = subprocess.run([*command, "stack.stacker.n_trials=8"], cwd=root, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert done_before_kill <= _complete_trials(out / "optuna.sqlite")  # the killed run's trials were kept, not searched again
    assert _complete(out / "optuna.sqlite") == 2 * 4 + 8 * 4  # per study exactly its n_trials finished: 4 studies of each search
    assert not staging_path(out).exists() and len(list(cfg.submissions_dir.glob("*.csv"))) == 2


def _complete(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("select count(*) from trials where state in ('COMPLETE', 'PRUNED')").fetchone()[0]


def _complete_trials(path: Path) -> set[tuple]:
    with sqlite3.connect(path) as db:
        return set(db.execute("select study_id, number, datetime_start from trials where state in ('COMPLETE', 'PRUNED')").fetchall())


@pytest.mark.slow
def test_a_resumed_train_replaces_its_tables_whole_and_keeps_the_units_it_found(tiny_cfg, monkeypatch):
    from competition.training import store, trainer

    run_dir = trainer.train_model(tiny_cfg, MODEL, "cpu", TINY, run_name="again")
    before = snapshot(run_dir)
    inodes = {p.name: p.stat().st_ino for p in (run_dir / store.UNITS_DIR).iterdir()}
    monkeypatch.setattr(trainer, "plot_curves", _boom)  # after oof.csv, test.csv and meta.json are written
    with pytest.raises(RuntimeError, match="late failure"):
        trainer.train_model(tiny_cfg, MODEL, "cpu", TINY, run_name="again")
    assert snapshot(run_dir) == before and not staging_path(run_dir).exists()
    monkeypatch.undo()
    run = store.load_run(trainer.train_model(tiny_cfg, MODEL, "cpu", TINY, run_name="again"))
    assert run.meta.trained_this_run == [] and (run_dir / "curves.png").is_file()
    assert {p.name: p.stat().st_ino for p in (run_dir / store.UNITS_DIR).iterdir()} == inodes  # linked, not copied
