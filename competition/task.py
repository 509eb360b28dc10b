"""One unit of work an engine runs (competition.engine): the function, its arguments, the key that
names it to the user, and the resources it holds. Its own module so that both engines import it
without importing each other."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

R = TypeVar("R")


@dataclass(frozen=True)
class Resources:
    """What one task holds while it runs: CPU cores and GPUs, fractions allowed (Ray counts them, it does not cap memory)."""

    cpus: float = 1.0
    gpus: float = 0.0


@dataclass(frozen=True)
class Task(Generic[R]):
    """One unit of work: `fn(*args)` returns its result. `fn` must be a module-level function (it is
    pickled by name for Ray); a value passed through `Engine.share` may stand in any of `args`.

    `worker`: None runs the task in a fresh worker process of its own (engines with workers: e.g. a
    GPU unit, whose memory is released when its process ends); a pool name (e.g. "torch")
    lets a worker process of that pool run one such task after another, paying its imports once
    (about 3 s for torch and timm here). Tasks of different pools never share a process, and a pool's
    processes see no GPU (a task holding GPUs cannot be pooled: ValueError). The local engine runs
    every task in the caller's process and ignores it.
    """

    key: str
    fn: Callable[..., R]
    args: tuple[Any, ...] = ()
    resources: Resources = field(default_factory=Resources)
    worker: str | None = None

    def __post_init__(self) -> None:
        if self.worker is not None and self.resources.gpus > 0:
            raise ValueError(f"task {self.key}: a task holding GPUs runs in a fresh process (worker=None), not in pool {self.worker!r}")
