"""Where the LightGBM stacker's Optuna studies live, whichever process runs them.

A stacker's `storage` is None (in memory), the path of an SQLite file (engine=local: the stack
folder's optuna.sqlite, opened by the process that runs the study), or `grpc://HOST:PORT`: the
driver's SQLite file served by Optuna's gRPC storage proxy, so studies that run as Ray tasks on
other nodes read and write the driver's file without a shared filesystem (Optuna's tutorial
recommends the proxy for many workers; it fronts RDB storages, not journal files, optuna#6084).
Each study stays sequential with its seeded sampler, so the proxy changes no result; a rerun
resumes from the trials the file holds. Imports Optuna (and gRPC when serving) only here and in
the stacker.
"""

from __future__ import annotations

import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna

from competition.errors import UserError

GRPC = "grpc://"
LOOPBACK = "127.0.0.1"
_STOP_GRACE_S = 5.0  # seconds the proxy lets calls in flight finish when the block ends
READY_TIMEOUT_S = 30.0  # how long a study waits for the driver's storage proxy before giving up


def sqlite_url(path: str | Path) -> str:
    """The SQLAlchemy URL of the SQLite file `path` (made absolute; its folder created)."""
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def grpc_address(spec: str) -> tuple[str, int]:
    """(host, port) of a `grpc://HOST:PORT` storage; ValueError when it is not one."""
    host, _, port = spec.removeprefix(GRPC).rpartition(":")
    if not spec.startswith(GRPC) or not host or not port.isdigit():
        raise ValueError(f"storage {spec!r} is not of the form {GRPC}HOST:PORT")
    return host, int(port)


@contextmanager
def opened(spec: str | Path | None) -> Iterator[optuna.storages.BaseStorage | str | None]:
    """What `optuna.create_study(storage=...)` takes for a stacker's `storage`: None, an SQLite URL, or a
    `GrpcStorageProxy` client (closed when the block ends). Raises ValueError for a malformed `grpc://`
    address and UserError when its server does not answer within READY_TIMEOUT_S (this node cannot
    reach the driver, or the driver is gone)."""
    if spec is None or not str(spec).startswith(GRPC):
        yield None if spec is None else sqlite_url(spec)
        return
    host, port = grpc_address(str(spec))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        client = optuna.storages.GrpcStorageProxy(host=host, port=port)
    try:
        client.wait_server_ready(READY_TIMEOUT_S)
    except ConnectionError:
        client.close()
        raise UserError(
            f"the stacker's study storage {spec} (served by the driver) did not answer in {READY_TIMEOUT_S:g} s on {socket.gethostname()}: "
            "check that the cluster's nodes can reach the driver's address and port (firewall), and that the driver still runs"
        ) from None
    try:
        yield client
    finally:
        client.close()


def reachable_host(cluster_address: str | None) -> str:
    """The address of this machine that workers can reach: loopback when the harness starts its own
    Ray here (`ray.address` unset: every worker runs on this machine), else the address of the
    interface of the default route (no packet is sent; loopback when there is no route)."""
    if cluster_address is None:
        return LOOPBACK
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.255", 9))  # TEST-NET-1 (RFC 5737): only selects the outgoing interface
            return str(probe.getsockname()[0])
        except OSError:
            return LOOPBACK


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@contextmanager
def served(path: Path, host: str) -> Iterator[str]:
    """Serve the SQLite file `path` through Optuna's gRPC storage proxy on a free port of `host`, in
    background threads of this process, for the duration of the block; yields the `grpc://HOST:PORT`
    address that tasks pass as the stacker's `storage`, and stops the server after.

    Optuna's `run_grpc_proxy_server` is `make_server` + start + wait for ever, with no way to stop
    it, so this uses `make_server` and stops the server itself.
    """
    from optuna.storages._grpc.server import make_server

    storage = optuna.storages.get_storage(sqlite_url(path))  # cached RDB storage, as Optuna's proxy docs advise
    port = _free_port(host)
    server = make_server(storage, host, port)
    server.start()
    try:
        yield f"{GRPC}{host}:{port}"
    finally:
        server.stop(_STOP_GRACE_S).wait()


@contextmanager
def for_engine(engine: str, path: Path, cluster_address: str | None) -> Iterator[str]:
    """The stacker's `storage` for studies run by `engine` on the SQLite file `path`: the path itself
    when they run in this process (engine=local), else the file served over gRPC (see `served`)
    on the address `reachable_host(cluster_address)` for the duration of the block."""
    if engine == "local":
        yield str(path)
        return
    with served(path, reachable_host(cluster_address)) as address:
        yield address
