"""The one router of KEY=VALUE overrides (competition.overrides): destinations, prefixes, refusals."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from competition.bench.quality import QualityConfig
from competition.config import CompetitionConfig
from competition.errors import ConfigError
from competition.overrides import COMMANDS, route
from competition.training.profiles import Profile


def test_overrides_are_routed_by_their_first_key() -> None:
    routed = route(
        ["epochs=3", "policy=head", "augment.zoom=0.2", "experiment=x", "folds.k=3", "optimizer.lr=1e-4", "weights=none", "model.seed=3", "profile.seed=2"],
        "train",
    )
    assert routed.profile == ["epochs=3", "policy=head", "augment.zoom=0.2", "seed=2"]
    assert routed.competition == ["experiment=x", "folds.k=3"]
    assert routed.model == ["optimizer.lr=1e-4", "weights=none", "seed=3"]
    # what a step hands on to `train`, as given (prefixes kept), in order
    assert routed.trainer == ["epochs=3", "policy=head", "augment.zoom=0.2", "optimizer.lr=1e-4", "weights=none", "model.seed=3", "profile.seed=2"]
    assert set(Profile.model_fields).isdisjoint(CompetitionConfig.model_fields)


def test_prefixes_go_to_their_files_without_the_prefix() -> None:
    routed = route(["kaggle.kernel.steps=[folds]", "stack.stacker.n_trials=5", "experiment=e", "epochs=2", "head.dropout=0.1"], "kernel")
    assert routed.kaggle == ["kernel.steps=[folds]"]
    assert routed.stack == ["stacker.n_trials=5"]
    assert routed.competition == ["experiment=e"]
    assert (routed.profile, routed.model, routed.trainer) == (["epochs=2"], ["head.dropout=0.1"], ["epochs=2", "head.dropout=0.1"])


def test_quality_keys_win_for_bench_quality_only() -> None:
    items = ["experiment=q", "budget=quick", "budgets.cpu.epochs.all=2", "data_dir=d", "stack.seed=1", "image_size=32"]
    routed = route(items, "bench-quality", QualityConfig.model_fields)
    assert routed.quality == ["experiment=q", "budget=quick", "budgets.cpu.epochs.all=2"]
    assert (routed.competition, routed.stack, routed.model) == (["data_dir=d"], ["seed=1"], ["image_size=32"])
    assert route(["experiment=q"], "all").competition == ["experiment=q"]  # elsewhere `experiment` is the competition's
    with pytest.raises(ValueError, match="quality_keys"):  # only bench-quality takes them, and it must give them
        route(items, "bench-quality")
    with pytest.raises(ValueError, match="quality_keys"):
        route(items, "all", QualityConfig.model_fields)


def test_every_item_is_parsed_once_and_a_malformed_one_is_named() -> None:
    for bad in ("epochs", "=3", "a..b=1", "x=[1"):
        with pytest.raises(ConfigError, match=re.escape(f"override {bad!r}")):
            route(["epochs=3", bad], "train")
    assert route(None, "folds").competition == []
    assert route(["tta=[id, flip]"], "train").profile == ["tta=[id, flip]"]  # the value travels as written, parsed as YAML later


@pytest.mark.parametrize(
    ("command", "item", "says"),
    [
        ("folds", "epochs=3", r"`folds` does not take 'epochs=3': 'epochs' goes to the trainer profile .*taken only by train, all, bench-quality, kernel"),
        ("stack", "optimizer.lr=1", r"`stack` does not take 'optimizer.lr=1': unknown key 'optimizer.lr' \(check the spelling\)"),
        ("folds", "fodls.k=5", r"unknown key 'fodls.k' \(check the spelling\); `folds` takes keys of configs/competition.yaml"),
        ("all", "kaggle.owner=me", r"'kaggle.owner' goes to configs/kaggle.yaml .*taken only by submit, lb, kernel"),
        ("submit", "stack.seed=1", r"'stack.seed' goes to configs/stack.yaml .*taken only by stack, all, bench-quality, kernel"),
        ("train", "stack.seed=1", r"`train` does not take 'stack.seed=1'"),
        ("models", "experiment=x", r"'experiment' goes to configs/competition.yaml"),
        ("report", "model.seed=1", r"`report` does not take 'model.seed=1'"),
    ],
)
def test_a_command_refuses_a_destination_it_does_not_take(command: str, item: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says) as caught:
        route(["experiment=ok" if "competition" in COMMANDS[command] else "head.dropout=0.1", item], command)
    assert "\n" not in str(caught.value)


def test_every_cli_command_with_overrides_has_a_routing() -> None:
    import typer.main
    from competition.cli import app

    commands = getattr(typer.main.get_command(app), "commands", {})
    with_overrides = {name for name, command in commands.items() if any(p.name == "overrides" for p in command.params)}
    assert with_overrides == set(COMMANDS)


def test_cli_refuses_in_one_line_before_doing_anything(tmp_path) -> None:
    done = subprocess.run([sys.executable, "-m", "competition", "folds", "epochs=3", f"work_dir={tmp_path}"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr + done.stdout
    assert "`folds` does not take 'epochs=3'" in done.stdout + done.stderr
    assert not (tmp_path / "folds.csv").exists()
