"""Write the simulated competition in Kaggle's exact file formats, atomically.

train.json / test.json: a JSON list of {id, band_1, band_2, inc_angle[, is_iceberg]}, bands as
5,625 dB floats (75 x 75, row-major), inc_angle a float or "na". The chips are serialised batch
by batch straight from float32 arrays (orjson), so the 1 GB test file takes seconds and little
memory. The answers go to a hidden solution file that no model step reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson

from competition import fingerprint
from competition.atomic import atomic_path, write_text
from competition.config import CompetitionConfig
from competition.console import progress
from competition.data.files import check_simulation_target, mark_simulation
from competition.simulate.generate import Split, chips, layout, split_rows
from competition.simulate.scenes import Layout

SIZE = 75


def write_simulated(cfg: CompetitionConfig) -> None:
    """Write train.json, test.json, sample_submission.csv and the hidden solution.csv for `cfg`.

    Raises DataError (nothing written) when `cfg.data_dir` holds competition files, plain or
    archived, that an earlier simulation did not write. The folder is marked as simulated first
    (a killed simulation can be rerun) and gets the test file's fingerprint last, which ties the
    hidden solution to this test data only (competition.data.files.simulated_solution).
    """
    check_simulation_target(cfg)
    sim = cfg.simulate
    mark_simulation(cfg, sim.model_dump(), None)
    plan = layout(sim)
    with progress() as bar:
        splits: tuple[tuple[Split, Path], ...] = (("train", cfg.train_json), ("test", cfg.test_json))
        for split, path in splits:
            task = bar.add_task(f"simulating {split}", total=len(split_rows(plan, split)))
            _write_split(path, sim, plan, split, lambda k, task=task: bar.advance(task, k))
    test = split_rows(plan, "test")
    write_text(cfg.sample_submission, "id,is_iceberg\n" + "".join(f"{i},0.5\n" for i in plan.ids[test]))
    answers = zip(plan.ids[test], plan.labels[test], plan.usage[test], strict=True)
    write_text(cfg.solution_csv, "id,is_iceberg,Usage\n" + "".join(f"{i},{y},{u}\n" for i, y, u in answers))
    mark_simulation(cfg, sim.model_dump(), fingerprint.of_file(cfg.test_json))


def _write_split(path: Path, sim: Any, plan: Layout, split: Split, advance: Any) -> None:
    """Stream one JSON file: '[', the records of each batch joined by commas, ']'."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(b"[")
        first = True
        for rows, images in chips(sim, plan, split):
            bands = np.ascontiguousarray(images.transpose(0, 3, 1, 2)).reshape(len(rows), 2, SIZE * SIZE)
            records = [_record(plan, row, band, split) for row, band in zip(rows.tolist(), bands, strict=True)]
            fh.write((b"" if first else b",") + orjson.dumps(records, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1])
            first = False
            advance(len(rows))
        fh.write(b"]")


def _record(plan: Layout, row: int, bands: np.ndarray, split: Split) -> dict[str, Any]:
    """One image as Kaggle wrote it (key order included)."""
    angle = float(plan.angle_published[row])
    record: dict[str, Any] = {"id": plan.ids[row], "band_1": bands[0], "band_2": bands[1], "inc_angle": "na" if np.isnan(angle) else angle}
    if split == "train":
        record["is_iceberg"] = int(plan.labels[row])
    return record
