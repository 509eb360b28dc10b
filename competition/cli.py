"""The `competition` command: one subcommand per step of the flow.

Step modules are imported inside each command, so `competition --help` and the data steps
start without loading TensorFlow or torch.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from competition.config import COMPETITION_CONFIG, CompetitionConfig, load_competition
from competition.console import console
from competition.errors import UserError
from competition.overrides import route

RESUME = "finished units are kept (not those of a --fresh run); run the same command again to resume"


class Interrupted(Exception):
    """Ctrl-C in a command, carried past Typer to `main`; the message says what was interrupted (the interrupt's own
    text where the code interrupted said it, e.g. the policy race) and what a rerun does."""


class Commands(TyperGroup):
    """The subcommands, with Ctrl-C let through to `main`: Typer alone ends an interrupted command with exit code 130
    and not a word (typer.core turns KeyboardInterrupt into a silent Exit(130))."""

    def invoke(self, ctx: Any) -> Any:  # a click Context: Typer's vendored click (typer._click) or click itself, by version
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            raise Interrupted(str(exc) or RESUME) from exc


app = typer.Typer(cls=Commands, add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0])

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Competition config (YAML).")]


@app.callback()
def _root() -> None:
    """Kaggle harness for the Statoil/C-CORE Iceberg Classifier Challenge."""


Overrides = Annotated[
    list[str] | None,
    typer.Argument(help='Config overrides KEY=VALUE, e.g. folds.k=10 (routing: docs/architecture.md, "Override routing").', show_default=False),
]


def _competition(overrides: list[str] | None, command: str, config: Path) -> CompetitionConfig:
    """The competition config with `command`'s overrides, every one routed first (competition.overrides)."""
    return load_competition(route(overrides, command).competition, config)


def _writing_data_dir(overrides: list[str] | None, command: str, config: Path) -> CompetitionConfig:
    """`_competition` for a command that writes `data_dir` itself (data, simulate): a read-only `data_dir` is refused
    first, naming `data_dir` (competition.data.folder), not by the config's rule for a null `work_dir`, which cannot help."""
    from competition.data.folder import check_configured_data_dir

    routed = route(overrides, command).competition
    check_configured_data_dir(routed, config, command)
    return load_competition(routed, config)


@app.command()
def data(overrides: Overrides = None, config: ConfigOpt = COMPETITION_CONFIG) -> None:
    """Download the real competition with the Kaggle client into data/ (needs Kaggle credentials)."""
    cfg = _writing_data_dir(overrides, "data", config)
    from competition.data.download import download, summary

    for path in download(cfg):
        console.print(f"[green]wrote[/] {path}")
    console.print(summary(cfg))


@app.command()
def simulate(overrides: Overrides = None, config: ConfigOpt = COMPETITION_CONFIG) -> None:
    """Write a simulated competition (radar physics, Kaggle's formats) into data/, answers in data/hidden/."""
    from competition.data.files import check_simulation_target
    from competition.locks import folds_lock
    from competition.simulate import write_simulated

    cfg = _writing_data_dir(overrides, "simulate", config)
    check_simulation_target(cfg)  # before the lock: a refused simulation leaves no lock file in a folder it may not write
    with folds_lock(cfg.folds_json):
        write_simulated(cfg)
    for path in (cfg.train_json, cfg.test_json, cfg.sample_submission, cfg.solution_csv):
        console.print(f"[green]wrote[/] {path} ({path.stat().st_size / 1e6:.1f} MB)")


@app.command()
def folds(overrides: Overrides = None, config: ConfigOpt = COMPETITION_CONFIG) -> None:
    """Split the training data into K folds x R repeats (stratified); write data/folds.{csv,json}."""
    cfg = _competition(overrides, "folds", config)
    from competition.data.loader import load_train
    from competition.folds import write_folds
    from competition.locks import folds_lock

    with folds_lock(cfg.folds_json):
        folds_ = write_folds(load_train(cfg), cfg)
    console.print(f"[green]wrote[/] {cfg.folds_csv} ({folds_.describe()})")


@app.command()
def models(overrides: Overrides = None) -> None:
    """List the model zoo: configs/models/*.yaml and the weight source each would use here."""
    from competition.console import table
    from competition.models.registry import describe_models

    rows = describe_models(route(overrides, "models").model)
    console.print(table("models", ["model", "framework", "architecture", "channels", "policy", "weights"], rows))


@app.command()
def stack(
    overrides: Overrides = None,
    config: ConfigOpt = COMPETITION_CONFIG,
    stack_config: Annotated[Path, typer.Option("--stack-config", help="Stacking config (YAML); override its keys as stack.KEY=VALUE.")] = Path(
        "configs/stack.yaml"
    ),
) -> None:
    """Blend and stack the experiment's runs by nested CV; write runs/<exp>/stack/ and the best submission."""
    from competition.stacking.pipeline import run_stack
    from competition.stacking.settings import load_stack_config

    routed = route(overrides, "stack")
    run_stack(load_competition(routed.competition, config), load_stack_config(routed.stack, stack_config))


@app.command()
def validate(
    file: Annotated[Path, typer.Argument(help="Submission CSV to check.")],
    overrides: Overrides = None,
    config: ConfigOpt = COMPETITION_CONFIG,
) -> None:
    """Check a submission as Kaggle reads it: columns id,is_iceberg, every sample-submission id once, probabilities in [0, 1]."""
    from competition.data.files import sample_submission
    from competition.submission import validate_submission

    cfg = _competition(overrides, "validate", config)
    sample = sample_submission(cfg)
    rows = validate_submission(file, sample)
    console.print(f"[green]valid[/] {file}: {rows} rows, every test id of {sample} once")


KaggleOpt = Annotated[Path, typer.Option("--kaggle-config", help="Kaggle round-trip config (YAML); override its keys as kaggle.KEY=VALUE.")]
KAGGLE_YAML = Path("configs/kaggle.yaml")


@app.command()
def submit(
    overrides: Overrides = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="Submission CSV (default: the newest in submissions/).")] = None,
    config: ConfigOpt = COMPETITION_CONFIG,
    kaggle_config: KaggleOpt = KAGGLE_YAML,
) -> None:
    """Submit to Kaggle (or score offline on simulated data: kaggle.submit_target=auto|kaggle|offline); record in runs/ledger.sqlite."""
    from competition.kaggle.settings import load_settings
    from competition.kaggle.submit import submit as submit_file

    cfg, kcfg = load_settings(route(overrides, "submit"), config, kaggle_config)
    entry = submit_file(cfg, cfg.slug, file, kcfg.submit_target)
    if entry.cv_mean is None:
        console.print(f"no sidecar beside {entry.file}: recorded with CV unknown")
    scores = f"public {entry.public_score:.5f}, private {entry.private_score:.5f}" if entry.status == "complete" else "scores follow with `make lb`"
    console.print(f"[green]{entry.score_source}[/] {entry.file}: {entry.message} -> {scores} (ledger #{entry.id})")


@app.command()
def lb(
    overrides: Overrides = None,
    leaderboard: Annotated[Path | None, typer.Option("--leaderboard", help="A full leaderboard CSV to place scores on.")] = None,
    config: ConfigOpt = COMPETITION_CONFIG,
    kaggle_config: KaggleOpt = KAGGLE_YAML,
) -> None:
    """Sync Kaggle scores into the ledger; table of CV vs public vs private with placements; runs/lb_cv_vs_lb.png."""
    from competition.kaggle.leaderboard import lb_table
    from competition.kaggle.leaderboard import leaderboard as make_report
    from competition.kaggle.settings import load_settings

    cfg, kcfg = load_settings(route(overrides, "lb"), config, kaggle_config)
    report = make_report(cfg, cfg.slug, leaderboard)
    console.print(report.sync_note)
    console.print(lb_table(report))
    for board, (r, n) in report.correlations.items():
        console.print(f"corr(CV, {board}) = {'n/a' if r is None else f'{r:.3f}'} over {n} submissions")
    console.print(f"[green]wrote[/] {report.plot}")


@app.command()
def kernel(overrides: Overrides = None, config: ConfigOpt = COMPETITION_CONFIG, kaggle_config: KaggleOpt = KAGGLE_YAML) -> None:
    """Build runs/kaggle/dataset/ (wheels, configs, weights) and runs/kaggle/kernel/ (metadata + script)."""
    from competition.kaggle.kernel import build_from_overrides

    for folder in build_from_overrides(overrides or [], config, kaggle_config, commands=command_table()):
        console.print(f"[green]wrote[/] {folder}/ ({', '.join(sorted(p.name for p in folder.iterdir()))})")


@app.command("kernel-push")
def kernel_push(overrides: Overrides = None, config: ConfigOpt = COMPETITION_CONFIG, kaggle_config: KaggleOpt = KAGGLE_YAML) -> None:
    """Create or version the harness dataset (-r zip) and push the kernel with the official client."""
    from competition.kaggle.kernel import push
    from competition.kaggle.settings import load_settings

    cfg, kcfg = load_settings(route(overrides, "kernel-push"), config, kaggle_config)
    console.print(push(cfg, kcfg).strip())


@app.command("kernel-status")
def kernel_status(overrides: Overrides = None, config: ConfigOpt = COMPETITION_CONFIG, kaggle_config: KaggleOpt = KAGGLE_YAML) -> None:
    """Show the status of the kernel's latest run."""
    from competition.kaggle.kernel import status
    from competition.kaggle.settings import load_settings

    console.print(status(load_settings(route(overrides, "kernel-status"), config, kaggle_config)[1]))


@app.command("kernel-output")
def kernel_output(overrides: Overrides = None, config: ConfigOpt = COMPETITION_CONFIG, kaggle_config: KaggleOpt = KAGGLE_YAML) -> None:
    """Download the kernel's output (submission.csv, log) into runs/kaggle/output/."""
    from competition.kaggle.kernel import output
    from competition.kaggle.settings import load_settings

    cfg, kcfg = load_settings(route(overrides, "kernel-output"), config, kaggle_config)
    folder = output(cfg, kcfg)
    console.print(f"[green]wrote[/] {folder}/ ({', '.join(sorted(p.name for p in folder.iterdir()))})")


ProfileOpt = Annotated[str | None, typer.Option("--profile", "-p", help="Trainer profile: cpu | gpu (configs/profiles/); default: the hardware's.")]
TrainOverrides = Annotated[
    list[str] | None,
    typer.Argument(
        help="KEY=VALUE overrides, routed by the key's first part: competition keys (experiment=...), "
        "profile keys (epochs=3, policy=head, seeds=3, augment.zoom=0.2), else the model's config (optimizer.lr=1e-4); "
        'docs/architecture.md, "Override routing".',
        show_default=False,
    ),
]


@app.command()
def train(
    model: Annotated[str, typer.Argument(help="Model name (configs/models/<name>.yaml) or a timm architecture.")],
    overrides: TrainOverrides = None,
    profile: ProfileOpt = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Delete this run's earlier units first.")] = False,
    name: Annotated[
        str | None, typer.Option("--name", help="Run folder name (default: MODEL); variants of one model side by side, each stacked as its own input.")
    ] = None,
    config: ConfigOpt = COMPETITION_CONFIG,
) -> None:
    """Train MODEL on every fold and seed; write runs/<experiment>/<name or model>/{oof.csv,test.csv,meta.json} (resumes)."""
    route(overrides, "train")  # refused before anything loads (the trainer routes them again)
    cfg = load_competition([], config)
    from competition.training.trainer import train_model

    train_model(cfg, model, profile, overrides or [], fresh=fresh, run_name=name)


@app.command()
def bench(
    models: Annotated[list[str] | None, typer.Argument(help="Models to measure (default: every registered model).", show_default=False)] = None,
    n: Annotated[int, typer.Option(help="Images per measurement.")] = 96,
    repeats: Annotated[int, typer.Option(help="Measured pairs per figure (medians are reported).")] = 5,
    output: Annotated[Path, typer.Option(help="Markdown file whose trainer section is (re)written.")] = Path("docs/benchmarks.md"),
) -> None:
    """Measure harness vs bare-loop throughput and prefix-cache speedups; write them into docs/benchmarks.md."""
    from competition.bench.speed import run_bench

    run_bench(models or None, n=n, repeats=repeats, output=output)


@app.command("bench-quality")
def bench_quality(
    overrides: Overrides = None,
    config: ConfigOpt = COMPETITION_CONFIG,
    quality_config: Annotated[Path, typer.Option("--quality-config", help="Quality benchmark config (YAML): recipes and budgets.")] = Path(
        "configs/quality.yaml"
    ),
) -> None:
    """Quality benchmark: classic VGG16, a CNN from scratch, every model x policy, blenders + stacker; docs/benchmarks.md."""
    from competition.bench.quality import QualityConfig, run_quality

    route(overrides, "bench-quality", QualityConfig.model_fields)  # refused before anything loads
    cfg = load_competition([], config)

    run_quality(cfg, overrides or [], quality_config)


@app.command("bench-ladder")
def bench_ladder(
    overrides: Overrides = None,
    config: ConfigOpt = COMPETITION_CONFIG,
    quality_config: Annotated[Path, typer.Option("--quality-config", help="Quality benchmark config (YAML): its ladder: section.")] = Path(
        "configs/quality.yaml"
    ),
) -> None:
    """Small-data ladder: the quality recipes on small simulated sets and sklearn digits, prior and stack; docs/benchmarks.md."""
    from competition.bench.ladder import QualityConfig, run_ladder

    route(overrides, "bench-ladder", QualityConfig.model_fields)  # refused before anything loads
    cfg = load_competition([], config)

    run_ladder(cfg, overrides or [], quality_config)


@app.command("bench-engine")
def bench_engine(
    overrides: Overrides = None,
    config: ConfigOpt = COMPETITION_CONFIG,
    engine_config: Annotated[Path, typer.Option("--engine-config", help="Engine benchmark config (YAML): parts, plan, overhead, gpu.")] = Path(
        "configs/bench_engine.yaml"
    ),
) -> None:
    """Engine benchmark: Ray's plan for 75 units on 8 (fake) GPUs, engine=ray vs local overhead, GPU concurrency; docs/benchmarks.md."""
    from competition.bench.engine import BenchEngineConfig, run_bench_engine

    route(overrides, "bench-engine", BenchEngineConfig.model_fields)  # refused before anything loads
    cfg = load_competition([], config)

    run_bench_engine(cfg, overrides or [], engine_config)


@app.command("all")
def all_(overrides: Overrides = None, profile: ProfileOpt = None, config: ConfigOpt = COMPETITION_CONFIG) -> None:
    """The whole flow: data (simulated when absent), folds, train `models`, stack, submit offline, report."""
    route(overrides, "all")  # refused before anything loads
    cfg = load_competition([], config)
    from competition.pipeline import run_all

    run_all(cfg, overrides or [], profile)


@app.command()
def report(overrides: Overrides = None, config: ConfigOpt = COMPETITION_CONFIG) -> None:
    """Write runs/<experiment>/report/index.html: fold scores, calibration, correlation, importances, CV vs LB."""
    cfg = _competition(overrides, "report", config)
    from competition.report import build_report

    console.print(f"[green]wrote[/] {build_report(cfg)}")


def command_table() -> dict[str, Any]:
    """The CLI's commands by name (click commands: their parameters and parser), what `make kernel` checks a kernel's steps against."""
    return dict(getattr(typer.main.get_command(app), "commands", {}))


def main() -> None:
    """Entry point: user mistakes become one red line and exit code 2, never a traceback; Ctrl-C one yellow line, exit code 130."""
    try:
        app()
    except UserError as exc:
        console.print(f"[bold red]error:[/] {exc}", soft_wrap=True)
        sys.exit(exc.exit_code)
    except Interrupted as exc:
        console.print(f"[yellow]interrupted[/]: {exc}", soft_wrap=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
