"""`make gpu-check` (tools/gpu_check.sh on a GPU machine): the `gpu` profile end to end, with its figures.

Simulates the competition (the real sizes: 1,604 training and 8,424 test images) in a folder of
its own, makes its folds, trains every PyTorch model of configs/competition.yaml (not the Keras
ones: the GPU machine has no TensorFlow) through the `gpu` trainer profile, and reports per
model: wall time, training images/s, peak GPU memory (`torch.cuda.max_memory_allocated`) and the
CV log loss. The table is printed and written as JSON (`gpu_check.json`) after each model, so a
run stopped at its time limit still returns the models it finished. `--tiny` runs the same flow
on a CPU (64 training images, 32 px, 1 epoch, 2 folds, two TTA views, a set policy): the test of this check.

Runs as `python -m competition.bench.gpu_check` with no command-line framework beyond argparse,
where the harness's own dependencies are only partly installed (docs/gpu.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from competition.config import COMPETITION_CONFIG, CompetitionConfig, load_competition
from competition.console import console, table
from competition.errors import UserError

OUT_ENV = "GPU_CHECK_OUT"  # folder of gpu_check.json (tools/gpu_check.sh sets it to the device tool's $OUT)
RESULT_FILE = "gpu_check.json"
EXPERIMENT = "gpu-check"
PROFILE = "gpu"
FULL_SEEDS = 1  # the profile's 3 seeds per fold triple the time; one seed fits the device budget (docs/gpu.md)
TINY_DATA = ["simulate.n_train=64", "simulate.n_test=16", "folds.k=2"]
TINY_TRAIN = ["image_size=32", "epochs=1", "batch_size=16", "policy=all_but_stem", "tta=[id,flip]"]  # a set policy: no policy race


def check_config(root: Path, tiny: bool) -> CompetitionConfig:
    """The competition config of the check: data, folds and runs under `root`, the configured models."""
    where = [f"data_dir={root / 'data'}", f"work_dir={root / 'data'}", f"runs_dir={root / 'runs'}", f"submissions_dir={root / 'submissions'}"]
    return load_competition([*where, f"experiment={EXPERIMENT}", *(TINY_DATA if tiny else [])], COMPETITION_CONFIG)


def torch_models(cfg: CompetitionConfig) -> list[str]:
    """The configured models that need no TensorFlow (framework timm or probe)."""
    from competition.models.registry import load_model_config

    return [name for name in cfg.models if load_model_config(name).framework != "keras"]


def prepare_data(cfg: CompetitionConfig) -> float:
    """Simulate the competition and write its folds; seconds taken."""
    from competition.data.loader import load_train
    from competition.folds import write_folds
    from competition.simulate import write_simulated

    start = time.perf_counter()
    write_simulated(cfg)
    write_folds(load_train(cfg), cfg)
    return time.perf_counter() - start


def _cuda() -> Any:
    """torch.cuda when a CUDA device is there, else None."""
    import torch

    return torch.cuda if torch.cuda.is_available() else None


def measure(cfg: CompetitionConfig, model: str, overrides: Sequence[str]) -> dict[str, Any]:
    """Train `model` through the `gpu` profile (fresh) and return its figures.

    Training images/s: images seen by the optimiser (epochs run x fitted rows, summed over units)
    per second of `fit` (which also predicts the held-out fold after each epoch).
    """
    from competition.training.store import Unit, load_run
    from competition.training.trainer import train_model

    cuda = _cuda()
    if cuda is not None:
        cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    run = load_run(train_model(cfg, model, PROFILE, list(overrides), fresh=True))
    wall_s = time.perf_counter() - start
    held = run.oof.groupby(["repeat", "fold"]).size()
    n_train = int(len(run.oof) / run.oof["repeat"].nunique())
    images = sum(
        (n_train - int(held[(s.repeat, s.fold)])) * len(run.meta.curves[Unit(s.repeat, s.fold, s.seed).name]["train_loss"]) for s in run.meta.fold_scores
    )
    units = run.meta.timings.units.values()
    fit_s, predict_s = sum(u["fit_s"] for u in units), sum(u["predict_s"] for u in units)
    return {
        "model": model,
        "units": len(run.meta.fold_scores),
        "epochs_run": sum(len(c["train_loss"]) for c in run.meta.curves.values()),
        "wall_s": round(wall_s, 1),
        "fit_s": round(fit_s, 1),
        "predict_s": round(predict_s, 1),
        "train_images_per_s": round(images / fit_s, 1) if fit_s > 0 else None,
        "peak_gpu_mib": None if cuda is None else round(cuda.max_memory_allocated() / 2**20, 1),
        "cv_logloss": round(run.meta.cv_logloss, 4),
        "fold_logloss": [round(s.logloss, 4) for s in run.meta.fold_scores],
        "policy": run.meta.policy,
        "weight_source": run.meta.weight_source,
        "augment": run.meta.augment,
        "profile": (run.meta.model_extra or {}).get("profile"),
    }


def machine() -> dict[str, Any]:
    """Python, torch, timm and the device the check ran on."""
    import timm
    import torch

    cuda = _cuda()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "device": cuda.get_device_name(0) if cuda is not None else f"cpu ({os.cpu_count()} cores)",
        "cuda": torch.version.cuda,
    }


def run_gpu_check(
    root: Path, out: Path, *, tiny: bool = False, seeds: int = FULL_SEEDS, epochs: int | None = None, models: Sequence[str] = ()
) -> dict[str, Any]:
    """Simulate, fold and train under `root`; write `out`/gpu_check.json after each model and return its content."""
    if not tiny and _cuda() is None:
        raise UserError("gpu check: PyTorch sees no CUDA device here; on a CPU run the tiny mode (--tiny)")
    cfg = check_config(root, tiny)
    chosen = list(models) or torch_models(cfg)
    overrides = [f"seeds={seeds}", *(TINY_TRAIN if tiny else []), *([f"epochs={epochs}"] if epochs else [])]
    result: dict[str, Any] = {"mode": "tiny" if tiny else "full", "machine": machine(), "overrides": overrides, "models": []}
    out.mkdir(parents=True, exist_ok=True)
    result["data_s"] = round(prepare_data(cfg), 1)
    result["data"] = {"n_train": cfg.simulate.n_train, "n_test": cfg.simulate.n_test, "folds": cfg.folds.k}
    for model in [None, *chosen]:  # written before the first model too: a run cut short still says where it ran
        if model is not None:
            result["models"].append(measure(cfg, model, overrides))
        (out / RESULT_FILE).write_text(json.dumps(result, indent=2) + "\n")
    rows = [
        (m["model"], m["units"], m["epochs_run"], f"{m['wall_s']:.0f}", f"{m['train_images_per_s']}", f"{m['peak_gpu_mib']}", f"{m['cv_logloss']:.4f}")
        for m in result["models"]
    ]
    title = f"gpu check ({result['mode']}) on {result['machine']['device']}, torch {result['machine']['torch']}; data {result['data_s']:.0f} s"
    console.print(table(title, ["model", "units", "epochs", "wall s", "train img/s", "peak GPU MiB", "CV log loss"], rows))
    console.print(f"[green]wrote[/] {out / RESULT_FILE}")
    return result


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m competition.bench.gpu_check [--tiny] [--seeds N] [--epochs N] [--models a,b] [--root DIR] [--out DIR]`."""
    parser = argparse.ArgumentParser(prog="python -m competition.bench.gpu_check", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tiny", action="store_true", help="64 training images, 32 px, 1 epoch, 2 folds (CPU, seconds)")
    parser.add_argument("--seeds", type=int, default=FULL_SEEDS, help=f"seeds per fold (default {FULL_SEEDS}; the profile's own is 3)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per unit (default: the model's, with early stopping)")
    parser.add_argument("--models", default="", help="comma-separated models (default: the configured PyTorch models)")
    parser.add_argument("--root", type=Path, default=Path("runs") / EXPERIMENT, help="folder of the check's data and runs")
    parser.add_argument("--out", type=Path, default=None, help=f"folder of {RESULT_FILE} (default: ${OUT_ENV}, else --root)")
    args = parser.parse_args(argv)
    out = args.out or Path(os.environ.get(OUT_ENV) or args.root)
    models = [m for m in args.models.split(",") if m]
    try:
        run_gpu_check(args.root.resolve(), out, tiny=args.tiny, seeds=args.seeds, epochs=args.epochs, models=models)
    except UserError as exc:
        console.print(f"[bold red]error:[/] {exc}", soft_wrap=True)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
