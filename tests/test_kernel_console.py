"""Progress bars nest on every Rich version (Kaggle's image has rich 13.9.4, which allows one live display)."""

from __future__ import annotations

import io

from competition import console as console_mod
from competition.console import progress
from rich.console import Console


def _quiet(monkeypatch):
    """Draw into a string instead of the terminal (a terminal-like console keeps the live display real)."""
    buf = io.StringIO()
    monkeypatch.setattr(console_mod, "console", Console(file=buf, force_terminal=True, width=100))
    return buf


def test_nested_progress_blocks_share_one_display(monkeypatch):
    buf = _quiet(monkeypatch)
    with progress() as outer:
        units = outer.add_task("units", total=2)
        with progress() as inner:  # rich < 14.1: "Only one live display may be active at once" without the fix
            epochs = inner.add_task("epochs", total=3)
            inner.advance(epochs)
            inner.update(epochs, completed=3, description="fold 0 epochs")
            assert inner.progress is outer.progress  # one display, both tasks on it
            assert {t.description for t in outer.tasks} == {"units", "fold 0 epochs"}
            assert inner.task_ids == [epochs]
            with progress() as third:  # any depth
                third.add_task("cache", total=1)
                assert len(outer.tasks) == 3
        assert [t.description for t in outer.tasks] == ["units"]  # the inner block's tasks left with it
        outer.advance(units, 2)
        assert outer.tasks[0].completed == 2
    assert console_mod._live is None
    assert "units" in buf.getvalue()
    with progress() as again:  # a fresh display after the first closed
        again.add_task("next", total=1)
        assert again.progress is not None and console_mod._live is again.progress


def test_start_stop_api_nests_too(monkeypatch):
    """The loader's byte-count bar calls start()/stop() itself, possibly inside another bar."""
    _quiet(monkeypatch)
    with progress() as outer:
        outer.add_task("steps", total=1)
        bar = progress()
        bar.start()
        task = bar.add_task("reading train.json (MiB)", total=10)
        bar.update(task, completed=5)
        assert len(outer.tasks) == 2
        bar.stop()
        bar.stop()  # a second stop is harmless
        assert len(outer.tasks) == 1
    lone = progress()
    lone.start()
    lone.add_task("alone", total=1)
    lone.stop()
    assert console_mod._live is None


def test_a_failing_inner_block_leaves_the_outer_one_working(monkeypatch):
    _quiet(monkeypatch)
    with progress() as outer:
        outer.add_task("outer", total=1)
        try:
            with progress() as inner:
                inner.add_task("inner", total=1)
                raise RuntimeError("boom")
        except RuntimeError:
            pass
        assert [t.description for t in outer.tasks] == ["outer"]
    assert console_mod._live is None
