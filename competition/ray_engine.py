"""The Ray engine: every task a Ray task in a fresh worker process, on a local Ray or on a cluster.

The contract is competition.engine's; this module is imported only when `engine: ray` is chosen. The
pattern is AutoGluon's parallel bagged folds (`ParallelFoldFittingStrategy`): large inputs `ray.put`
once, one task per unit with `max_calls=1` (a fresh process each: the torch-before-TensorFlow rule
holds and GPU memory is released when the unit ends), a `ray.wait` loop that hands each result to the
driver as it lands, and the rest cancelled on the first error. Ray reruns a task whose worker process
or node died (`ray.max_retries`); an exception raised by the task itself is never retried.

The driver shows one live view (tasks done, running and failed, per node) and a table at the end.
Workers' output stays in Ray's logs on their nodes (/tmp/ray/session_latest/logs); a task's error
comes back with the task. How to run on a real cluster: docs/distributed.md.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import ray
from ray import ObjectRefGenerator
from ray.exceptions import RayError, RayTaskError, TaskCancelledError

from competition.config import COMPETITION_CONFIG, EngineName, RayConfig
from competition.console import NestableProgress, console, progress, table
from competition.errors import ConfigError, UserError
from competition.task import R, Task

WAIT_S = 1.0  # the driver wakes at least this often while tasks run (Ctrl-C is seen, the view stays live)
CONNECT_TIMEOUT_S = 10.0  # a head that does not accept a TCP connection within this is reported, not waited for
CHECK = (
    "check that the head is running (`ray status` on it), the address and port (the head's GCS port, 6379 unless "
    "changed), and token authentication (RAY_AUTH_MODE=token with RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH; docs/distributed.md)"
)


@ray.remote(num_returns="streaming", max_calls=1)
def _run_task(fn: Callable[..., Any], *args: Any) -> Iterator[Any]:
    """One task in its worker: yields where it runs, `(node id, worker id)`, as it starts, then `(node id, worker id, fn(*args))`.

    A task Ray reran after its worker or node died ends in another worker than the one it started in
    (Ray drops the rerun's repeated first item). Shared values among `args` (ObjectRefs from
    `RayEngine.share`) arrive resolved, as Ray resolves top-level arguments. `max_calls=1`: the worker
    process exits after the task.
    """
    context = ray.get_runtime_context()
    place = (context.get_node_id(), context.get_worker_id())
    yield place
    yield (*place, fn(*args))


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _enable_token_auth(address: str) -> None:
    """Send this machine's Ray token to an explicit head address, as Ray itself does for `auto`.

    Ray 2.60 turns token authentication on for a new head, but a driver given HOST:PORT with
    RAY_AUTH_MODE unset does not send its token and is refused (InvalidAuthToken; ray#64755): when a
    token is at hand (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) and the mode is unset,
    Ray's own rule for `auto` turns token mode on (setting the variable alone is too late once Ray is imported).
    """
    from ray._private.authentication import authentication_token_setup as auth

    if address == "auto":
        return
    level = auth.logger.level
    auth.logger.setLevel(logging.ERROR)  # not its "Token authentication is enabled for this Ray cluster" note: the head decides
    try:
        auth.maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    finally:
        auth.logger.setLevel(level)


def _check_reachable(address: str) -> None:
    """Raise `UserError` at once when nothing accepts a connection at HOST:PORT (`ray.init` would retry for minutes).

    Raises `ConfigError` when `address` is not HOST:PORT; a Ray Client address (ray://) is refused: it is
    untested here, and the driver can run on a node of the cluster instead (ray.address=auto).
    """
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        raise ConfigError(f"{COMPETITION_CONFIG}: ray.address: expected null, auto or HOST:PORT (the head's GCS port), got {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        raise UserError(f"ray.address={address}: no Ray head answers there ({err.strerror or err}); {CHECK}") from None


def _connect(cfg: RayConfig) -> None:
    """Start a local Ray (address null) or connect to the cluster at `cfg.address`; errors are one-line `UserError`s."""
    quiet: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}
    if cfg.address is None:
        # "local", not None: None would join the last cluster started on this machine (/tmp/ray/ray_current_cluster)
        ray.init(address="local", num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus, include_dashboard=False, **quiet)
        return
    if cfg.num_cpus is not None or cfg.num_gpus is not None:
        raise ConfigError(
            f"{COMPETITION_CONFIG}: ray.num_cpus and ray.num_gpus size a local Ray (ray.address: null); the cluster at "
            f"ray.address={cfg.address} has the resources its nodes were started with: set them to null"
        )
    if cfg.address != "auto":
        _check_reachable(cfg.address)
    _enable_token_auth(cfg.address)
    try:
        ray.init(address=cfg.address, **quiet)
    except (ConnectionError, RuntimeError, ValueError, RayError) as err:
        raise UserError(f"ray.address={cfg.address}: cannot connect ({_first_line(err)}); {CHECK}") from None


def _check_resources(tasks: Sequence[Task[Any]]) -> None:
    """Raise `UserError` when a task asks for more CPUs or GPUs than any live node has (Ray would wait for ever)."""
    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    for need in dict.fromkeys(task.resources for task in tasks):
        if any(have.get("CPU", 0.0) >= need.cpus and have.get("GPU", 0.0) >= need.gpus for have in nodes):
            continue
        key = next(task.key for task in tasks if task.resources == need)
        cpus, gpus = max((n.get("CPU", 0.0) for n in nodes), default=0.0), max((n.get("GPU", 0.0) for n in nodes), default=0.0)
        raise UserError(
            f"{key} needs {need.cpus:g} CPUs and {need.gpus:g} GPUs at once, but no node of the Ray cluster has that many "
            f"(the largest have {cpus:g} CPUs, {gpus:g} GPUs): lower the profile's resources or add nodes that have them"
        )


@dataclass
class _NodeCounts:
    """What one node did in a batch: tasks running now, done, failed, and done here after their first worker died."""

    label: str
    running: int = 0
    done: int = 0
    failed: int = 0
    retried: int = 0


class _ClusterView:
    """The live view of one batch: a row for the batch (done of total, running, queued) and one per node."""

    def __init__(self, title: str, total: int) -> None:
        self.title, self.total = title, total
        self.nodes: dict[str, _NodeCounts] = {}
        self.rows: dict[str, Any] = {}
        self.labels: dict[str, str] = {}
        self.bar: NestableProgress = progress()
        self.batch: Any = None

    def __enter__(self) -> _ClusterView:
        self.bar.start()
        self.batch = self.bar.add_task(self.title, total=self.total)
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def _node(self, node_id: str) -> _NodeCounts:
        if node_id not in self.nodes:
            if node_id not in self.labels:  # a node that joined during the batch
                self.labels = {n["NodeID"]: f"{n['NodeManagerAddress']} {n['NodeID'][:8]}" for n in ray.nodes()}
            self.nodes[node_id] = _NodeCounts(self.labels.get(node_id, node_id[:8]))
            self.rows[node_id] = self.bar.add_task("", total=self.total)
        return self.nodes[node_id]

    def _refresh(self) -> None:
        running = sum(n.running for n in self.nodes.values())
        done = sum(n.done for n in self.nodes.values())
        queued = self.total - done - running - sum(n.failed for n in self.nodes.values())
        self.bar.update(self.batch, completed=done, description=f"{self.title}  running {running}, queued {queued}")
        for node_id, n in self.nodes.items():
            failed = f", failed {n.failed}" if n.failed else ""
            self.bar.update(self.rows[node_id], completed=n.done, description=f"  {n.label}  running {n.running}{failed}")

    def started(self, node_id: str) -> None:
        self._node(node_id).running += 1
        self._refresh()

    def landed(self, started_on: str, node_id: str, retried: bool) -> None:
        """A task that started on node `started_on` returned its result from `node_id`, after a retry or not."""
        self._node(started_on).running -= 1
        node = self._node(node_id)
        node.done += 1
        node.retried += retried
        self._refresh()

    def failed(self, started_on: str | None) -> None:
        if started_on is not None:
            node = self._node(started_on)
            node.running -= 1
            node.failed += 1
        self._refresh()

    def summary(self) -> None:
        """The per-node table: tasks done, failed, and done after a retry (their first worker, here or on a lost node, died)."""
        rows = [(n.label, n.done, n.failed, n.retried) for n in self.nodes.values()]
        if rows:
            console.print(table(f"{self.title}: tasks per Ray node", ["node", "done", "failed", "retried here"], rows))


class RayEngine:
    """Runs each task as a Ray task in a fresh worker process; results come back to the driver (competition.engine's contract)."""

    name: EngineName = "ray"

    def __init__(self, max_retries: int) -> None:
        self.max_retries = max_retries

    @classmethod
    @contextmanager
    def open(cls, cfg: RayConfig) -> Iterator[RayEngine]:
        """The engine on the Ray `cfg` names, for the duration of the block.

        address null: a local Ray (ray.num_cpus, ray.num_gpus) started here and stopped after the block;
        auto or HOST:PORT: that cluster, connected to and disconnected from (it keeps running). When Ray
        is already initialised in this process (a test's cluster), it is used and left as it was.
        Raises `UserError` (one line) when the cluster cannot be reached, `ConfigError` for a bad `ray:` section.
        """
        if ray.is_initialized():
            yield cls(cfg.max_retries)
            return
        _connect(cfg)
        try:
            yield cls(cfg.max_retries)
        finally:
            ray.shutdown()

    def share(self, value: Any) -> Any:
        """`value` in Ray's object store (put once; every task that takes the handle as an argument gets the value)."""
        return ray.put(value)

    def run(self, tasks: Sequence[Task[R]], on_result: Callable[[Task[R], R], None], title: str) -> None:
        """Run every task on the cluster, calling `on_result(task, result)` here as each lands (any order).

        Raises `UserError` up front when a task asks for resources no node has; the first task's
        `UserError` as raised in the task (the rest cancelled; results already handed over stay); and
        `UserError` naming the task's key when a task failed for good in another way (its worker or node
        died more than `max_retries` times, or it raised another exception, whose traceback is printed).
        """
        if not tasks:
            return
        _check_resources(tasks)
        pending: dict[ObjectRefGenerator, Task[R]] = {}
        started: dict[ObjectRefGenerator, tuple[str, str]] = {}  # (node id, worker id) each task started in
        view = _ClusterView(title, len(tasks))
        try:
            with view:
                for task in tasks:
                    options = {"num_cpus": task.resources.cpus, "num_gpus": task.resources.gpus, "name": task.key}
                    generator = _run_task.options(max_retries=self.max_retries, retry_exceptions=False, **options).remote(task.fn, *task.args)
                    pending[generator] = task
                while pending:
                    ready, _ = ray.wait(list(pending), num_returns=1, timeout=WAIT_S)
                    for generator in cast(list[ObjectRefGenerator], ready):
                        task = pending[generator]
                        try:
                            item: Any = ray.get(next(generator))
                        except RayError as err:
                            view.failed(started[generator][0] if generator in started else None)
                            raise self._error(task, err) from None
                        if generator not in started:
                            started[generator] = item
                            view.started(item[0])
                            continue
                        node_id, worker_id, result = item
                        del pending[generator]
                        view.landed(started[generator][0], node_id, retried=(node_id, worker_id) != started[generator])
                        on_result(task, result)
        finally:
            for generator in pending:
                ray.cancel(generator, force=True)
            view.summary()

    def _error(self, task: Task[Any], err: RayError) -> UserError:
        """The one-line error the driver raises for a task that failed for good."""
        if isinstance(err, RayTaskError):
            if isinstance(err.cause, UserError):
                return err.cause
            console.print(str(err), markup=False, style="dim")  # a bug: its traceback, as the task printed it
            return UserError(f"{task.key}: {type(err.cause).__name__}: {_first_line(err.cause)}")
        if isinstance(err, TaskCancelledError):
            return UserError(f"{task.key}: cancelled outside the harness ({_first_line(err)})")
        return UserError(f"{task.key}: {type(err).__name__} after {self.max_retries} retries: {_first_line(err)}")
