"""From a seed to rows and chips: the one place that wires scenes to the imaging chain.

The seed is split into independent streams (layout, train pixels, test pixels), so the training
chips are the same whether or not the test chips are drawn, and any split can be made alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import numpy as np

from competition.config import SimulateConfig
from competition.simulate.radar import render_batches
from competition.simulate.scenes import Layout, make_layout

Split = Literal["train", "test"]
_STREAMS = {"layout": 0, "train": 1, "test": 2}


def layout(sim: SimulateConfig) -> Layout:
    """All rows of the simulated competition (train first, then test)."""
    rng = np.random.default_rng(_stream(sim, "layout"))
    return make_layout(sim.n_train, sim.n_test, sim.machine_generated_fraction, sim.public_fraction, rng)


def split_rows(plan: Layout, split: Split) -> np.ndarray:
    """Row positions of one split, in file order."""
    return np.flatnonzero(plan.is_train if split == "train" else ~plan.is_train)


def chips(sim: SimulateConfig, plan: Layout, split: Split) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (row positions, float32 chips k x 75 x 75 x 2) batch by batch for one split."""
    rows = split_rows(plan, split)
    seed = _stream(sim, split)
    for part, images in render_batches(plan.angle[rows], plan.sea_state[rows], plan.labels[rows], seed):
        yield rows[part], images


def split_images(sim: SimulateConfig, split: Split = "train") -> tuple[Layout, np.ndarray]:
    """The layout and every chip of one split in memory (for statistics and tests)."""
    plan = layout(sim)
    parts = [images for _, images in chips(sim, plan, split)]
    return plan, np.concatenate(parts) if parts else np.zeros((0, 75, 75, 2), np.float32)


def _stream(sim: SimulateConfig, name: str) -> np.random.SeedSequence:
    return np.random.SeedSequence([sim.seed, _STREAMS[name]])
