"""The engines' contract (competition.engine): the local engine in this process, and the Ray engine on
a real two-node Ray cluster on loopback (tests/ray_cluster.py): results handed to the driver as they
land, shared inputs, a killed worker retried, a lost node's task rerun on the other node, a user error
reported once and never retried, impossible resource requests refused, a local Ray started and stopped."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from competition import console as console_module
from competition.config import RayConfig
from competition.engine import LocalEngine, Resources, Task, open_engine, report_step
from competition.errors import ConfigError, UserError, as_json

from ray_cluster import token_auth_head

# ---- task functions (module level: Ray workers import them by name) ----


def _attempt(marks: Path, key: str) -> int:
    """Record one attempt of task `key` under `marks`; the number of earlier attempts."""
    marks.mkdir(parents=True, exist_ok=True)
    earlier = len(list(marks.glob(f"{key}.*")))
    (marks / f"{key}.{earlier}").write_text(str(os.getpid()))
    return earlier


def where(shared: np.ndarray, i: int, seconds: float) -> tuple[str, int, float]:
    """The node and process it ran in, and the shared array's sum plus `i`."""
    import ray

    time.sleep(seconds)
    return ray.get_runtime_context().get_node_id(), os.getpid(), float(shared.sum()) + i


def killed_once(marks: Path) -> str:
    """SIGKILLs its own worker process 2 s into the first attempt (mid-task: the engine has heard where it
    started, so it can count the rerun as a retry; a worker dead before that is a rerun it cannot see); returns "ok" on the next."""
    if _attempt(marks, "kill") == 0:
        time.sleep(2.0)
        os.kill(os.getpid(), 9)
    return "ok"


def sleep_where(marks: Path, key: str, seconds: float) -> str:
    """Record where it started (node id in the mark), sleep, return the node it finished on."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    marks.mkdir(parents=True, exist_ok=True)
    earlier = len(list(marks.glob(f"{key}.*")))
    (marks / f"{key}.{earlier}").write_text(node)
    time.sleep(seconds)
    return node


def bad_config(marks: Path) -> None:
    _attempt(marks, "bad")
    raise ConfigError("configs/competition.yaml: ray.num_cpus: expected at least 1, got 0")


def bug() -> None:
    raise ZeroDivisionError("division by zero in a unit")


def long_sleep(marks: Path, key: str) -> str:
    _attempt(marks, key)
    time.sleep(60)
    (marks / f"{key}.finished").write_text("")
    return key


def square(x: int) -> int:
    return x * x


def steps_seen(total: int) -> tuple[float, float | None]:
    """Report half of `total` steps, then read the progress display's "steps" row (completed, total)."""
    report_step(total // 2, total)
    live = console_module._live
    assert live is not None
    row = next(t for t in live.tasks if t.visible and t.total == total)
    return row.completed, row.total


def collect(engine: Any, tasks: list[Task[Any]], title: str = "test") -> dict[str, Any]:
    """Run `tasks`; every result by key, checking that each key is handed over once."""
    results: dict[str, Any] = {}

    def on_result(task: Task[Any], result: Any) -> None:
        assert task.key not in results, f"{task.key} handed over twice"
        results[task.key] = result

    engine.run(tasks, on_result, title)
    return results


def per_node(text: str) -> dict[str, tuple[int, int, int]]:
    """The engine's closing table (node -> done, failed, retried) from the captured terminal output."""
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in text.splitlines() if line.startswith("│")]
    return {row[0]: (int(row[1]), int(row[2]), int(row[3])) for row in rows}


# ---- the local engine ----


def test_local_engine_runs_in_order_and_hands_over_each_result() -> None:
    order: list[str] = []
    tasks = [Task(f"t{i}", square, (i,)) for i in range(4)]
    LocalEngine().run(tasks, lambda task, result: order.append(f"{task.key}={result}"), "squares")
    assert order == ["t0=0", "t1=1", "t2=4", "t3=9"]


def test_local_engine_raises_the_tasks_user_error_and_stops(tmp_path: Path) -> None:
    seen: list[str] = []
    tasks = [Task("a", square, (2,)), Task("b", bad_config, (tmp_path,)), Task("c", square, (3,))]
    with pytest.raises(ConfigError, match="ray.num_cpus: expected at least 1"):
        LocalEngine().run(tasks, lambda task, result: seen.append(task.key), "stops")
    assert seen == ["a"]


def test_report_step_reaches_the_local_progress_bar() -> None:
    results = collect(LocalEngine(), [Task("steps", steps_seen, (8,))])
    assert results["steps"] == (4, 8)
    report_step(1, 2)  # outside a run: no engine listens, nothing happens


def test_engine_ray_without_ray_installed_is_one_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if Ray were not installed
    monkeypatch.delitem(sys.modules, "competition.ray_engine", raising=False)
    with pytest.raises(UserError, match=r"engine=ray needs Ray: pip install 'iceberg-harness\[ray\]'"), open_engine("ray", RayConfig()):
        pass


# ---- the Ray engine: a local Ray of its own (before the module's cluster starts) ----


def test_open_engine_ray_starts_and_stops_a_local_ray() -> None:
    import ray

    assert not ray.is_initialized()
    with open_engine("ray", RayConfig(num_cpus=1)) as engine:
        assert engine.name == "ray"
        assert ray.is_initialized()
        assert ray.cluster_resources()["CPU"] == 1
        # a harness function: the workers of this Ray import it from the installed package
        assert collect(engine, [Task("json", as_json, ({"a": [1, 2]},))]) == {"json": '{"a": [1, 2]}'}
    assert not ray.is_initialized()


def test_an_unreachable_head_is_one_user_error() -> None:
    import ray

    with pytest.raises(UserError, match=r"ray.address=127.0.0.1:1: no Ray head answers there"), open_engine("ray", RayConfig(address="127.0.0.1:1")):
        pass
    assert not ray.is_initialized()


def test_a_malformed_address_or_local_sizes_with_an_address_are_config_errors() -> None:
    for address in ("headnode", "ray://headnode:10001"):
        expected = rf"ray.address: expected null, auto or HOST:PORT \(the head's GCS port\), got '{address}'"
        with pytest.raises(ConfigError, match=expected), open_engine("ray", RayConfig(address=address)):
            pass
    with pytest.raises(ConfigError, match="ray.num_cpus and ray.num_gpus size a local Ray"), open_engine("ray", RayConfig(address="auto", num_cpus=2)):
        pass


DRIVER = """
from competition.config import RayConfig
from competition.engine import Task, open_engine
from competition.errors import UserError, as_json
try:
    with open_engine("ray", RayConfig(address="{address}")) as engine:
        engine.run([Task("json", as_json, ([1],))], lambda task, result: print("result", result), "auth")
except UserError as err:
    print("UserError", err)
"""


@pytest.mark.slow  # ~35 s: a head and two drivers, each its own process
def test_a_driver_given_a_token_heads_address_sends_its_token() -> None:
    """Ray sends the token for `auto` only; with HOST:PORT and RAY_AUTH_MODE unset the engine turns it on (ray#64755)."""
    with token_auth_head() as address:
        env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"} | {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
        runs = {
            mode: subprocess.run([sys.executable, "-c", DRIVER.format(address=address)], env=env | extra, capture_output=True, text=True, timeout=120)
            for mode, extra in (("unset", {}), ("disabled", {"RAY_AUTH_MODE": "disabled"}))
        }
    assert "result [1]" in runs["unset"].stdout, runs["unset"].stderr[-2000:]
    refused = [line for line in runs["disabled"].stdout.splitlines() if line.startswith("UserError")]
    assert refused and f"ray.address={address}: cannot connect" in refused[0] and "RAY_AUTH_MODE=token" in refused[0]


# ---- the Ray engine on the module's two-node cluster ----


@pytest.fixture(scope="module")
def engine(ray_cluster: Any) -> Any:
    with open_engine("ray", RayConfig(max_retries=3)) as opened:
        yield opened


def test_tasks_spread_over_both_nodes_and_read_a_shared_array(engine: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import ray

    shared = engine.share(np.arange(10, dtype=np.float32))
    results = collect(engine, [Task(f"t{i}", where, (shared, i, 0.3)) for i in range(4)], "spread")
    assert sorted(results) == [f"t{i}" for i in range(4)]
    assert [results[f"t{i}"][2] for i in range(4)] == [45.0 + i for i in range(4)]
    assert {node for node, _, _ in results.values()} == {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len({pid for _, pid, _ in results.values()}) == 4  # a fresh worker process per task
    assert os.getpid() not in {pid for _, pid, _ in results.values()}
    table = per_node(capsys.readouterr().err)
    assert len(table) == 2 and all(label.startswith("127.0.0.1 ") for label in table)
    assert sum(done for done, _, _ in table.values()) == 4 and all(row[1:] == (0, 0) for row in table.values())


def test_a_killed_worker_is_retried(engine: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert collect(engine, [Task("kill", killed_once, (tmp_path,))]) == {"kill": "ok"}
    assert len(list(tmp_path.glob("kill.*"))) == 2
    rows = per_node(capsys.readouterr().err).values()  # the retry may land on either node
    assert [sum(column) for column in zip(*rows, strict=True)] == [1, 0, 1]  # done once, after a retry, none failed


def test_a_user_error_reaches_the_driver_once_and_the_rest_is_cancelled(engine: Any, tmp_path: Path) -> None:
    import ray

    tasks = [Task("bad", bad_config, (tmp_path,)), Task("long1", long_sleep, (tmp_path, "long1")), Task("long2", long_sleep, (tmp_path, "long2"))]
    with pytest.raises(ConfigError, match=r"^configs/competition.yaml: ray.num_cpus: expected at least 1, got 0$"):
        collect(engine, tasks)
    assert len(list(tmp_path.glob("bad.*"))) == 1  # not retried
    assert not list(tmp_path.glob("*.finished"))
    total = ray.cluster_resources()["CPU"]
    for _ in range(60):  # the cancelled tasks' workers were killed: their CPUs come back
        if ray.available_resources().get("CPU", 0) == total:
            break
        time.sleep(0.5)
    assert ray.available_resources().get("CPU", 0) == total


def test_another_exception_is_a_user_error_naming_the_task(engine: Any) -> None:
    with pytest.raises(UserError, match=r"^unit-3: ZeroDivisionError: division by zero in a unit$"):
        collect(engine, [Task("unit-3", bug)])


def test_a_gpu_request_no_node_can_meet_is_refused_up_front(engine: Any) -> None:
    with pytest.raises(UserError, match=r"gpu-unit needs 1 CPUs and 1 GPUs at once, but no node of the Ray cluster has that many"):
        collect(engine, [Task("gpu-unit", square, (2,), Resources(cpus=1, gpus=1))])


@pytest.mark.slow  # ~20-25 s: a node's start, the health checks' verdict, the rerun
def test_a_lost_nodes_task_is_finished_on_another_node(engine: Any, ray_cluster: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Three 1-CPU nodes, three tasks: the added node's task is rerun elsewhere when the node is removed mid-task."""
    doomed = ray_cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    ray_cluster.wait_for_nodes()
    doomed_id = doomed.node_id

    def remove_when_started() -> None:
        for _ in range(240):
            if any(p.read_text() == doomed_id for p in tmp_path.glob("*.0")):
                ray_cluster.remove_node(doomed)
                return
            time.sleep(0.25)

    remover = threading.Thread(target=remove_when_started)
    remover.start()
    try:
        results = collect(engine, [Task(f"s{i}", sleep_where, (tmp_path, f"s{i}", 6.0)) for i in range(3)], "node loss")
    finally:
        remover.join()
    moved = [key for key in results if (tmp_path / f"{key}.0").read_text() == doomed_id]
    assert len(moved) == 1
    assert results[moved[0]] != doomed_id  # finished on a surviving node
    assert len(list(tmp_path.glob(f"{moved[0]}.*"))) == 2
    table = per_node(capsys.readouterr().err)
    assert sum(done for done, _, _ in table.values()) == 3 and sum(retried for _, _, retried in table.values()) == 1
    assert table[next(label for label in table if label.endswith(doomed_id[:8]))][0] == 0  # the lost node finished none
