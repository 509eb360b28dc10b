"""Where independent units of work run: in this process, one after another (`local`), or as Ray tasks.

The training units of a run (one per repeat, fold and seed) and the stacker's studies (one per
method, repeat and outer fold) do not depend on each other. Each is a `Task`: a module-level
function with its arguments, the key that names it to the user, and the resources it needs. An
`Engine` runs a batch of tasks and hands every result to the caller (the driver) as it lands, so
the driver alone writes artefacts: atomic, fingerprinted, identical whichever engine ran them.

`local` is the default and imports nothing; `ray` (competition.ray_engine) is imported only when
chosen, so the CLI starts fast and the stacker runs without Ray loaded (docs/distributed.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from competition.config import EngineName, RayConfig
from competition.errors import UserError
from competition.task import R, Resources, Task

__all__ = ["Engine", "LocalEngine", "Resources", "Task", "open_engine", "report_step"]


class Engine(Protocol):
    """Runs batches of independent tasks; see `LocalEngine` for the contract every engine keeps."""

    name: EngineName

    def share(self, value: Any) -> Any:
        """A handle to `value` that tasks receive as the value itself; a large input travels once."""
        ...

    def run(self, tasks: Sequence[Task[R]], on_result: Callable[[Task[R], R], None], title: str) -> None:
        """Run every task and call `on_result(task, result)` in this process as each finishes.

        Raises the first task's `UserError` (a mistake in the user's input or configuration: not
        retried, the rest cancelled, results already handed over kept) and `UserError` when a task
        failed for good in any other way, naming the task's key.
        """
        ...


# Progress of the task running in this process (the local engine shows it; workers have none).
_step_hook: Callable[[int, int], None] | None = None


def report_step(done: int, total: int) -> None:
    """Tell the engine how far the running task is (e.g. epochs done of epochs planned); a no-op in a worker."""
    if _step_hook is not None:
        _step_hook(done, total)


class LocalEngine:
    """Today's path: the tasks run here, one after another, in order, with a progress bar."""

    name: EngineName = "local"

    def share(self, value: Any) -> Any:
        return value

    def run(self, tasks: Sequence[Task[R]], on_result: Callable[[Task[R], R], None], title: str) -> None:
        global _step_hook
        from competition.console import progress

        with progress() as bar:
            done = bar.add_task(title, total=len(tasks))
            steps = bar.add_task("steps", total=1, visible=False)

            def step(n: int, total: int) -> None:
                bar.update(steps, completed=n, total=total, visible=True)

            for task in tasks:
                bar.update(steps, completed=0, description=f"{task.key}", visible=False)
                _step_hook = step
                try:
                    result = task.fn(*task.args)
                finally:
                    _step_hook = None
                on_result(task, result)
                bar.advance(done)


@contextmanager
def open_engine(name: EngineName, ray: RayConfig | None = None) -> Iterator[Engine]:
    """The engine `name`, open for the duration of the block (a local Ray the harness started is stopped after it).

    Raises `UserError` when `ray` is chosen and Ray is not installed.
    """
    if name == "local":
        yield LocalEngine()
        return
    try:
        from competition.ray_engine import RayEngine  # Ray is imported only when chosen
    except ModuleNotFoundError as err:
        if err.name != "ray":
            raise
        raise UserError("engine=ray needs Ray: pip install 'iceberg-harness[ray]' (`make setup` installs it; docs/distributed.md)") from None

    with RayEngine.open(ray or RayConfig()) as engine:
        yield engine
