"""The tiny training setup the trainer, lock and staging tests share: a timm architecture by name
(random init, 32 px, a small head) on 48 simulated training images and 16 test images."""

from __future__ import annotations

from pathlib import Path

from competition.config import CompetitionConfig, FoldsConfig, SimulateConfig

MODEL = "mobilenetv3_small_050"  # a timm architecture by name: built with timm defaults, no YAML needed
TINY = ["weights=none", "channels=[hh,hv]", "image_size=32", "head.hidden=[16]", "epochs=2", "batch_size=16", "save_models=false", "policy=head"]


def tiny_competition(root: Path, repeats: int = 1) -> CompetitionConfig:
    """A simulated competition under `root` with its folds file: 3 folds x `repeats`."""
    from competition.data.loader import load_train
    from competition.folds import write_folds
    from competition.simulate.writer import write_simulated

    cfg = CompetitionConfig(
        data_dir=root / "data", runs_dir=root / "runs", submissions_dir=root / "subs",
        simulate=SimulateConfig(n_train=48, n_test=16, seed=1), folds=FoldsConfig(k=3, repeats=repeats),
    )  # fmt: skip
    write_simulated(cfg)
    write_folds(load_train(cfg), cfg)
    return cfg
