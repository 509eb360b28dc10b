"""A unit computes on its profile's threads in its own framework: TensorFlow's pools for a Keras unit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# a fresh process, as a Ray worker or `make train`'s: one tiny vgg16_angle run (3 units) on 1 thread, then a
# unit asking for 2 threads in the same process (TensorFlow runs already: its pools stay at 1, and it says so)
SCRIPT = """
import sys
from pathlib import Path
sys.path.insert(0, "tests")
from tiny_training import TINY, tiny_competition
from competition.training.trainer import train_model, unit_threads
cfg = tiny_competition(Path(sys.argv[1]))
train_model(cfg, "vgg16_angle", "cpu", [*TINY, "epochs=1", "resources.cpus=1"], run_name="vgg")
import tensorflow as tf
print("pinned", tf.config.threading.get_intra_op_parallelism_threads(), tf.config.threading.get_inter_op_parallelism_threads())
with unit_threads("keras", 2):
    print("after", tf.config.threading.get_intra_op_parallelism_threads(), tf.config.threading.get_inter_op_parallelism_threads())
"""


@pytest.mark.slow  # TensorFlow's import and three tiny VGG16 units in a fresh process: about a minute here
def test_keras_units_pin_tensorflows_threads_in_a_fresh_process(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "400"}
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert "pinned 1 1" in lines and "after 1 1" in lines, done.stdout[-2000:]
    said = done.stderr.replace("\n", " ")  # the console writes to stderr
    assert said.count("TensorFlow already runs in this process") == 1, done.stderr[-2000:]  # only the unit asking for 2
    assert len(list(tmp_path.glob("runs/*/vgg/oof.csv"))) == 1
