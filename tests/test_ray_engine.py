"""The engines' contract (competition.engine): the local engine in this process, and the Ray engine on
a real two-node Ray cluster on loopback (tests/ray_cluster.py): results handed to the driver as they
land, shared inputs, a killed worker retried, a lost node's task rerun on the other node, a user error
reported once and never retried, impossible resource requests refused, a local Ray started and stopped."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from competition import console as console_module
from competition.config import RayConfig, load_competition
from competition.engine import LocalEngine, Resources, Task, open_engine, report_step
from competition.errors import ConfigError, UserError, as_json
from competition.overrides import route
from pydantic import ValidationError

from ray_cluster import auth_token, token_auth_head

ROOT = Path(__file__).resolve().parents[1]

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


def process() -> tuple[int, str | None, str | None]:
    """This worker process, the pool its environment names (None: a fresh worker) and the GPUs it may see."""
    from competition.ray_engine import POOL_VARIABLE

    return os.getpid(), os.environ.get(POOL_VARIABLE), os.environ.get("CUDA_VISIBLE_DEVICES")


def killed_once(marks: Path) -> str:
    """SIGKILLs its own worker process at once on the first attempt (often before its start reaches the
    driver, a rerun only the task's attempt number shows); returns "ok" on the next."""
    if _attempt(marks, "kill") == 0:
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
        # a profile's `resources.cpus: null` on a 2-core machine, against ray.num_cpus=1: the refusal names both fixes
        fixes = r"set resources.cpus=1 or less \(a training unit's profile; .*\) or ray.num_cpus=2 \(the size of the local Ray"
        with pytest.raises(UserError, match=rf"^unit needs 2 CPUs and 0 GPUs at once, .*: {fixes}"):
            collect(engine, [Task("unit", square, (2,), Resources(cpus=2))])
    assert not ray.is_initialized()


@pytest.fixture
def loopback_rewrite(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Sets whether Ray replaces a loopback host with this machine's address (its default on Linux; off on loopback clusters)."""
    from ray._private import ray_constants

    return lambda on: monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", on)


@pytest.fixture
def no_ray_address(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No RAY_ADDRESS, and Ray's temporary folder in `tmp_path` (`auto`'s file: tmp_path/ray/ray_current_cluster, absent)."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    return tmp_path / "ray" / "ray_current_cluster"


def refused(address: str) -> str:
    """The one-line `UserError` open_engine raises for `ray.address=address`; Ray is left uninitialised."""
    import ray

    with pytest.raises(UserError) as caught, open_engine("ray", RayConfig(address=address)):
        pass
    assert not ray.is_initialized()
    assert "\n" not in str(caught.value)
    return str(caught.value)


def test_an_unreachable_head_is_one_user_error_naming_the_address_ray_dials(loopback_rewrite: Any) -> None:
    from ray._private.services import get_node_ip_address

    loopback_rewrite(False)
    assert refused("127.0.0.1:1").startswith("ray.address=127.0.0.1:1: no Ray head answers there (Connection refused); check that the head")
    loopback_rewrite(True)  # a plain driver on Linux: 127.0.0.1 becomes this machine's address
    assert refused("127.0.0.1:1").startswith(f"ray.address=127.0.0.1:1 (Ray dials {get_node_ip_address()}:1: it replaces a loopback host")


def test_a_port_that_is_no_ray_head_is_refused_within_seconds(loopback_rewrite: Any, no_ray_address: Path) -> None:
    """An HTTP server as HOST:PORT, and a socket that accepts but never answers as the stale cluster `auto` finds."""
    loopback_rewrite(False)
    http = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    silent = socket.create_server(("127.0.0.1", 0))
    stale = f"127.0.0.1:{silent.getsockname()[1]}"
    try:
        address = f"127.0.0.1:{http.server_address[1]}"
        assert refused(address).startswith(f"ray.address={address}: no Ray head answers there (Failed parsing HTTP/2")
        no_ray_address.parent.mkdir(parents=True)
        no_ray_address.write_text(stale)
        start = time.monotonic()
        message = refused("auto")
        assert time.monotonic() - start < 15  # the probe's 5 s, not Ray's minutes of retries
    finally:
        http.shutdown()
        silent.close()
    expected = f"ray.address=auto ({stale}, from {no_ray_address}): no Ray head answers there (no answer within 5 s"
    assert message.startswith(expected) and message.endswith("or set ray.address=null for a local Ray")


def test_auto_without_a_cluster_file_or_ray_address_is_one_user_error(no_ray_address: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = f"ray.address=auto: no Ray cluster to join on this machine (neither RAY_ADDRESS nor {no_ray_address}, which `ray start --head` writes"
    assert refused("auto").startswith(expected)
    monkeypatch.setenv("RAY_ADDRESS", "auto")  # as in Ray: look for the file
    assert refused("auto").startswith(expected)
    monkeypatch.setenv("RAY_ADDRESS", "ray://headnode:10001")  # RAY_ADDRESS comes before the file, as in Ray
    assert refused("auto").startswith("ray.address=auto (ray://headnode:10001, from the environment variable RAY_ADDRESS): expected HOST:PORT")


def test_a_bad_address_is_refused_when_the_config_is_read_naming_its_source(tmp_path: Path) -> None:
    """Under any engine, before a run folder exists; the message says whether the value came from the YAML file or the command line."""
    for address in ("headnode", "ray://headnode:10001", "headnode:0", "headnode:65536"):
        with pytest.raises(ValidationError, match=r"expected null, auto or HOST:PORT with a port 1-65535"):
            RayConfig(address=address)
    for address in (None, "auto", "headnode:6379", "10.0.0.1:1", "[::1]:65535"):
        assert RayConfig(address=address).address == address
    experiment = f"helperA1-{tmp_path.name}"
    run = subprocess.run(
        [sys.executable, "-m", "competition", "train", "mobilenetv2_100_probe", "engine=ray", "ray.address=foo", f"experiment={experiment}"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "error: command line: key 'ray.address' (from a command-line override): expected null, auto or HOST:PORT with a port 1-65535 "
        "(the head's GCS port, 6379 unless changed; ray:// is not supported), got 'foo'"
    ]
    assert not (ROOT / "runs" / experiment).exists()
    config = tmp_path / "competition.yaml"
    config.write_text("ray:\n  address: headnode\n")
    with pytest.raises(ConfigError, match=rf"^{config}: key 'ray.address': expected null, auto or HOST:PORT"):
        load_competition(path=config)


def test_local_sizes_with_an_address_are_refused_when_the_config_is_read() -> None:
    overrides = route(["ray.address=auto", "ray.num_cpus=2"], "train")
    with pytest.raises(ConfigError, match=r"^command line: key 'ray': ray.num_cpus and ray.num_gpus size a local Ray \(ray.address: null\)"):
        overrides.apply_competition(load_competition())


DRIVER = """
import sys
from competition.config import RayConfig
from competition.engine import Task, open_engine
from competition.errors import UserError, as_json
try:
    with open_engine("ray", RayConfig(address=sys.argv[1])) as engine:
        engine.run([Task("json", as_json, ([1],))], lambda task, result: print("result", result), "auth")
except UserError as err:
    print("UserError", err)
"""


@pytest.mark.slow  # ~50 s: a head and three drivers, each its own process
def test_a_driver_given_a_token_heads_address_sends_its_token() -> None:
    """Ray sends the token for an `auto` it finds itself only; the engine turns it on for HOST:PORT and for the
    `auto` it resolves (RAY_ADDRESS here) when RAY_AUTH_MODE is unset (ray#64755); a loopback head connects."""
    with auth_token(), token_auth_head() as address:
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")} | {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
        runs = {
            mode: subprocess.run([sys.executable, "-c", DRIVER, given], env=env | extra, capture_output=True, text=True, timeout=120)
            for mode, given, extra in (
                ("unset", address, {}),
                ("auto", "auto", {"RAY_ADDRESS": address}),
                ("disabled", address, {"RAY_AUTH_MODE": "disabled"}),
            )
        }
    for mode in ("unset", "auto"):
        assert "result [1]" in runs[mode].stdout, runs[mode].stdout[-2000:] + runs[mode].stderr[-2000:]
    lines = [line for line in runs["disabled"].stdout.splitlines() if line.startswith("UserError")]
    assert lines and f"ray.address={address}: cannot connect" in lines[0] and "RAY_AUTH_MODE=token" in lines[0], runs["disabled"].stdout[-2000:]


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


def test_a_pools_tasks_reuse_its_processes_and_no_other_task_runs_there(engine: Any) -> None:
    def batches(worker: str | None, n: int = 4) -> list[tuple[int, str | None, str | None]]:  # one task a batch: the last one's process is idle
        return [collect(engine, [Task("p", process, (), worker=worker)])["p"] for _ in range(n)]

    torch, fresh, stack = batches("torch"), batches(None), batches("stack")
    assert {pool for _, pool, _ in torch} == {"torch"} and {pool for _, pool, _ in stack} == {"stack"} and {pool for _, pool, _ in fresh} == {None}
    assert len({pid for pid, _, _ in torch}) <= 2 and len({pid for pid, _, _ in stack}) <= 2  # one task at a time: a kept process per node at most
    assert len({pid for pid, _, _ in fresh}) == 4  # a fresh process per task, never a pool's
    assert not {pid for pid, _, _ in torch} & {pid for pid, _, _ in fresh} and not {pid for pid, _, _ in torch} & {pid for pid, _, _ in stack}
    assert {gpus for _, _, gpus in torch + stack} == {""}  # a pool's kept processes see no GPU: they never hold one


def test_a_task_holding_gpus_cannot_be_pooled() -> None:
    with pytest.raises(ValueError, match="a task holding GPUs runs in a fresh process"):
        Task("unit", square, (1,), Resources(cpus=1, gpus=0.5), worker="torch")


def test_a_killed_worker_is_retried(engine: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert collect(engine, [Task("kill", killed_once, (tmp_path,))]) == {"kill": "ok"}
    assert len(list(tmp_path.glob("kill.*"))) == 2
    rows = per_node(capsys.readouterr().err).values()  # the retry may land on either node
    assert [sum(column) for column in zip(*rows, strict=True)] == [1, 0, 1]  # done once, after a retry (seen or not), none failed


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
    expected = r"^gpu-unit needs 1 CPUs and 1 GPUs at once, but no node of the Ray cluster has that many .*: set resources.gpus=0 \(.*\) or add nodes"
    with pytest.raises(UserError, match=expected):
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
