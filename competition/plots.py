"""Matplotlib for the harness's PNGs: a headless backend, loaded only when a plot is made, and atomic saves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from competition.atomic import atomic_path


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed); imported on first use, it is slow to load."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, dpi: int = 110) -> Path:
    """Write `fig` to `path` as a PNG atomically, then free it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)
    return path
