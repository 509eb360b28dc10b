"""The stacker's studies as engine tasks: their storage served over gRPC, the same results whichever engine runs them."""

from __future__ import annotations

import socket
import sqlite3

import numpy as np
import pytest
from competition.engine import LocalEngine
from competition.errors import DataError
from competition.stacking import study_storage
from competition.stacking.crossval import evaluate
from competition.stacking.features import stack_tables
from competition.stacking.stacker import LGBMStacker

from stack_data import make_competition

QUICK = {"inner_folds": 2, "max_rounds": 50, "study_name": "s"}


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
