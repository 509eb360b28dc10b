"""Shared test fixtures."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from competition.config import CompetitionConfig, SimulateConfig
from competition.data.dataset import Dataset


@pytest.fixture
def make_records() -> Callable[..., list[dict[str, Any]]]:
    """Valid competition records as the JSON holds them (random dB bands, one "na" angle in train)."""

    def make(n: int = 6, split: str = "train", seed: int = 0) -> list[dict[str, Any]]:
        rng = np.random.default_rng(seed)
        records = []
        for i in range(n):
            bands = np.round(rng.normal(-20.0, 5.0, size=(2, 75 * 75)), 6)
            record: dict[str, Any] = {"id": f"{split[:2]}{i:06x}", "band_1": bands[0].tolist(), "band_2": bands[1].tolist()}
            record["inc_angle"] = "na" if split == "train" and i == 1 else round(float(rng.uniform(30, 45)), 4)
            if split == "train":
                record["is_iceberg"] = i % 2
            records.append(record)
        return records

    return make


@pytest.fixture(scope="session")
def sar(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """A small simulated competition training set (real format, SAR-like chips), made once per session."""
    from competition.data.loader import read_dataset
    from competition.simulate.writer import write_simulated

    root = tmp_path_factory.mktemp("sim")
    cfg = CompetitionConfig(data_dir=root, runs_dir=root / "runs", submissions_dir=root / "subs", simulate=SimulateConfig(n_train=40, n_test=10, seed=1))
    write_simulated(cfg)
    return read_dataset(cfg.train_json, "train")


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    """A two-node Ray cluster on loopback (tests/ray_cluster.py), shared by the tests of one module, stopped by its handle."""
    from ray_cluster import two_node_cluster

    with two_node_cluster() as cluster:
        yield cluster
