"""The stacker's studies as engine tasks: their storage served over gRPC, the same results whichever engine runs them."""

from __future__ import annotations

import socket
import sqlite3

import numpy as np
import optuna
import pandas as pd
import pytest
from competition.config import RayConfig
from competition.console import console
from competition.engine import LocalEngine, open_engine
from competition.errors import DataError, UserError
from competition.stacking import study_storage
from competition.stacking.crossval import STACK_POOL, evaluate
from competition.stacking.features import stack_tables
from competition.stacking.pipeline import STUDY_FILE, run_stack
from competition.stacking.settings import StackConfig
from competition.stacking.stacker import LGBMStacker
from competition.stacking.summary import read_summary

from stack_data import make_competition, write_predictor

QUICK = {"inner_folds": 2, "max_rounds": 50, "study_name": "s"}
N_TRIALS = 3
STACK = StackConfig(
    methods=["mean", "lgbm"], features={"band_stats": False}, stacker={"n_trials": N_TRIALS, "inner_folds": 2, "max_rounds": 50, "timeout_s": None}
)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """A small stacking table of two noisy runs (with the angle-group features) and its labels."""
    comp = make_competition(tmp_path_factory.mktemp("table"), n_train=90, n_test=30, k=3, seed=2)
    rng = np.random.default_rng(0)
    y = comp.train.labels.astype(int)
    P = np.clip(y[:, None] * 0.4 + rng.uniform(0.05, 0.55, (len(y), 2)), 0.01, 0.99)
    fold = comp.folds.table["fold"].to_numpy()
    X, _ = stack_tables(["a", "b"], P, P[:5], comp.train.angle, comp.train.angle[:5], fold, np.repeat(P[None, :5], 3, axis=0))
    return X, y


def _trials(path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("select count(*) from trials").fetchone()[0])


def test_a_ray_head_that_cannot_be_reached_leaves_no_experiment_folder(runs):
    """The engine opens (the head is probed) before the stack lock makes runs/<experiment>/. (Before any
    test of this module connects to its cluster: an initialised Ray is used as it is, without a probe.)"""
    import ray

    assert not ray.is_initialized()
    cfg = runs.cfg.model_copy(update={"experiment": "unreachable", "engine": "ray", "ray": RayConfig(address="127.0.0.1:1")})
    with pytest.raises(UserError, match=r"^ray\.address=127\.0\.0\.1:1\b.*no Ray head answers there"):
        run_stack(cfg, STACK, runs.train, runs.test)
    assert not cfg.experiment_dir.exists()


def test_served_storage_resumes_a_study_with_the_results_of_sqlite(table, tmp_path):
    X, y = table
    with study_storage.served(tmp_path / "served.sqlite", study_storage.LOOPBACK) as address:
        host, port = study_storage.grpc_address(address)
        assert host == "127.0.0.1"
        LGBMStacker(n_trials=2, storage=address, **QUICK).fit(X, y)
        assert _trials(tmp_path / "served.sqlite") == 2
        ticks: list[int] = []
        served = LGBMStacker(n_trials=4, storage=address, on_trial=ticks.append, **QUICK).fit(X, y)
    assert ticks == [2, 1, 1]  # the two stored trials first, then only the two missing ones ran
    assert _trials(tmp_path / "served.sqlite") == 4
    with pytest.raises(OSError):  # the proxy is stopped after the block
        socket.create_connection((host, port), timeout=2).close()
    direct = LGBMStacker(n_trials=4, storage=tmp_path / "direct.sqlite", **QUICK).fit(X, y)
    assert served.params_ == direct.params_ and served.rounds_ == direct.rounds_
    assert np.array_equal(served.oof_, direct.oof_)
    assert np.array_equal(served.predict_proba(X), direct.predict_proba(X))


def test_storage_addresses_are_parsed_and_refused_when_malformed():
    assert study_storage.grpc_address("grpc://10.0.0.5:13000") == ("10.0.0.5", 13000)
    for bad in ("grpc://10.0.0.5", "grpc://:13000", "http://10.0.0.5:13000"):
        with pytest.raises(ValueError, match="grpc://HOST:PORT"):
            study_storage.grpc_address(bad)
    assert study_storage.reachable_host(None) == study_storage.LOOPBACK  # the harness's own Ray: every worker is here
    served_on = study_storage.reachable_host("auto")  # a cluster's nodes: this machine's address on its default route
    with socket.socket() as probe:
        probe.bind((served_on, 0))  # an address of this machine


def test_a_user_error_inside_a_study_reaches_the_driver_as_it_is(table):
    """An outer training part with one iceberg cannot be split for the stacker's inner CV: the task's
    DataError is raised in the driver unchanged, as one line."""
    X, _ = table
    y = np.zeros(len(X), dtype=np.int64)
    y[:3] = 1
    fold = np.full((1, len(X)), 2)
    fold[0, :2], fold[0, 2:40] = 0, 1  # fold 0's training part keeps one iceberg
    with pytest.raises(DataError, match=r"^an inner split of \d+ training rows holds \d+ ships and 1 icebergs") as err:
        evaluate(lambda r, f: LGBMStacker(n_trials=1, **QUICK), [X], y, fold, [1e-3], 2, 0, engine=LocalEngine())
    assert "\n" not in str(err.value)


class PoolRecorder(LocalEngine):
    """The local engine, recording the pool (`Task.worker`) of every task it runs."""

    def __init__(self) -> None:
        self.workers: list[str | None] = []

    def run(self, tasks, on_result, title):
        self.workers += [task.worker for task in tasks]
        super().run(tasks, on_result, title)


def test_the_stackers_fold_and_final_fits_run_in_the_stack_pool(table):
    """Under Ray they share kept processes of the `stack` pool (LightGBM's and Optuna's imports paid once)."""
    X, y = table
    fold = np.arange(len(y))[None, :] % 3
    engine = PoolRecorder()
    evaluate(lambda r, f: LGBMStacker(n_trials=1, **QUICK), [X], y, fold, [1e-3], 2, 0, tests=[X.iloc[:5]], engine=engine)
    assert engine.workers == [STACK_POOL] * 4  # 3 outer folds and the final model


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two noisy runs, the same in every experiment (one experiment per engine or setting compared)."""
    comp = make_competition(tmp_path_factory.mktemp("runs"), n_train=120, n_test=40, k=3, seed=3)
    for experiment in ("local", "ray", "local_parallel", "ray_parallel"):
        for j, (strength, noise) in enumerate([(1.0, 1.5), (0.8, 1.2)]):
            write_predictor(comp, f"m{j}", strength, noise, seed=10 + j, experiment=experiment)
    return comp


def _stack(comp, experiment: str, engine: str, **stacker):
    """run_stack of one experiment with the engine `engine` opened by run_stack itself (cfg.engine)."""
    cfg = comp.cfg.model_copy(update={"experiment": experiment, "engine": engine})
    scfg = STACK.model_copy(update={"stacker": STACK.stacker.model_copy(update=stacker)})
    return run_stack(cfg, scfg, comp.train, comp.test), cfg.stack_dir


def _studies(stack_dir) -> dict[str, list[tuple[dict, float | None]]]:
    """Every study of a stack folder: its trials' params and values, in trial order."""
    url = study_storage.sqlite_url(stack_dir / STUDY_FILE)
    return {name: [(t.params, t.value) for t in optuna.load_study(study_name=name, storage=url).trials] for name in optuna.get_all_study_names(storage=url)}


@pytest.fixture(scope="module")
def in_process(runs):
    return _stack(runs, "local", "local")


def test_stacker_studies_as_ray_tasks_give_the_in_process_result(runs, in_process, ray_cluster):
    """One study per outer fold and one for the final model, each a Ray task on a two-node loopback
    cluster, their storage the driver's SQLite served over gRPC: the same fold scores, eps, OOF, test
    predictions, chosen parameters and trials as in process."""
    local, local_dir = in_process
    ray, ray_dir = _stack(runs, "ray", "ray")
    assert ray.methods == local.methods and ray.chosen.method == local.chosen.method
    for table in ("oof.csv", "test.csv", "importances.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(ray_dir / table), pd.read_csv(local_dir / table), check_exact=True)
    studies = _studies(ray_dir)
    assert len(studies) == runs.folds.params.k + 1 and studies == _studies(local_dir)
    assert all(len(trials) == N_TRIALS for trials in studies.values())


def test_a_user_error_in_a_study_on_ray_reaches_the_driver_once(table, ray_cluster):
    X, _ = table
    y = np.zeros(len(X), dtype=np.int64)
    y[:3] = 1
    fold = np.full((1, len(X)), 2)
    fold[0, :2], fold[0, 2:40] = 0, 1  # fold 0's training part keeps one iceberg
    with (
        open_engine("ray", RayConfig()) as engine,
        pytest.raises(DataError, match=r"^an inner split of \d+ training rows holds \d+ ships and 1 icebergs") as err,
    ):
        evaluate(lambda r, f: LGBMStacker(n_trials=1, **QUICK), [X], y, fold, [1e-3], 2, 0, engine=engine)
    assert "\n" not in str(err.value)


def test_trial_workers_on_the_local_engine_search_sequentially_with_one_note(runs, in_process):
    """The local engine runs one task at a time, so trial_workers=2 there would only repeat the sequential
    search, slower: it is ignored with one note, and the studies, their names and summary.json are the
    sequential run's (trial_workers 1), so a later sequential run of the experiment resumes them."""
    local, local_dir = in_process
    with console.capture() as captured:
        parallel, parallel_dir = _stack(runs, "local_parallel", "local", trial_workers=2)
    out = " ".join(captured.get().split())
    assert out.count("stacker.trial_workers=2 ignored: it needs engine=ray") == 1 and "NOT reproducible" not in out
    assert parallel.methods == local.methods and parallel.config_hash == local.config_hash
    assert parallel.trial_workers == read_summary(parallel_dir).trial_workers == 1
    assert _studies(parallel_dir) == _studies(local_dir)  # same names (no -tw2), same trials

    again, again_dir = _stack(runs, "local_parallel", "local")  # the study file is carried into the new folder
    assert again.methods == local.methods and _studies(again_dir) == _studies(local_dir)  # resumed, none added


@pytest.mark.slow  # about 60 s here: 12 fresh worker processes on two 1-CPU nodes
def test_trial_parallel_search_on_ray_fills_each_study_once(runs, ray_cluster):
    """Two tasks per study at once on two nodes, through the served storage: each study ends with
    n_trials finished trials (one more when the other task's trial was still running), then one fit."""
    summary, stack_dir = _stack(runs, "ray_parallel", "ray", trial_workers=2)
    studies = _studies(stack_dir)
    assert len(studies) == runs.folds.params.k + 1
    assert all(N_TRIALS <= len(trials) <= N_TRIALS + 1 for trials in studies.values())
    assert all("-tw2-" in name for name in studies) and summary.trial_workers == 2  # kept apart from sequential studies
    assert np.isfinite(summary.methods["lgbm"].cv_mean)
