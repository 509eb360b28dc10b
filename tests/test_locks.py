"""One writer per folder: a second command is refused at once naming the holder; a killed holder frees the lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from competition import locks
from competition.locks import LockedError
from competition.report import build_report
from competition.stacking.pipeline import run_stack
from competition.stacking.settings import StackConfig
from competition.stacking.summary import read_summary

from stack_data import make_competition, write_predictor
from tiny_training import MODEL, tiny_competition
from tiny_training import TINY as TRAINER_TINY

ROOT = Path(__file__).resolve().parents[1]
QUICK = {"n_trials": 2, "inner_folds": 2, "max_rounds": 100, "timeout_s": None}


def _holder(folder: Path, lock_path: Path | None = None) -> subprocess.Popen:
    """A second process that takes the lock of `folder` (as `competition stack` would) and sleeps."""
    extra = "" if lock_path is None else f", lock_path=Path({str(lock_path)!r})"
    code = (
        "import sys, time\nfrom pathlib import Path\nfrom competition.locks import hold\n"
        f"with hold(Path({str(folder)!r}){extra}):\n    print('held', flush=True)\n    time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, "stack", "experiment=x"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture()
def comp(tmp_path):
    comp = make_competition(tmp_path, n_train=90, n_test=30, k=3, seed=3, via_json=True)
    for j in range(2):
        write_predictor(comp, f"m{j}", 1.0, 1.2, seed=j)
    return comp


def test_stack_and_report_refuse_while_another_process_holds_the_lock_and_run_once_it_is_killed(comp):
    cfg = comp.cfg
    scfg = StackConfig(methods=["mean", "lgbm"], features={"band_stats": False}, stacker=QUICK)
    stack = cfg.stack_dir
    holder = _holder(stack)
    try:
        with pytest.raises(LockedError) as refused:
            run_stack(cfg, scfg, comp.train, comp.test)
        message = str(refused.value)
        assert f"stack folder {stack}" in message and f"pid {holder.pid} " in message and "stack experiment=x" in message
        assert "wait for it to finish or stop it" in message and "\n" not in message
        assert not stack.exists() and not cfg.submissions_dir.exists()  # refused before any work
        assert locks.is_locked(stack)
    finally:
        _kill(holder)
    assert not locks.is_locked(stack)  # the kernel dropped the dead holder's lock at once
    summary = run_stack(cfg, scfg, comp.train, comp.test)
    assert Path(summary.submission).is_file()

    report = cfg.runs_dir / cfg.experiment / "report"
    holder = _holder(report)
    try:
        with pytest.raises(LockedError, match=rf"report folder {report} is being written by pid {holder.pid} "):
            build_report(cfg)
    finally:
        _kill(holder)
    assert build_report(cfg).is_file()


def test_cli_prints_one_line_and_exits_2(comp):
    cfg = comp.cfg
    stack = cfg.stack_dir
    holder = _holder(stack)
    try:
        args = ["stack", f"data_dir={cfg.data_dir}", f"work_dir={cfg.data_dir}", f"runs_dir={cfg.runs_dir}", f"submissions_dir={cfg.submissions_dir}"]
        done = subprocess.run(
            [sys.executable, "-m", "competition", *args], cwd=ROOT, capture_output=True, text=True, env={**os.environ, "COLUMNS": "400"}, timeout=120
        )
    finally:
        _kill(holder)
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    assert "Traceback" not in out and f"error: stack folder {stack} (and the submission it writes) is being written by pid {holder.pid} " in out


def test_folds_lock_lives_inside_the_work_folder_and_is_reentrant(tmp_path):
    folds_json = tmp_path / "work" / "folds.json"
    with locks.folds_lock(folds_json), locks.folds_lock(folds_json):  # the same process may take it again
        assert (tmp_path / "work" / ".folds.lock").read_text().startswith(f"pid {os.getpid()} ")
    assert (tmp_path / "work" / ".folds.lock").read_text() == ""  # released: no holder named
    holder = _holder(tmp_path / "work", lock_path=tmp_path / "work" / ".folds.lock")
    try:
        with pytest.raises(LockedError, match=r"work folder .*work \(folds\) is being written by pid"), locks.folds_lock(folds_json):
            pass
    finally:
        _kill(holder)
    with locks.folds_lock(folds_json):
        pass


def test_a_child_process_works_under_its_parents_lock_but_not_a_stranger(tmp_path):
    """`make all` style: the parent holds a lock and starts a child (spawn), which may take it; another process may not."""
    folder = tmp_path / "runs" / "exp" / "m"
    code = (
        "import sys\nfrom pathlib import Path\nfrom competition.locks import hold, LockedError\n"
        f"try:\n    with hold(Path({str(folder)!r})):\n        print('ran')\n"
        "except LockedError as e:\n    print('refused', e)\n"
    )
    with locks.hold(folder):
        child = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert child.stdout.startswith("ran"), child.stdout + child.stderr
        stranger_env = {k: v for k, v in os.environ.items() if k != locks.ENV}
        stranger = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, env=stranger_env)
        assert stranger.stdout.startswith("refused"), stranger.stdout + stranger.stderr
        assert json.loads(os.environ[locks.ENV]) == {str(locks.lock_file(folder).resolve()): os.getpid()}
    assert locks.ENV not in os.environ


def test_the_lock_is_free_right_after_its_holder_is_killed(tmp_path):
    folder = tmp_path / "stack"
    holder = _holder(folder)
    assert locks.is_locked(folder)
    started = time.monotonic()
    _kill(holder)
    with locks.hold(folder):  # no waiting, no stale pid file to clean
        assert time.monotonic() - started < 5


def test_a_file_system_without_flock_works_unlocked_and_says_so(tmp_path, monkeypatch, capsys):
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with locks.hold(tmp_path / "stack"):
        pass
    assert "cannot be locked (No locks available)" in capsys.readouterr().err.replace("\n", "")


def test_a_holder_that_ends_without_its_folder_deletes_the_lock_file_and_a_stale_descriptor_is_told_apart(tmp_path):
    import fcntl

    folder = tmp_path / "stack"
    lock = locks.lock_file(folder)
    opened_before = os.open(lock, os.O_RDWR | os.O_CREAT)  # a second process that opened the file just before its deletion
    try:
        with pytest.raises(RuntimeError, match="partial"), locks.hold(folder):
            raise RuntimeError("partial folder removed")
        assert not lock.exists()
        fcntl.flock(opened_before, fcntl.LOCK_EX | fcntl.LOCK_NB)  # it gets a lock of the deleted file ...
        assert not locks._same_file(opened_before, lock)  # ... which hold's taking step tells apart and opens the path again
        with locks.hold(folder):
            folder.mkdir()
        assert lock.is_file() and not locks.is_locked(folder)  # beside a folder that exists, the file stays
    finally:
        os.close(opened_before)


# -- train ------------------------------------------------------------------------------------
TINY = [*TRAINER_TINY, "epochs=1"]  # one epoch is enough here (a later override wins)


@pytest.fixture(scope="module")
def tiny_cfg(tmp_path_factory):
    """48 simulated training images in 3 folds, 16 test images."""
    return tiny_competition(tmp_path_factory.mktemp("train-lock"))


def test_train_refuses_while_another_process_writes_the_run(tiny_cfg):
    from competition.training.trainer import train_model

    run_dir = tiny_cfg.runs_dir / tiny_cfg.experiment / "mine"
    holder = _holder(run_dir)
    try:
        with pytest.raises(LockedError, match=rf"run folder {run_dir} is being written by pid {holder.pid} "):
            train_model(tiny_cfg, MODEL, "cpu", TINY, run_name="mine")
    finally:
        _kill(holder)
    assert not run_dir.exists()


def test_a_run_that_fails_on_bad_input_leaves_no_lock_file(tiny_cfg):
    import torch
    from competition.errors import ConfigError
    from competition.training.trainer import train_model

    if torch.cuda.is_available():
        pytest.skip("device=cuda is bad input only where PyTorch sees no GPU")
    run_dir = tiny_cfg.runs_dir / tiny_cfg.experiment / "bad"
    with pytest.raises(ConfigError, match="key 'device' is cuda but PyTorch sees no GPU"):
        train_model(tiny_cfg, MODEL, "cpu", [*TINY, "device=cuda"], run_name="bad")
    assert not run_dir.exists() and not locks.lock_file(run_dir).exists()


@pytest.mark.slow
def test_the_child_of_train_isolated_is_not_blocked_by_its_parent(tiny_cfg):
    """`make all`: the parent may hold locks (here even the run's own) while its child trains the run."""
    from competition.training import store
    from competition.training.trainer import train_isolated

    run_dir = tiny_cfg.runs_dir / tiny_cfg.experiment / "child"
    with locks.folds_lock(tiny_cfg.folds_json), locks.stack_lock(tiny_cfg.stack_dir), locks.run_lock(run_dir):
        assert train_isolated(tiny_cfg, MODEL, "cpu", TINY, run_name="child") == run_dir
    assert store.load_run(run_dir).meta.trained_this_run == ["r0_f0_s0", "r0_f1_s0", "r0_f2_s0"]


# -- two `competition stack` at once ------------------------------------------------------------
def _stack_args(cfg) -> list[str]:
    return [
        "stack", f"data_dir={cfg.data_dir}", f"work_dir={cfg.data_dir}", f"runs_dir={cfg.runs_dir}", f"submissions_dir={cfg.submissions_dir}",
        "folds.k=3", "folds.seed=5", "stack.stacker.n_trials=3", "stack.stacker.inner_folds=2", "stack.stacker.max_rounds=100",
        "stack.methods=[mean, weights, lgbm]",
    ]  # fmt: skip


def _two_predictors(root: Path):
    comp = make_competition(root, n_train=100, n_test=40, k=3, seed=5, via_json=True)
    for j, (strength, noise) in enumerate([(1.0, 1.5), (0.8, 1.2)]):
        write_predictor(comp, f"m{j}", strength, noise, seed=30 + j)
    return comp


def test_two_stacks_at_once_one_refuses_and_the_other_matches_a_solo_run(tmp_path):
    import sqlite3

    comp = _two_predictors(tmp_path / "together")
    env = {**os.environ, "COLUMNS": "400"}
    stack = comp.cfg.stack_dir
    # the second is started ahead and waits, imports done, for a line on stdin: it reaches the lock within milliseconds
    waiting = (
        "import sys\nfrom competition.cli import main\nimport competition.stacking.pipeline\n"
        f"sys.argv = ['competition', *{_stack_args(comp.cfg)!r}]\nsys.stdin.readline()\nmain()\n"
    )
    second = subprocess.Popen(
        [sys.executable, "-c", waiting], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    first = subprocess.Popen(
        [sys.executable, "-m", "competition", *_stack_args(comp.cfg)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    try:
        deadline = time.monotonic() + 120
        lock = locks.lock_file(stack)
        while not (lock.is_file() and lock.read_text().startswith(f"pid {first.pid} ")) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert first.poll() is None, "the first stack ended before the second started"
        second_out, _ = second.communicate("go\n", timeout=120)
        first_out, _ = first.communicate(timeout=300)
    finally:
        _kill(first)
        _kill(second)
    assert second.returncode == 2 and f"is being written by pid {first.pid} (`competition stack " in second_out.replace("\n", ""), second_out[-2000:]
    assert "Traceback" not in second_out and "wait for it to finish or stop it" in second_out.replace("\n", "")
    assert first.returncode == 0, first_out[-3000:]

    solo = _two_predictors(tmp_path / "solo")
    done = subprocess.run([sys.executable, "-m", "competition", *_stack_args(solo.cfg)], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    together = read_summary(stack)
    alone = read_summary(solo.cfg.stack_dir)
    assert together.methods == alone.methods and together.chosen == alone.chosen
    with sqlite3.connect(stack / "optuna.sqlite") as db:
        assert db.execute("select count(*) from trials").fetchone()[0] == 3 * (3 + 1)  # one study per outer fold + the final one, 3 trials each
    assert len(list(comp.cfg.submissions_dir.glob("*.csv"))) == 1
