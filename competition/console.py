"""One Rich console for the whole CLI: messages, tables and progress bars look the same everywhere."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

console = Console(stderr=True, highlight=False)
MIN_NAME_WIDTH = 10  # a table's row names keep at least this many columns, however narrow the console

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


class NamedRowsTable(Table):
    """A Rich table whose first column names the rows (a method, a run, a unit) and keeps them whole on a narrow console.

    When the whole table does not fit, the names get their longest width first; the other columns share what is left,
    each at least its widest word or value (headers wrap at spaces), and a name that still does not fit folds onto
    the next line with every character kept. Rich alone shrinks the widest column first and cuts a name with an
    ellipsis: on 80 columns the stack's `single:mobilenetv2_100` read `single:…`.
    """

    def _fit_names(self, console: Console, options: ConsoleOptions) -> None:
        """Set the column widths for `options.max_width`: Rich's own layout when the whole table fits, else the above."""
        for column in self.columns:
            column.width = None
        sizes = [[Measurement.get(console, options, cell) for cell in [column.header, *column.cells]] for column in self.columns]
        narrowest = [max(m.minimum for m in cells) for cells in sizes]
        widest = [max(m.maximum for m in cells) for cells in sizes]
        borders = ((2 if self.show_edge else 0) + len(self.columns) - 1) if self.box else 0
        room = options.max_width - borders - (self.padding[1] + self.padding[3]) * len(self.columns)
        if sum(widest) <= room:
            return
        longest, rest = widest[0], room - sum(narrowest[1:])
        self.columns[0].width = max(min(longest, MIN_NAME_WIDTH), min(longest, rest))
        spare, wanted = max(0, rest - longest), [w - n for w, n in zip(widest[1:], narrowest[1:], strict=True)]
        for column, least, more in zip(self.columns[1:], narrowest[1:], wanted, strict=True):
            column.width = least + spare * more // max(1, sum(wanted))  # the room names leave, shared by what each lacks

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        self._fit_names(console, options)
        yield from super().__rich_console__(console, options)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        self._fit_names(console, options)
        return super().__rich_measure__(console, options)


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    """A plain table; floats are shown with 4 decimals; the first column's names stay whole on a narrow console (`NamedRowsTable`)."""
    t = NamedRowsTable(title=title, title_justify="left")
    for col in columns:
        t.add_column(col, justify="left" if col == columns[0] else "right", overflow="fold" if col == columns[0] else "ellipsis")
    for row in rows:
        t.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row))
    return t
