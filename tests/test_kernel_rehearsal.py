"""The generated kernel script run as Kaggle runs it, with this project's own environment (`make test`).

A fake /kaggle tree in a private mount namespace without network (`unshare -m -n`): /kaggle/input
read-only with the competition (the .7z archives, or plain JSON) and the harness dataset built by
`make kernel`'s code; /kaggle/working the cwd. The Python that runs it sees the project's packages
but not the harness, so the script must install the harness from its dataset. Tiny data, one cheap
model, one epoch, two stacker trials. `make kaggle-rehearsal` does the same on Kaggle's versions.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _tool():
    spec = importlib.util.spec_from_file_location("kaggle_rehearsal", REPO / "tools" / "kaggle_rehearsal.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def _require_namespaces() -> None:
    """CI runs as root on a machine like this one: a missing capability is a failure, never a silent pass."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.fail("the kernel rehearsal needs root and unshare(1) for a private mount and network namespace; run the tests as root")
    probe = subprocess.run(["unshare", "-m", "-n", "--", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.fail(f"unshare -m -n is not permitted here ({probe.stderr.strip()}); the kernel rehearsal cannot run")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    _require_namespaces()
    tool = _tool()
    work = tmp_path_factory.mktemp("rehearsal")
    kernel, dataset = tool.build_kernel(work / "kaggle")
    competition = tool.tiny_competition(work / "simulated", n_train=60, n_test=40)
    py = tool.hidden_venv(work / "venv")
    hidden = subprocess.run([str(py), "-c", "import competition"], capture_output=True, text=True, cwd=work / "venv")
    assert hidden.returncode != 0, "the harness is importable before the kernel installs it"
    assert subprocess.run([str(py), "-c", "import torch, timm, lightgbm"], cwd=work / "venv").returncode == 0
    listed = subprocess.run([str(py), "-m", "pip", "show", "iceberg-harness"], capture_output=True, text=True, cwd=work / "venv")
    assert listed.returncode != 0, "pip sees the harness installed before the kernel installs it"
    return tool, work, kernel, dataset, competition, py


@pytest.mark.timeout(900)
@pytest.mark.parametrize("layout", ["competitions", "plain"])
def test_generated_kernel_runs_offline_on_read_only_input_and_writes_the_submission(built, layout):
    tool, work, kernel, dataset, competition, py = built
    root = tool.fake_kaggle(work / f"root-{layout}", layout, competition, dataset)
    before = tool.tree_digest(root / "input")
    tool.forget_harness(py)  # what the other layout's run installed
    assert subprocess.run([str(py), "-c", "import competition"], capture_output=True, cwd=work / "venv").returncode != 0
    log = work / f"kernel-{layout}.log"
    code, wall = tool.run_kernel(py, root, kernel / "iceberg_kernel.py", log, timeout_s=800)
    text = log.read_text(errors="replace")
    assert code == 0, text[-4000:]
    assert "--no-index" in text and re.search(r"Successfully installed .*iceberg-harness-0", text)  # installed from the dataset
    folder = root / "input" / ("competitions/" if layout == "competitions" else "") / tool.SLUG
    assert f"competition files: /kaggle/input/{folder.relative_to(root / 'input').as_posix()}" in text
    assert tool.check_output(root / "working", competition / "sample_submission.csv") == []
    sidecar = json.loads((root / "working" / "submission.json").read_text())
    newest = sorted((root / "working" / "submissions").glob("*.csv"))[-1]
    assert (root / "working" / "submission.csv").read_bytes() == newest.read_bytes()
    assert sidecar == json.loads(newest.with_suffix(".json").read_text())
    assert tool.tree_digest(root / "input") == before  # nothing written into /kaggle/input
    from competition.submission import validate_submission

    assert validate_submission(root / "working" / "submission.csv", competition / "sample_submission.csv") == 40
    print(f"{layout}: kernel ran in {wall:.0f} s", file=sys.stderr)
