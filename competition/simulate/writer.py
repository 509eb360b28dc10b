"""Write the simulated competition in Kaggle's exact file formats, atomically.

train.json / test.json: a JSON list of {id, band_1, band_2, inc_angle[, is_iceberg]}, bands as
5,625 dB floats (75 x 75, row-major), inc_angle a float or "na". The chips are serialised batch
by batch straight from float32 arrays (orjson), so the 1 GB test file takes seconds and little
memory. The answers go to a hidden solution file that no model step reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from competition import fingerprint
from competition.atomic import atomic_path, write_text
from competition.config import CompetitionConfig
from competition.console import progress
from competition.data.files import check_simulation_target, mark_simulation
from competition.data.folder import check_writable
from competition.simulate.generate import Split, chips, layout, split_rows
from competition.simulate.scenes import Layout

SIZE = 75


Records = tuple[int, Iterable[list[dict[str, Any]]]]  # how many images, and their records batch by batch


def write_simulated(cfg: CompetitionConfig) -> None:
    """Write train.json, test.json, sample_submission.csv and the hidden solution.csv for `cfg`.

    Raises DataError (nothing written) when `cfg.data_dir` cannot be written or holds competition
    files, plain or archived, that an earlier simulation did not write (`write_competition`).
    """
    sim = cfg.simulate
    plan = layout(sim)
    test = split_rows(plan, "test")
    write_competition(
        cfg, sim.model_dump(), (len(split_rows(plan, "train")), _batches(sim, plan, "train")),
        (len(test), _batches(sim, plan, "test")), (plan.ids[test], plan.labels[test], plan.usage[test]),
    )  # fmt: skip


def write_competition(
    cfg: CompetitionConfig, params: dict[str, Any], train: Records, test: Records, answers: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    """Write a competition folder the harness scores offline: train.json, test.json, sample_submission.csv, hidden/solution.csv.

    `params` (what made the data) go into the folder's marker; `answers`: the test ids, their labels
    and their leaderboard (`Public`, `Private` or `Ignored`), in the test file's order. Raises
    DataError (nothing written) when `cfg.data_dir` cannot be written (competition.data.folder)
    or holds competition files the harness did not write. The folder is marked first (a killed
    writer can be rerun) and gets the test file's fingerprint last, which ties the hidden solution
    to this test data only (competition.data.files.simulated_solution).
    """
    check_writable(cfg.data_dir, "simulate")
    check_simulation_target(cfg)
    mark_simulation(cfg, params, None)
    with progress() as bar:
        for split, path, (total, batches) in (("train", cfg.train_json, train), ("test", cfg.test_json, test)):
            task = bar.add_task(f"writing {split}", total=total)
            _write_split(path, batches, lambda k, task=task: bar.advance(task, k))
    ids, labels, usage = answers
    write_text(cfg.sample_submission, "id,is_iceberg\n" + "".join(f"{i},0.5\n" for i in ids))
    rows = zip(ids, labels, usage, strict=True)
    write_text(cfg.solution_csv, "id,is_iceberg,Usage\n" + "".join(f"{i},{y},{u}\n" for i, y, u in rows))
    mark_simulation(cfg, params, fingerprint.of_file(cfg.test_json))


def _write_split(path: Path, batches: Iterable[list[dict[str, Any]]], advance: Any) -> None:
    """Stream one JSON file: '[', the records of each batch joined by commas, ']'."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(b"[")
        first = True
        for records in batches:
            fh.write((b"" if first else b",") + orjson.dumps(records, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1])
            first = False
            advance(len(records))
        fh.write(b"]")


def _batches(sim: Any, plan: Layout, split: Split) -> Iterator[list[dict[str, Any]]]:
    """The simulated images of one split as Kaggle's records, batch by batch."""
    for rows, images in chips(sim, plan, split):
        labels = plan.labels[rows] if split == "train" else [None] * len(rows)
        yield [
            record(plan.ids[row], image, float(plan.angle_published[row]), None if label is None else int(label))
            for row, image, label in zip(rows.tolist(), images, labels, strict=True)
        ]


def record(image_id: str, image: np.ndarray, angle: float, label: int | None) -> dict[str, Any]:
    """One image as Kaggle wrote it (key order included): `image` 75 x 75 x 2 dB (HH, HV), angle NaN = "na", no label in test."""
    bands = np.ascontiguousarray(image.transpose(2, 0, 1)).reshape(2, SIZE * SIZE)
    out: dict[str, Any] = {"id": image_id, "band_1": bands[0], "band_2": bands[1], "inc_angle": "na" if np.isnan(angle) else angle}
    if label is not None:
        out["is_iceberg"] = label
    return out
