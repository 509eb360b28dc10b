"""One Rich console for the whole CLI: messages, tables and progress bars look the same everywhere."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

console = Console(stderr=True, highlight=False)

_lock = threading.RLock()
_live: Progress | None = None  # the one progress display on screen, shared by nested bars


def _new_progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


class NestableProgress:
    """A progress bar that can be opened inside another one, on any Rich version.

    Rich before 14.1 (Kaggle's image has 13.9.4) refuses a second live display while one is
    active ("Only one live display may be active at once"). So the first bar started owns the
    display; a bar started while it is live adds its tasks to that display and removes them
    when it stops, instead of starting a display of its own. Use it as a context manager or
    with start()/stop(); add_task, advance, update, remove_task and the rest behave as Rich's.
    """

    def __init__(self) -> None:
        self._bar: Progress | None = None
        self._owner = False
        self._tasks: list[TaskID] = []

    def start(self) -> None:
        global _live
        with _lock:
            if self._bar is not None:
                return
            if _live is None:
                self._bar, self._owner = _new_progress(), True
                _live = self._bar
                self._bar.start()
            else:
                self._bar, self._owner = _live, False

    def stop(self) -> None:
        global _live
        with _lock:
            if self._bar is None:
                return
            if self._owner:
                self._bar.stop()
                _live = None
            else:
                for task in self._tasks:
                    if task in self._bar.task_ids:
                        self._bar.remove_task(task)
            self._bar, self._owner, self._tasks = None, False, []

    def __enter__(self) -> NestableProgress:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def progress(self) -> Progress:
        """The Rich display this bar's tasks live in (started on first use)."""
        if self._bar is None:
            self.start()
        assert self._bar is not None
        return self._bar

    def add_task(self, description: str, *args: Any, **kwargs: Any) -> TaskID:
        task = self.progress.add_task(description, *args, **kwargs)
        self._tasks.append(task)
        return task

    def remove_task(self, task: TaskID) -> None:
        self.progress.remove_task(task)
        if task in self._tasks:
            self._tasks.remove(task)

    @property
    def task_ids(self) -> list[TaskID]:
        """This bar's own tasks (not those of the bar it is nested in)."""
        return list(self._tasks)

    def __getattr__(self, name: str) -> Any:  # advance, update, reset, tasks, console, ...
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.progress, name)


def progress() -> NestableProgress:
    """A progress bar with count, elapsed and remaining time (goes to stderr, like all chatter); safe to nest."""
    return NestableProgress()


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    """A plain table; floats are shown with 4 decimals."""
    t = Table(title=title, title_justify="left")
    for col in columns:
        t.add_column(col, justify="left" if col == columns[0] else "right")
    for row in rows:
        t.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row))
    return t
