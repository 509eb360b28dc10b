"""The harness runs where TensorFlow, Keras, LightGBM and Optuna are missing, as long as only timm
models are configured (a GPU machine with PyTorch alone): simulate -> folds -> train end to end.

Each command runs in a fresh interpreter whose prelude sets those modules to None in sys.modules,
so any import of them, at any depth, fails as it would where they are not installed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MISSING = ("tensorflow", "keras", "lightgbm", "optuna")
PRELUDE = f"import sys\nfor name in {MISSING!r}:\n    sys.modules[name] = None\n"
CLI = PRELUDE + "sys.argv = ['competition', *sys.argv[1:]]\nfrom competition.cli import main\nmain()\n"


def _competition(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", CLI, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_the_blocking_prelude_blocks() -> None:
    done = subprocess.run([sys.executable, "-c", PRELUDE + "import lightgbm\n"], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "lightgbm" in done.stderr


def test_the_timm_path_modules_import_without_them() -> None:
    modules = ["competition.cli", "competition.simulate", "competition.folds", "competition.training.trainer", "competition.models.timm_net"]
    code = PRELUDE + "".join(f"import {m}\n" for m in modules) + "from competition.models.registry import model_class\nmodel_class('timm')\n"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.slow
def test_simulate_folds_and_train_a_timm_model_without_them(tmp_path: Path) -> None:
    where = [f"data_dir={tmp_path / 'data'}", f"work_dir={tmp_path / 'data'}", f"runs_dir={tmp_path / 'runs'}", f"submissions_dir={tmp_path / 'subs'}"]
    steps = [
        ["simulate", *where, "simulate.n_train=48", "simulate.n_test=16"],
        ["folds", *where, "folds.k=2"],
        ["train", "mobilenetv3_small_050", "--profile", "cpu", *where, "experiment=notf", "weights=none", "channels=[hh,hv]", "image_size=32"]
        + ["head.hidden=[16]", "epochs=1", "batch_size=16", "save_models=false", "policy=head"],
    ]
    for args in steps:
        done = _competition(*args)
        assert done.returncode == 0, f"{args[0]}: {done.stdout[-1500:]}{done.stderr[-1500:]}"
    meta = json.loads((tmp_path / "runs" / "notf" / "mobilenetv3_small_050" / "meta.json").read_text())
    assert len(meta["fold_scores"]) == 2 and 0 < meta["cv_logloss"] < 5
    assert "tensorflow" not in meta["versions"] and "torch" in meta["versions"]
