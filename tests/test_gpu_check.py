"""The GPU check (tools/gpu_check.sh -> competition.bench.gpu_check) in its tiny mode on the CPU, run as
the GPU machine runs it: through the shell script, with the packages that machine lacks blocked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from competition.bench.gpu_check import RESULT_FILE, check_config, run_gpu_check, torch_models
from competition.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
# not on the GPU machine and not among the wheels it gets (tools/gpu-requirements.txt)
ABSENT_THERE = ("tensorflow", "keras", "lightgbm", "optuna", "py7zr", "kaggle", "kagglesdk")


def test_the_check_trains_the_configured_pytorch_models_only(tmp_path: Path) -> None:
    cfg = check_config(tmp_path, tiny=True)
    assert set(cfg.models) >= {"vgg16_angle", "tf_efficientnet_lite0", "mobilenetv2_100"}  # configs/competition.yaml
    assert torch_models(cfg) == [m for m in cfg.models if m != "vgg16_angle"]  # Keras needs TensorFlow
    assert (cfg.simulate.n_train, cfg.folds.k) == (64, 2) and cfg.data_dir == tmp_path / "data"


def test_the_full_check_refuses_a_machine_without_cuda(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here: the full check would run")
    with pytest.raises(UserError, match="no CUDA device.*--tiny"):
        run_gpu_check(tmp_path / "root", tmp_path / "out")
    assert not (tmp_path / "root").exists()  # refused before simulating anything


@pytest.mark.slow
def test_tiny_check_end_to_end_through_the_script(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(f"import sys\nfor name in {ABSENT_THERE!r}:\n    sys.modules[name] = None\n")
    (tmp_path / "wheels").mkdir()  # none: the packages of this venv stand in for the wheels
    env = {**os.environ, "PYTHON": sys.executable, "GPU_WHEELS": str(tmp_path / "wheels"), "PYTHONPATH": str(blocker), "GPU_CHECK_OUT": str(tmp_path / "out")}
    args = ["bash", "tools/gpu_check.sh", "--tiny", "--models", "mobilenetv2_100", "--root", str(tmp_path / "root")]
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "out" / RESULT_FILE).read_text())
    assert result["mode"] == "tiny" and result["data"] == {"n_train": 64, "n_test": 16, "folds": 2}
    [row] = result["models"]
    assert row["model"] == "mobilenetv2_100" and row["units"] == 2 and row["epochs_run"] == 2
    assert row["profile"]["name"] == "gpu" and row["weight_source"].startswith("package:")
    assert row["train_images_per_s"] > 0 and row["peak_gpu_mib"] is None  # no CUDA here
    assert 0 < row["cv_logloss"] < 2 and len(row["fold_logloss"]) == 2
    assert "rotate, shift, zoom, speckle" in row["augment"]  # the gpu profile's full augmentation
    log = (tmp_path / "out" / "gpu_check.log").read_text()
    assert "gpu check (tiny)" in log and "CV log loss" in log
