"""A two-node Ray cluster on loopback for tests of `engine=ray` (../shared/docs/distributed.md).

Each node is its own raylet and object store (`ray.cluster_utils.Cluster`), every one on 127.0.0.1,
with 1 CPU each and short health checks, so a removed node is declared dead in about 1.5 s and its
task rerun within ~11 s. This process is connected as the driver, so `RayEngine.open` uses the
cluster. Test modules take it through the module-scoped `ray_cluster` fixture (tests/conftest.py) or
`with two_node_cluster() as cluster:`; the cluster is stopped by its handle, never with `ray stop`
(which ends every Ray process on the machine, other people's clusters included).

Workers import the tests' module-level task functions by name: tests/ is put on their PYTHONPATH.
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent
# Health checks every 0.5 s, dead after 3 misses: node-loss tests take ~11 s instead of ~18 s.
HEALTH_CHECKS = {"health_check_period_ms": 500, "health_check_failure_threshold": 3, "health_check_timeout_ms": 500}
LOOPBACK = "127.0.0.1"
# One token for the whole test session: a process that has connected once keeps the token it read (Ray caches it).
SESSION_TOKEN = secrets.token_hex(32)  # Ray's own format: 32 random bytes as hex (ray._private.authentication)


@contextmanager
def _environment(**values: str) -> Iterator[None]:
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def _loopback_only() -> Iterator[None]:
    from ray._private import ray_constants

    before = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


@contextmanager
def two_node_cluster(cpus_per_node: int = 1) -> Iterator[Any]:
    """A head and one worker node on loopback, this process connected to them; yields the `Cluster`.

    Add a node with `cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")` and remove it with
    `cluster.remove_node(node)` for failure tests. Raises `RuntimeError` when Ray is already
    initialised in this process (two clusters cannot share one driver).
    """
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        raise RuntimeError("Ray is already initialised in this test process: shut it down before starting a test cluster")
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)
    # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps every node on 127.0.0.1 (ray#59110). The nodes read it as they
    # start; this process read it when it imported ray (maybe before this function ran), so its copy is set too,
    # else the driver rewrites 127.0.0.1 to the machine's address and waits for ever on the head.
    with _environment(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", PYTHONPATH=path), _loopback_only():
        head = {"num_cpus": cpus_per_node, "node_ip_address": LOOPBACK, "include_dashboard": False, "_system_config": HEALTH_CHECKS}
        cluster = Cluster(initialize_head=True, head_node_args=head, shutdown_at_exit=True)
        try:
            cluster.add_node(num_cpus=cpus_per_node, node_ip_address=LOOPBACK)
            cluster.wait_for_nodes()
            ray.init(address=cluster.address, log_to_driver=False, logging_level=logging.ERROR)
            yield cluster
        finally:
            ray.shutdown()
            cluster.shutdown()


def token_at_hand() -> bool:
    """Whether Ray finds an authentication token for this process: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token."""
    return bool(os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH") or (Path.home() / ".ray" / "auth_token").is_file())


@contextmanager
def auth_token() -> Iterator[None]:
    """RAY_AUTH_TOKEN set for the block (and every process started in it) when no token is at hand, else nothing.

    A head with RAY_AUTH_MODE=token refuses to start without a token, and a fresh machine (CI's) has none until
    Ray writes ~/.ray/auth_token for a new local cluster with the mode unset (which test runs first decides);
    this does not write it: other Ray users of the machine share it."""
    if token_at_hand():
        yield
        return
    with _environment(RAY_AUTH_TOKEN=SESSION_TOKEN):
        yield


def _refresh_ray() -> None:
    """Make this process's Ray (if imported) read RAY_AUTH_MODE and the token again: it reads both once, on import
    and on first use, as Ray's own `_enable_token_auth` refreshes them."""
    if "ray" in sys.modules:
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()


@contextmanager
def token_mode() -> Iterator[None]:
    """RAY_AUTH_MODE=token with a token at hand (`auth_token`) for the block, in this process too even where an
    earlier test imported Ray with the mode unset; both are as before when it ends."""
    try:
        with auth_token(), _environment(RAY_AUTH_MODE="token"):
            _refresh_ray()
            yield
    finally:
        _refresh_ray()  # the environment as it was


HEAD_SCRIPT = """
import sys
from ray.cluster_utils import Cluster
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False})
print(cluster.address, flush=True)
sys.stdin.read()  # until the test closes stdin
cluster.shutdown()
"""


@contextmanager
def token_auth_head() -> Iterator[str]:
    """A one-node Ray head on loopback in its own process, with token authentication on; yields its HOST:PORT.

    The head reads the token Ray finds (run it inside `auth_token()` so there is one) and is stopped by its
    handle when the block ends. Drivers that connect need RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (loopback).
    """
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token"}
    head = subprocess.Popen([sys.executable, "-c", HEAD_SCRIPT], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert head.stdout is not None
        address = head.stdout.readline().strip()
        if not address:
            raise RuntimeError("the token-auth Ray head did not start")
        yield address
    finally:
        assert head.stdin is not None
        head.stdin.close()
        head.wait(timeout=60)
