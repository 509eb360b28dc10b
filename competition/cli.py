"""The `competition` command: one subcommand per step of the flow.

Step modules are imported inside each command, so `competition --help` and the data steps
start without loading TensorFlow or torch.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from competition.config import COMPETITION_CONFIG, load_competition
from competition.console import console
from competition.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0])

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Competition config (YAML).")]


@app.callback()
def _root() -> None:
    """Kaggle harness for the Statoil/C-CORE Iceberg Classifier Challenge."""


Overrides = Annotated[Optional[list[str]], typer.Argument(help="Config overrides KEY=VALUE, e.g. folds.k=10.", show_default=False)]


@app.command()
def folds(overrides: Overrides = None, config: ConfigOpt = COMPETITION_CONFIG) -> None:
    """Split the training data into K folds x R repeats (stratified); write data/folds.{csv,json}."""
    cfg = load_competition(overrides or [], config)
    from competition.data.loader import load_train
    from competition.folds import write_folds

    folds_ = write_folds(load_train(cfg), cfg)
    console.print(f"[green]wrote[/] {cfg.folds_csv} ({folds_.describe()})")


def main() -> None:
    """Entry point: user mistakes become one red line and exit code 2, never a traceback."""
    try:
        app()
    except UserError as exc:
        console.print(f"[bold red]error:[/] {exc}", soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: finished units are kept; run the same command again to resume")
        sys.exit(130)


if __name__ == "__main__":
    main()
