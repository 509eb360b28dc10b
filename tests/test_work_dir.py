"""`work_dir` (the harness's cache and folds): an unset one follows `data_dir`, a read-only `data_dir` is
refused in one line (naming `data_dir` to `simulate`, which writes it), and the Kaggle kernel still writes under /kaggle/working."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from competition.config import CompetitionConfig, SimulateConfig, load_competition
from competition.errors import DataError
from competition.kaggle.kernel import shipped_config
from competition.simulate import write_simulated

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "competition.yaml"


def _competition(tree: Path, *args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """`python -m competition ARGS` with `tree` (holding a copy of configs/) as the working folder."""
    cmd = [*prefix, sys.executable, "-m", "competition", *args]
    return subprocess.run(cmd, cwd=tree, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})


def read_only(folder: Path) -> tuple[str, ...]:
    """Make `folder` read-only for a command run with the returned prefix (see `_competition`).

    Root writes through file modes, so as root the prefix mounts the folder read-only in a private mount namespace,
    as Kaggle's /kaggle/input is; anyone else gets the folder's modes cleared and no prefix.
    """
    if os.geteuid() == 0:
        return ("unshare", "-m", "sh", "-c", f'mount --bind {folder} {folder} && mount -o remount,bind,ro {folder} && exec "$@"', "sh")
    folder.chmod(0o555)
    return ()


def test_folds_with_another_data_dir_leave_the_default_competitions_folds_alone(tmp_path: Path) -> None:
    tree = tmp_path / "project"
    shutil.copytree(ROOT / "configs", tree / "configs")
    (tree / "data").mkdir()
    (tree / "data" / "folds.csv").write_text("id,repeat,fold\nthe default competition's folds,0,0\n")
    before = hashlib.sha256((tree / "data" / "folds.csv").read_bytes()).hexdigest()
    write_simulated(CompetitionConfig(data_dir=tree / "elsewhere", simulate=SimulateConfig(n_train=24, n_test=12, seed=3)))

    done = _competition(tree, "folds", "data_dir=elsewhere", "folds.k=3")

    assert done.returncode == 0, done.stderr[-2000:]
    assert hashlib.sha256((tree / "data" / "folds.csv").read_bytes()).hexdigest() == before
    assert sorted(p.name for p in (tree / "data").iterdir()) == ["folds.csv"]
    assert (tree / "elsewhere" / "folds.csv").is_file() and (tree / "elsewhere" / "folds.json").is_file()
    assert (tree / "elsewhere" / "cache").is_dir()


def test_an_unset_work_dir_is_data_dir_and_a_set_one_is_kept(tmp_path: Path) -> None:
    assert load_competition([f"data_dir={tmp_path}"], CONFIG).folds_csv == tmp_path / "folds.csv"
    assert load_competition([f"data_dir={tmp_path}", f"work_dir={tmp_path / 'w'}"], CONFIG).cache_dir == tmp_path / "w" / "cache"
    assert CompetitionConfig(data_dir=tmp_path).work_dir == tmp_path


def test_a_read_only_data_dir_without_a_work_dir_is_refused_in_one_line(tmp_path: Path) -> None:
    tree = tmp_path / "project"
    shutil.copytree(ROOT / "configs", tree / "configs")
    data = tmp_path / "input"
    write_simulated(CompetitionConfig(data_dir=data, simulate=SimulateConfig(n_train=24, n_test=12, seed=3)))
    prefix = read_only(data)
    refused = _competition(tree, "folds", f"data_dir={data}", prefix=prefix)
    given = _competition(tree, "folds", f"data_dir={data}", f"work_dir={tmp_path / 'work'}", "folds.k=3", prefix=prefix)

    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert f"key 'work_dir': null means data_dir ({data}), which is not writable: set work_dir=" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert given.returncode == 0, given.stderr[-2000:]
    assert (tmp_path / "work" / "folds.csv").is_file() and not (data / "folds.csv").exists()


def test_the_kernel_ships_a_relative_work_dir_so_it_writes_under_kaggle_working(tmp_path: Path) -> None:
    """The kernel runs in /kaggle/working with `data_dir=` its read-only input: the shipped work_dir never follows it."""
    for overrides in ([], [f"data_dir={tmp_path}"], ["data_dir=elsewhere"]):
        shipped = shipped_config(load_competition(overrides, CONFIG)).model_dump(mode="json")
        assert shipped["work_dir"] is not None and not Path(shipped["work_dir"]).is_absolute(), (overrides, shipped)
        kernel = CompetitionConfig.model_validate({**shipped, "data_dir": "/kaggle/input/competitions/statoil-iceberg-classifier-challenge"})
        assert kernel.work_dir == Path(shipped["work_dir"])


def test_a_work_dir_that_follows_data_dir_follows_an_overridden_one(tmp_path: Path) -> None:
    """`train`/`all` load the YAML, then apply the command line: `data_dir=elsewhere` alone moves the work_dir
    (folds, cache) with it, `work_dir=` given too wins, and a YAML work_dir apart from data_dir stays (a newcomer's
    `train ... data_dir=/tmp/x` read and wrote ./data instead); a given work_dir stays even when equal to data_dir."""
    from competition.overrides import route

    follows = CompetitionConfig(data_dir=Path("data"), work_dir=None)
    follows.experiment = "x"  # an assignment revalidates the model: it still follows
    assert follows.work_dir == Path("data") and follows.work_dir_follows_data_dir
    moved = route([f"data_dir={tmp_path / 'x'}"], "train").apply_competition(follows)
    assert moved.data_dir == moved.work_dir == tmp_path / "x"
    both = route([f"data_dir={tmp_path / 'x'}", f"work_dir={tmp_path / 'w'}"], "train").apply_competition(follows)
    assert (both.data_dir, both.work_dir) == (tmp_path / "x", tmp_path / "w")
    apart = CompetitionConfig(data_dir=Path("data"), work_dir=tmp_path / "kept")
    assert route([f"data_dir={tmp_path / 'x'}"], "train").apply_competition(apart).work_dir == tmp_path / "kept"
    same = CompetitionConfig(data_dir=Path("data"), work_dir=Path("data"))  # given, though equal: the kernel's shipped config
    assert route([f"data_dir={tmp_path / 'x'}"], "train").apply_competition(same).work_dir == Path("data")


@pytest.mark.parametrize(("command", "args", "retry"), [
    ("simulate", ("simulate.n_train=24", "simulate.n_test=12"), "simulate into a writable folder (data_dir=...)"),
    ("data", (), "download into a writable folder (data_dir=...)"),
])  # fmt: skip
def test_writing_the_competition_into_a_read_only_data_dir_is_refused_naming_data_dir_and_leaves_nothing(
    tmp_path: Path, command: str, args: tuple[str, ...], retry: str
) -> None:
    """The simulator and the download write data_dir themselves: with or without a work_dir, a read-only one is
    refused in one line naming data_dir (not the work_dir rule, which cannot help), before any lock, marker or
    download (a newcomer got a traceback and a .folds.lock left in work_dir)."""
    tree = tmp_path / "project"
    shutil.copytree(ROOT / "configs", tree / "configs")
    data, work = tmp_path / "input", tmp_path / "work"
    data.mkdir()
    work.mkdir()
    prefix = read_only(data)
    runs = {
        "with work_dir": _competition(tree, command, f"data_dir={data}", f"work_dir={work}", *args, prefix=prefix),
        "without": _competition(tree, command, f"data_dir={data}", *args, prefix=prefix),
        "a missing folder in it": _competition(tree, command, f"data_dir={data / 'new'}", f"work_dir={work}", *args, prefix=prefix),
    }

    for case, done in runs.items():
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr, (case, done.stderr[-2000:])
        assert lines[0].startswith("error: data_dir ") and retry in lines[0], (case, lines)
    assert f"data_dir {data} is not writable" in runs["without"].stderr
    assert f"data_dir {data / 'new'} cannot be created: {data} is not writable" in runs["a missing folder in it"].stderr
    assert list(data.iterdir()) == [] and list(work.iterdir()) == []


def test_simulate_refuses_a_data_dir_under_a_file_before_writing(tmp_path: Path) -> None:
    """A file where a folder of data_dir should be: refused in one line by the writer itself (library callers too)."""
    (tmp_path / "taken").write_text("a file\n")
    cfg = CompetitionConfig(data_dir=tmp_path / "taken" / "data", work_dir=tmp_path / "work", simulate=SimulateConfig(n_train=24, n_test=12, seed=3))

    with pytest.raises(DataError, match=r"^data_dir \S+/taken/data cannot be created: \S+/taken is a file, not a folder: the simulator writes"):
        write_simulated(cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
