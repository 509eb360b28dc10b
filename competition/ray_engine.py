"""The Ray engine: every task a Ray task, on a local Ray or on a cluster.

The contract is competition.engine's; this module is imported only when `engine: ray` is chosen. The
pattern is AutoGluon's parallel bagged folds (`ParallelFoldFittingStrategy`): large inputs `ray.put`
once, one task per unit, in a fresh worker process by default (`max_calls=1`: the torch-before-TensorFlow
rule holds and GPU memory is released when the unit ends) or in a kept process of the task's pool
(`Task.worker`: CPU units, one pool per framework, and the stacker's tasks; imports paid once), a `ray.wait` loop that hands each result to the
driver as it lands, and the rest cancelled on the first error. Ray reruns a task whose worker process
or node died (`ray.max_retries`); an exception raised by the task itself is never retried.

The driver shows one live view (tasks done, running and failed, per node) and a table at the end.
Workers' output stays in Ray's logs on their nodes (/tmp/ray/session_latest/logs); a task's error
comes back with the task. How to run on a real cluster: docs/distributed.md.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import ray
from ray import ObjectRefGenerator
from ray.exceptions import RayError, RayTaskError, TaskCancelledError

from competition.config import EngineName, RayConfig, parse_host_port
from competition.console import NestableProgress, console, progress, table
from competition.errors import UserError
from competition.task import R, Task

WAIT_S = 1.0  # the driver wakes at least this often while tasks run (Ctrl-C is seen, the view stays live)
PROBE_TIMEOUT_S = 5.0  # a head whose GCS does not answer one request within this is reported, not waited for
CHECK = (
    "check that the head is running (`ray status` on it), the address and port (the head's GCS port, 6379 unless "
    "changed), and token authentication (RAY_AUTH_MODE=token with RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH; docs/distributed.md)"
)


POOL_VARIABLE = "COMPETITION_WORKER_POOL"  # set in the workers of a pool (`Task.worker`): Ray starts them apart from the rest


def _task_body(fn: Callable[..., Any], *args: Any) -> Iterator[Any]:
    """One task in its worker: yields where it runs, `(node id, attempt)`, as it starts, then `(node id, attempt, fn(*args))`.

    `attempt` is Ray's count of earlier runs of this task (0 the first time, 1 after its first worker
    or node died, ...), so the driver counts a rerun even when the first worker died before its start
    was reported (Ray drops the rerun's repeated first item; the last item says which run finished).
    Shared values among `args` (ObjectRefs from `RayEngine.share`) arrive resolved, as Ray resolves
    top-level arguments. It runs as `_in_fresh_worker` or `_in_pool_worker`.
    """
    # Ray 2.60.0 (pinned) has no public accessor for the attempt; the core worker's is what Ray's task events record.
    worker: Any = ray._private.worker.global_worker
    attempt = worker.core_worker.get_current_task_attempt_number()
    place = (ray.get_runtime_context().get_node_id(), attempt)
    yield place
    yield (*place, fn(*args))


# max_calls=1: the worker process exits after the task. max_calls=0: it stays for the next task of
# its pool; Ray reuses a process only for tasks of the same runtime environment, so a pool's env_vars
# (`_pool_options`) keep fresh-worker tasks out of pool processes and the pools apart (a fresh-worker
# task was measured landing in a kept process that had torch loaded when they shared one).
_in_fresh_worker = ray.remote(num_returns="streaming", max_calls=1)(_task_body)
_in_pool_worker = ray.remote(num_returns="streaming", max_calls=0)(_task_body)


def _pool_options(task: Task[Any]) -> dict[str, Any]:
    """Ray's options for one task: its resources, its name, and its pool's environment when it has one (the pool's
    name, and no visible GPU)."""
    options: dict[str, Any] = {"num_cpus": task.resources.cpus, "num_gpus": task.resources.gpus, "name": task.key}
    if task.worker is not None:
        # A pool's tasks hold no GPU, but Ray hides none from a task that asks for none: CUDA_VISIBLE_DEVICES="" keeps a kept
        # process from taking GPU memory it would hold for its whole life (torch's device auto, TensorFlow's whole-GPU default).
        options["runtime_env"] = {"env_vars": {POOL_VARIABLE: task.worker, "CUDA_VISIBLE_DEVICES": ""}}
    return options


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _enable_token_auth() -> None:
    """Send this machine's Ray token to the head, as Ray itself does only for `auto` found on this machine.

    Ray 2.60 turns token authentication on for a new head, but a driver given HOST:PORT with
    RAY_AUTH_MODE unset does not send its token and is refused (InvalidAuthToken; ray#64755): when a
    token is at hand (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) and the mode is unset,
    Ray's own rule for `auto` turns token mode on (setting the variable alone is too late once Ray is imported).
    The engine always connects to an explicit address (it resolves `auto` itself), so the rule applies to both.
    """
    from ray._private.authentication import authentication_token_setup as auth

    level = auth.logger.level
    auth.logger.setLevel(logging.ERROR)  # not its "Token authentication is enabled for this Ray cluster" note: the head decides
    try:
        auth.maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    finally:
        auth.logger.setLevel(level)


@dataclass(frozen=True)
class _Head:
    """The head the driver connects to: the GCS address Ray dials, how `ray.address` led there (for
    messages), and what to do when it does not answer."""

    gcs: str
    given: str
    fix: str


def _auto() -> tuple[str, str]:
    """The address `ray.address=auto` stands for and where it came from: RAY_ADDRESS, else the file `ray start` writes.

    Ray's own order for `auto` (ray._private.services.get_ray_address_from_environment, Ray 2.60.0 pinned)
    without its last resort, any GCS process `ps` shows: on a shared machine that is another user's Ray.
    Raises `UserError` when neither names a cluster.
    """
    from ray._common.utils import get_ray_address_file
    from ray._private.ray_constants import RAY_ADDRESS_ENVIRONMENT_VARIABLE
    from ray._private.utils import read_ray_address

    if os.environ.get(RAY_ADDRESS_ENVIRONMENT_VARIABLE, "auto") != "auto":  # RAY_ADDRESS=auto: the file, as in Ray
        return os.environ[RAY_ADDRESS_ENVIRONMENT_VARIABLE], f"the environment variable {RAY_ADDRESS_ENVIRONMENT_VARIABLE}"
    path = get_ray_address_file(None)
    if address := read_ray_address(None):
        return address, path
    raise UserError(
        f"ray.address=auto: no Ray cluster to join on this machine (neither {RAY_ADDRESS_ENVIRONMENT_VARIABLE} nor {path}, which "
        "`ray start --head` writes, names one): start the cluster here first, give its head as ray.address=HOST:PORT, or set "
        "ray.address=null for a local Ray"
    )


def _head(address: str) -> _Head:
    """Where `ray.address` (auto or HOST:PORT) leads: the GCS address Ray itself would dial.

    Ray replaces a loopback host (127.0.0.1, localhost) with this machine's routable address unless
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (ray._private.services.canonicalize_bootstrap_address, Ray 2.60.0
    pinned), so that is the address probed and connected to. Raises `UserError` for an `auto` that names
    no cluster or a malformed one.
    """
    from ray._private.services import canonicalize_bootstrap_address

    given, fix = f"ray.address={address}", CHECK
    if address == "auto":
        address, origin = _auto()
        given = f"ray.address=auto ({address}, from {origin})"
        fix = f"start that cluster, point {origin} at a running one, give its head as ray.address=HOST:PORT, or set ray.address=null for a local Ray"
        if parse_host_port(address) is None:
            raise UserError(f"{given}: expected HOST:PORT (the head's GCS port; ray:// is not supported): {fix}")
    gcs = canonicalize_bootstrap_address(address) or address
    if gcs != address:
        given += f" (Ray dials {gcs}: it replaces a loopback host with this machine's address unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0)"
    return _Head(gcs, given, fix)


def _probe(head: _Head) -> None:
    """Raise `UserError` unless a Ray GCS answers one request at `head.gcs` within `PROBE_TIMEOUT_S` (`ray.init`
    would retry for minutes against an address that refuses, stays silent, or speaks another protocol).

    The request is the GCS's own `GetClusterId`, over Ray's channel (ray._private.grpc_utils, which adds the
    token when token mode is on); a head that refuses the token is reported as such.
    """
    import grpc
    from ray._private.grpc_utils import init_grpc_channel
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    channel = init_grpc_channel(head.gcs)
    try:
        request = cast(Any, gcs_service_pb2).GetClusterIdRequest()  # generated protobuf code: no stubs for mypy
        gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel).GetClusterId(request, timeout=PROBE_TIMEOUT_S)
    except grpc.RpcError as err:
        code, detail = err.code(), (err.details() or "").rpartition(": ")[2].strip("[] ")
        if code == grpc.StatusCode.UNAUTHENTICATED:
            raise UserError(
                f"{head.given}: cannot connect: the Ray head refused this driver's token ({detail}); give the driver the cluster's "
                "token: RAY_AUTH_MODE=token with RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH (docs/distributed.md, Token authentication)"
            ) from None
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            detail = f"no answer within {PROBE_TIMEOUT_S:g} s: a port that is not a Ray head's GCS port, or a firewall"
        elif code != grpc.StatusCode.UNAVAILABLE:
            detail = f"gRPC {code.name}: something answers there, but not as a Ray head's GCS"
        raise UserError(f"{head.given}: no Ray head answers there ({detail}); {head.fix}") from None
    finally:
        channel.close()


def _connect(cfg: RayConfig) -> None:
    """Start a local Ray (address null) or connect to the cluster at `cfg.address`; errors are one-line `UserError`s."""
    quiet: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}
    if cfg.address is None:
        # "local", not None: None would join the last cluster started on this machine (/tmp/ray/ray_current_cluster)
        ray.init(address="local", num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus, include_dashboard=False, **quiet)
        return
    head = _head(cfg.address)
    _enable_token_auth()
    _probe(head)
    try:
        ray.init(address=head.gcs, **quiet)
    except (ConnectionError, RuntimeError, ValueError, RayError) as err:
        raise UserError(f"{head.given}: cannot connect ({_first_line(err)}); run the command on a node of the cluster; {CHECK}") from None


def _check_resources(tasks: Sequence[Task[Any]], local: bool) -> None:
    """Raise `UserError` when a task asks for more CPUs or GPUs than any live node has (Ray would wait for ever).

    The message names the fix: the request lowered to what the largest node has (a training unit's
    `resources.cpus` / `resources.gpus`; `resources.cpus: null` is every core of the machine the run was
    planned on), or, for the local Ray the harness started (`local`), `ray.num_cpus` / `ray.num_gpus` raised.
    """
    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    for need in dict.fromkeys(task.resources for task in tasks):
        if any(have.get("CPU", 0.0) >= need.cpus and have.get("GPU", 0.0) >= need.gpus for have in nodes):
            continue
        key = next(task.key for task in tasks if task.resources == need)
        cpus, gpus = max((n.get("CPU", 0.0) for n in nodes), default=0.0), max((n.get("GPU", 0.0) for n in nodes), default=0.0)
        short = [(name, want, have) for name, want, have in (("cpus", need.cpus, cpus), ("gpus", need.gpus, gpus)) if want > have]
        lower = " and ".join(f"resources.{name}={have:g}" + (" or less" if have else "") for name, _, have in short)
        more = " and ".join(f"ray.num_{name}={want:g}" for name, want, _ in short)
        grow = f"or {more} (the size of the local Ray the harness starts, at most this machine's)" if local else "or add nodes that have them"
        raise UserError(
            f"{key} needs {need.cpus:g} CPUs and {need.gpus:g} GPUs at once, but no node of the Ray cluster has that many "
            f"(the largest have {cpus:g} CPUs, {gpus:g} GPUs): set {lower} (a training unit's profile; resources.cpus: null "
            f"is every core of this machine) {grow}"
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
    """The live view of one batch: a row for the batch (done of total, running, waiting) and one per node.

    "waiting": submitted, start not yet reported: queued for resources, or given them and starting a
    worker process (about 2 s each here); the driver cannot tell these apart without Ray's state API.
    """

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
        waiting = self.total - done - running - sum(n.failed for n in self.nodes.values())
        self.bar.update(self.batch, completed=done, description=f"{self.title}  running {running}, waiting {waiting}")
        for node_id, n in self.nodes.items():
            failed = f", failed {n.failed}" if n.failed else ""
            self.bar.update(self.rows[node_id], completed=n.done, description=f"  {n.label}  running {n.running}{failed}")

    def started(self, node_id: str) -> None:
        self._node(node_id).running += 1
        self._refresh()

    def landed(self, started_on: str, node_id: str, retried: bool) -> None:
        """A task whose start was reported from node `started_on` returned its result from `node_id`, after a rerun or not."""
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
    """Runs each task as a Ray task (a fresh worker process, or a kept one of the task's pool); results come back to the driver (competition.engine's contract)."""

    name: EngineName = "ray"

    def __init__(self, max_retries: int, local: bool = False) -> None:
        self.max_retries = max_retries
        self.local = local  # a local Ray this engine started (its size is ray.num_cpus, ray.num_gpus)

    @classmethod
    @contextmanager
    def open(cls, cfg: RayConfig) -> Iterator[RayEngine]:
        """The engine on the Ray `cfg` names, for the duration of the block.

        address null: a local Ray (ray.num_cpus, ray.num_gpus) started here and stopped after the block;
        auto or HOST:PORT: that cluster, connected to and disconnected from (it keeps running). When Ray
        is already initialised in this process (a test's cluster), it is used and left as it was.
        Raises `UserError` (one line, within seconds: the head's GCS is probed first) when the cluster cannot
        be reached, `ConfigError` for a bad `ray:` section.
        """
        if ray.is_initialized():
            yield cls(cfg.max_retries)
            return
        _connect(cfg)
        try:
            yield cls(cfg.max_retries, local=cfg.address is None)
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
        _check_resources(tasks, self.local)
        pending: dict[ObjectRefGenerator, Task[R]] = {}
        started: dict[ObjectRefGenerator, str] = {}  # the node each task's start was reported from
        view = _ClusterView(title, len(tasks))
        try:
            with view:
                for task in tasks:
                    remote = _in_fresh_worker if task.worker is None else _in_pool_worker
                    options = _pool_options(task)
                    generator = remote.options(max_retries=self.max_retries, retry_exceptions=False, **options).remote(task.fn, *task.args)
                    pending[generator] = task
                while pending:
                    ready, _ = ray.wait(list(pending), num_returns=1, timeout=WAIT_S)
                    for generator in cast(list[ObjectRefGenerator], ready):
                        task = pending[generator]
                        try:
                            item: Any = ray.get(next(generator))
                        except RayError as err:
                            view.failed(started.get(generator))
                            raise self._error(task, err) from None
                        if generator not in started:
                            started[generator] = item[0]
                            view.started(item[0])
                            continue
                        node_id, attempt, result = item
                        del pending[generator]
                        view.landed(started[generator], node_id, retried=attempt > 0)
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
