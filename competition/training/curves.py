"""Learning curves of every unit in one PNG (curves.png in the run folder): spot over- and under-fitting at a glance."""

from __future__ import annotations

from pathlib import Path

from competition.plots import pyplot, save_figure

CURVES_FILE = "curves.png"


def plot_curves(curves: dict[str, dict[str, list[float]]], path: Path, title: str) -> Path:
    """Validation (solid) and training (dashed) log loss per epoch, one colour per unit."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(8, 5))
    colours = plt.get_cmap("tab10")
    for i, (unit, history) in enumerate(sorted(curves.items())):
        colour = colours(i % 10)
        epochs = range(1, len(history.get("val_loss", [])) + 1)
        ax.plot(epochs, history.get("val_loss", []), color=colour, label=unit)
        ax.plot(range(1, len(history.get("train_loss", [])) + 1), history.get("train_loss", []), color=colour, linestyle="--", alpha=0.6)
    ax.set(xlabel="epoch", ylabel="log loss (solid: held-out fold, dashed: training)", title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize="small", ncol=2)
    return save_figure(fig, path, dpi=100)
