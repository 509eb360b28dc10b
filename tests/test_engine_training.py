"""Training units as engine tasks (competition.training.trainer on competition.engine): the real tiny timm
training of tests/tiny_training.py on a real two-node Ray cluster on loopback (tests/ray_cluster.py).

Every unit runs with one torch thread here (`resources.cpus=1`: a node of the test cluster has one CPU),
in both engines, so the two engines' files can be compared byte for byte.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from competition.config import CompetitionConfig, RayConfig
from competition.engine import Engine, Resources, Task, open_engine
from competition.errors import ConfigError, UserError
from competition.training import store
from competition.training.trainer import prefix_folder, train_model

from tiny_training import MODEL, TINY, tiny_competition

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
UNITS = [*TINY, "resources.cpus=1"]  # 3 folds x 2 repeats = 6 units of one thread each
RUN_ONLY = {"timings", "trained_this_run", "competition_config_hash"}  # meta.json keys that may differ between runs


def on_node(fn: Callable[..., Any], *args: Any) -> tuple[str, int, Any]:
    """A task function (module-level: Ray workers import it from tests/) that runs `fn` and says on which Ray node and in which process."""
    import ray

    return ray.get_runtime_context().get_node_id(), os.getpid(), fn(*args)


class NodeRecorder:
    """An engine that runs its tasks on `inner` (the real Ray engine) and records the node and process of each task."""

    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self.name = inner.name
        self.nodes: dict[str, str] = {}
        self.pids: dict[str, int] = {}

    def share(self, value: Any) -> Any:
        return self.inner.share(value)

    def run(self, tasks: Sequence[Task[Any]], on_result: Callable[[Task[Any], Any], None], title: str) -> None:
        wrapped = {task.key: task for task in tasks}

        def landed(task: Task[Any], result: tuple[str, int, Any]) -> None:
            self.nodes[task.key], self.pids[task.key], value = result
            on_result(wrapped[task.key], value)

        self.inner.run([Task(t.key, on_node, (t.fn, *t.args), t.resources, t.worker) for t in tasks], landed, title)


def attempt_logged(log: Path, kill_first_after_s: float | None, fn: Callable[..., Any], *args: Any) -> Any:
    """A task function that records each attempt (`<log>/<n>` holds the node id it started on) and, when
    `kill_first_after_s` is given, SIGKILLs its own worker that many seconds into its first attempt (mid-unit)."""
    import ray

    log.mkdir(parents=True, exist_ok=True)
    attempt = len(list(log.iterdir()))
    (log / str(attempt)).write_text(ray.get_runtime_context().get_node_id())
    if kill_first_after_s is None or attempt > 0:
        return fn(*args)
    timer = threading.Timer(kill_first_after_s, os.kill, (os.getpid(), signal.SIGKILL))
    timer.start()
    try:
        return fn(*args)
    finally:
        timer.cancel()  # a first attempt done sooner must not kill its kept process during the next task


class FailureInjector:
    """An engine that runs its tasks on `inner` through `attempt_logged`: the unit `killed`'s first worker is
    SIGKILLed mid-fit, and every attempt of every unit is recorded under `logs/<unit>/`."""

    def __init__(self, inner: Engine, logs: Path, killed: str) -> None:
        self.inner, self.logs, self.killed = inner, logs, killed
        self.name = inner.name

    def share(self, value: Any) -> Any:
        return self.inner.share(value)

    def run(self, tasks: Sequence[Task[Any]], on_result: Callable[[Task[Any], Any], None], title: str) -> None:
        originals = {task.key: task for task in tasks}
        wrapped = [Task(t.key, attempt_logged, (self.logs / t.key, 1.0 if t.key == self.killed else None, t.fn, *t.args), t.resources, t.worker) for t in tasks]
        self.inner.run(wrapped, lambda task, result: on_result(originals[task.key], result), title)


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> CompetitionConfig:
    """48 simulated training images in 3 folds x 2 repeats, 16 test images."""
    return tiny_competition(tmp_path_factory.mktemp("competition"), repeats=2)


@pytest.fixture(scope="module")
def local_run(cfg: CompetitionConfig) -> Path:
    """The reference: every unit in this process (engine=local), saved models kept."""
    return train_model(cfg, MODEL, "cpu", [*UNITS, "save_models=true"])


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    """The two-node loopback cluster (tests/ray_cluster.py) with token authentication on: a driver in another
    process (the CLI below) is refused by a head started without it, or hangs (ray#64755; docs/distributed.md)."""
    from ray_cluster import token_mode, two_node_cluster

    with token_mode(), two_node_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def engine(ray_cluster: Any) -> Iterator[Engine]:
    with open_engine("ray", RayConfig(max_retries=1)) as opened:
        yield opened


def _at(cfg: CompetitionConfig, runs: Path) -> CompetitionConfig:
    return cfg.model_copy(update={"runs_dir": runs})


def _files(run_dir: Path) -> dict[str, bytes]:
    return {p.relative_to(run_dir).as_posix(): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def _without(record: dict[str, Any], keys: set[str]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in keys}


def test_a_cluster_that_cannot_be_reached_is_said_before_the_data_loads_and_leaves_no_folder(cfg: CompetitionConfig, tmp_path: Path) -> None:
    """train and `all` open the engine (probe the Ray head) first: with an absent data folder the error is
    still the cluster's, and a refused address leaves no runs/<experiment>/ behind. (Before any test of this
    module initialises Ray here: an initialised Ray is used as it is, without a probe.)"""
    import ray
    from competition.pipeline import run_all

    assert not ray.is_initialized()
    refused, message = ["engine=ray", "ray.address=127.0.0.1:1"], r"^ray\.address=127\.0\.0\.1:1\b.*no Ray head answers there"
    for data_dir in (cfg.data_dir, tmp_path / "absent"):
        at = _at(cfg, tmp_path / "runs").model_copy(update={"data_dir": data_dir, "work_dir": data_dir})
        with pytest.raises(UserError, match=message):
            train_model(at, MODEL, "cpu", [*UNITS, *refused])
    with pytest.raises(UserError, match=message):
        run_all(at, refused)  # before simulating into the absent data folder
    assert not (tmp_path / "runs").exists() and not (tmp_path / "absent").exists()


def test_units_spread_over_the_nodes_survive_a_killed_worker_and_a_lost_node_and_write_the_same_files_as_local(
    cfg: CompetitionConfig, local_run: Path, ray_cluster: Any, engine: Engine, tmp_path: Path
) -> None:
    """The real training function on the cluster: unit r0_f1_s0's worker is SIGKILLed 1 s into its first attempt,
    and a third node is removed while a unit trains on it; Ray reruns both (ray.max_retries), and the files
    equal engine=local's byte for byte."""
    import ray

    doomed = ray_cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    ray_cluster.wait_for_nodes()
    logs = tmp_path / "attempts"

    stop, removed = threading.Event(), threading.Event()

    def remove_when_a_unit_starts_there() -> None:
        while not stop.wait(0.1):
            if any(p.read_text() == doomed.node_id for p in logs.glob("*/*") if p.parent.name != "r0_f1_s0"):
                ray_cluster.remove_node(doomed)
                removed.set()
                return

    remover = threading.Thread(target=remove_when_a_unit_starts_there)
    remover.start()
    try:
        injector = FailureInjector(engine, logs, killed="r0_f1_s0")
        ray_run = train_model(_at(cfg, tmp_path), MODEL, "cpu", [*UNITS, "save_models=true", "engine=ray"], engine=injector)
    finally:
        stop.set()
        remover.join()
        if not removed.is_set():  # the module's later tests get their two nodes back
            ray_cluster.remove_node(doomed)
    attempts = {unit.name: [(unit / str(i)).read_text() for i in range(len(list(unit.iterdir())))] for unit in logs.iterdir()}
    assert sorted(attempts) == [f"r{r}_f{f}_s0" for r in (0, 1) for f in range(3)]
    assert len(attempts["r0_f1_s0"]) >= 2  # killed mid-fit, rerun
    lost = [name for name, nodes in attempts.items() if doomed.node_id in nodes[:-1]]
    assert lost, f"no unit was training on the removed node: {attempts}"
    assert all(attempts[name][-1] != doomed.node_id for name in lost)  # each finished on a surviving node
    survivors = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert {nodes[-1] for nodes in attempts.values()} == survivors  # both surviving nodes trained units

    assert json.loads((ray_run / "meta.json").read_text())["trained_this_run"] == sorted(attempts)
    assert_same_files(local_run, ray_run)


def assert_same_files(local_run: Path, ray_run: Path) -> None:
    """The two runs' files are the same: byte for byte, but for the JSON files' timings and engine settings and the plots."""
    local, remote = _files(local_run), _files(ray_run)
    assert sorted(local) == sorted(remote) and "units/r0_f0_s0.model/model.json" in local
    for name in local:
        if name.endswith(".json"):  # key-sorted JSON: the same bytes but for the timings (and meta's engine settings)
            a, b = json.loads(local[name]), json.loads(remote[name])
            if name == "meta.json":
                assert a["config"].pop("competition")["engine"] == "local" and b["config"].pop("competition")["engine"] == "ray"
            assert _without(a, RUN_ONLY) == _without(b, RUN_ONLY), name
        elif not name.endswith(".png"):  # the curves plot carries matplotlib's timestamp
            assert local[name] == remote[name], name  # oof.csv, test.csv, units/*.npz, the saved models' weights


def test_keras_units_reuse_their_pools_processes_and_write_the_same_files_as_local(cfg: CompetitionConfig, engine: Engine, tmp_path: Path) -> None:
    """A tiny VGG16 (6 units of 1 thread): in kept processes of the keras pool (TensorFlow imported once per process,
    never in a process that ran torch), the same files as engine=local, which runs them in one child process
    (`train_isolated`: TensorFlow stays out of this test process)."""
    from competition.training.trainer import train_isolated

    keras = [*UNITS, "epochs=1", "save_models=true"]
    local_run = train_isolated(_at(cfg, tmp_path / "local"), "vgg16_angle", "cpu", keras)
    recorder = NodeRecorder(engine)
    ray_run = train_model(_at(cfg, tmp_path / "ray"), "vgg16_angle", "cpu", [*keras, "engine=ray"], engine=recorder)
    assert len(recorder.pids) == 6 and len(set(recorder.pids.values())) <= 2  # one kept process per node, not one per unit
    assert_same_files(local_run, ray_run)


def test_the_driver_writes_saved_models_that_load_and_predict_their_units_oof(cfg: CompetitionConfig, local_run: Path) -> None:
    from competition.data.loader import load_train
    from competition.models.registry import load_model
    from competition.models.schema import ModelInputs
    from competition.training import tta

    train = load_train(cfg)
    unit = store.Unit(1, 2, 0)
    npz, _ = store.unit_paths(local_run, unit)
    model = load_model(npz.with_suffix(".model"))
    with np.load(npz) as saved:
        held = np.flatnonzero(np.isin(train.ids, saved["oof_ids"]))
        oof = saved["oof"]
    views = store.load_run(local_run).meta.tta
    assert views is not None
    predicted = tta.predict_images(model, ModelInputs(train.images[held], train.angle[held]), views, 64)
    np.testing.assert_allclose(predicted, oof, atol=1e-4)  # from images; the unit predicted from its cached prefix


def test_a_driver_killed_mid_run_resumes_with_only_the_missing_units_and_trains_none_itself(
    cfg: CompetitionConfig, local_run: Path, ray_cluster: Any, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    units_dir = runs / cfg.experiment / MODEL / store.UNITS_DIR
    paths = [f"data_dir={cfg.data_dir}", f"work_dir={cfg.work_dir}", f"runs_dir={runs}"]
    command = [sys.executable, "-X", "importtime", "-m", "competition", "train", MODEL, "--profile", "cpu", *UNITS, *paths]
    command += ["engine=ray", f"ray.address={ray_cluster.address}"]
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    log = tmp_path / "killed.log"
    with log.open("w") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=out, start_new_session=True)
        try:
            deadline = time.monotonic() + 240
            while not list(units_dir.glob("r*.json")) and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            with suppress(ProcessLookupError):  # the driver and what it started (its group), not the cluster
                os.killpg(proc.pid, signal.SIGKILL)
        finally:
            proc.wait()
    finished = sorted(p.stem for p in units_dir.glob("r*.json"))
    assert 1 <= len(finished) < 6, (
        f"finished units {finished} (exit code {proc.returncode}): the kill came too late, or the run failed: {log.read_text()[-2000:]}"
    )

    resumed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in resumed.stderr.splitlines() if line.startswith("import time:")}
    assert "competition.training.trainer" in imported and "competition.ray_engine" in imported
    # no unit trained here: no network adapter was imported, nor TensorFlow (torch and timm were, only because the
    # registry asks timm whether the bare name MODEL is an architecture; a configured model needs neither)
    assert not imported & {"competition.models.timm_net", "competition.models.keras_vgg", "tensorflow", "keras"}
    run = store.load_run(runs / cfg.experiment / MODEL)
    reference = store.load_run(local_run)
    assert sorted(run.meta.trained_this_run or []) == sorted(set(reference.unit_columns) - set(finished))
    pd.testing.assert_frame_equal(run.oof, reference.oof)
    pd.testing.assert_frame_equal(run.test, reference.test)


def test_a_user_error_in_a_unit_reaches_the_driver_once_as_one_line(cfg: CompetitionConfig, engine: Engine, tmp_path: Path) -> None:
    """`device=cuda` is refused where the unit builds its model: in a Ray worker, which sees no GPU (gpus: 0)."""
    with pytest.raises(ConfigError) as raised:
        train_model(_at(cfg, tmp_path), MODEL, "cpu", [*UNITS, "device=cuda"], engine=engine)
    assert "key 'device' is cuda but PyTorch sees no GPU here" in str(raised.value) and "\n" not in str(raised.value)
    assert not list((tmp_path / cfg.experiment / MODEL / store.UNITS_DIR).glob("r*"))  # no unit finished, none written


def test_the_prefix_cache_falls_back_to_a_node_local_folder_where_the_work_folder_is_absent(tmp_path: Path) -> None:
    here = tmp_path / "work" / "cache" / "prefix"
    (tmp_path / "work").mkdir()
    assert prefix_folder(here) == here and here.is_dir()
    elsewhere = prefix_folder(tmp_path / "absent" / "cache" / "prefix")
    assert not (tmp_path / "absent").exists() and elsewhere.parent == Path(tempfile.gettempdir())


def test_resources_per_model_reach_the_units_tasks(tmp_path: Path) -> None:
    from competition.training.profiles import PROFILES_DIR, load_profile
    from competition.training.trainer import unit_resources

    (tmp_path / "gpu.yaml").write_text((PROFILES_DIR / "gpu.yaml").read_text() + "  small_net: [resources.gpus=0.25, resources.cpus=2]\n")
    assert unit_resources(load_profile("gpu", profiles_dir=tmp_path).profile) == Resources(cpus=4, gpus=1)
    assert unit_resources(load_profile("gpu", profiles_dir=tmp_path, model="small_net").profile) == Resources(cpus=2, gpus=0.25)
    assert load_profile("cpu", ["resources.cpus=0.5"]).profile.resources.threads() == 1
    with pytest.raises(ConfigError, match=r"resources.gpus.*whole number"):
        load_profile("gpu", ["resources.gpus=1.5"])


def test_make_all_on_ray_trains_from_this_process_and_stacks_on_the_same_engine(
    cfg: CompetitionConfig, local_run: Path, engine: Engine, tmp_path: Path
) -> None:
    from competition.pipeline import run_all

    stack = ["stack.stacker.n_trials=2", "stack.stacker.inner_folds=2", "stack.features.band_stats=false"]
    where = cfg.model_copy(update={"runs_dir": tmp_path / "runs", "submissions_dir": tmp_path / "subs"})
    result = run_all(where, [*UNITS, *stack, f"models=[{MODEL}]", "engine=ray"], profile="cpu")
    assert [name for name, _ in result["timings"]][:5] == ["engine ray", "data", "folds", f"train {MODEL}", "stack"]  # the engine first
    run = store.load_run(where.runs_dir / cfg.experiment / MODEL)
    assert run.meta.config["competition"]["engine"] == "ray" and len(run.meta.trained_this_run or []) == 6
    pd.testing.assert_frame_equal(run.oof, store.load_run(local_run).oof)
    assert Path(result["summary"].submission).is_file() and result["scores"] is not None


def test_the_policy_race_runs_as_a_task_and_the_driver_stores_its_decision(cfg: CompetitionConfig, engine: Engine, tmp_path: Path) -> None:
    """`policy=auto` with "pretrained" weights (a seeded random init saved as the classifier's state dict, read by the
    worker from its file): the race trains in a Ray worker, the driver writes policy_race.json, every unit trains its pick."""
    import timm
    import torch
    from competition.training import policy_race

    torch.manual_seed(0)
    weights = tmp_path / "weights.pth"
    torch.save(timm.create_model(MODEL).state_dict(), weights)
    race = [
        "weights=pretrained",
        f"weights_file={weights}",
        "policy=auto",
        "auto.different_above=100",
        "auto.race.candidates=[probe,head]",
        "auto.race.min_valid=1",
    ]
    kept = [o for o in UNITS if not o.startswith(("weights=", "policy="))]
    recorder = NodeRecorder(engine)
    run = store.load_run(train_model(_at(cfg, tmp_path / "runs"), MODEL, "cpu", [*kept, *race, "auto.race.floor_steps=0"], engine=recorder))
    assert f"policy race of {MODEL}" in recorder.nodes and len(recorder.nodes) == 1 + 6  # the race, then the units, all on the cluster
    stored = policy_race.stored(run.path, {"config_hash": run.meta.config_hash, "folds": run.meta.folds_fingerprint,
                                           **run.meta.data_fingerprint.model_dump()})  # fmt: skip
    assert stored is not None and stored.name == run.meta.policy  # the table picks head here (similar above 100 x)
    assert run.meta.policy_requested == "auto" and (run.meta.model_extra or {})["policy_numbers"]["race"]["winner"] == stored.name
