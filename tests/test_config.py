"""Config loading: overrides, and errors that name the file, the key and what was expected."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from competition.config import RESERVED_RUN_NAMES, CompetitionConfig, apply_overrides, config_hash, load_competition
from competition.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "competition.yaml"
    path.write_text(text)
    return path


def test_shipped_config_loads_with_real_competition_sizes():
    cfg = load_competition(path=REPO / "configs" / "competition.yaml")
    assert (cfg.simulate.n_train, cfg.simulate.n_test) == (1604, 8424)
    assert cfg.folds.k == 5


def test_overrides_parse_yaml_values_and_create_sections():
    data = apply_overrides({"folds": {"k": 5}}, ["folds.k=10", "folds.group_by_angle=true", "new.list=[1, 2]", "name=x"])
    assert data == {"folds": {"k": 10, "group_by_angle": True}, "new": {"list": [1, 2]}, "name": "x"}


def test_override_changes_the_validated_config_and_its_hash(tmp_path):
    path = write(tmp_path, "folds:\n  k: 5\n")
    base = load_competition(path=path)
    changed = load_competition(["folds.repeats=3"], path=path)
    assert changed.folds.repeats == 3
    assert config_hash(changed) != config_hash(base)
    assert config_hash(load_competition(path=path)) == config_hash(base)


@pytest.mark.parametrize(
    ("text", "overrides", "expected"),
    [
        ("folds:\n  k: five\n", [], r"competition.yaml: key 'folds.k': .*integer.*got 'five'"),
        ("folds:\n  k: 1\n", [], r"key 'folds.k': .*greater than or equal to 2"),
        ("fodls:\n  k: 5\n", [], r"key 'fodls': unknown key"),
        ("folds: [1, 2]\n", [], r"key 'folds': .*"),
        ("folds:\n  k: 5\n", ["folds.k=zero"], r"key 'folds.k' \(from a command-line override\)"),
        ("folds:\n  k: [\n", [], r"competition.yaml: not valid YAML \(line \d+\)"),
        ("- a\n- b\n", [], r"expected a mapping .* got list"),
        ("folds:\n  k: 5\n", ["folds.k"], r"override 'folds.k': expected KEY=VALUE"),
        ("folds:\n  k: 5\n", ["folds.k.x=1"], r"'k' is a value, not a section"),
        ("folds:\n  k:\n", [], r"key 'folds.k': .*got an empty value \(null, or nothing after the colon\)$"),
        ("folds:\n  k: 5\n", ["folds.k={a: 1, b: 2}"], r"key 'folds.k' .*got a section \(keys a, b\)$"),
        ("folds:\n  k: true\n", [], r"key 'folds.k': expected a number, got True$"),
        (
            "simulate:\n  public_fraction: 0.3\n",
            ["simulate.public_fraction=false"],
            r"key 'simulate.public_fraction' \(from a command-line override\): expected a number, got False$",
        ),
    ],
    ids=[
        *("type", "range", "unknown-key", "section-type", "override-value", "yaml-syntax", "not-mapping", "override-form"),
        *("override-into-value", "empty-value", "section-for-value", "bool-for-int", "bool-for-float"),
    ],
)
def test_errors_name_file_key_and_expectation(tmp_path, text, overrides, expected):
    with pytest.raises(ConfigError, match=expected):
        load_competition(overrides, path=write(tmp_path, text))


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_competition(path=tmp_path / "nope.yaml")


def test_a_config_missing_because_of_the_working_folder_says_where_to_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here
    with pytest.raises(ConfigError, match=r"^configs/competition.yaml: config file not found: .*run it from the repository's root \(/"):
        load_competition()


def test_cli_reports_a_bad_override_without_traceback(tmp_path):
    path = write(tmp_path, f"data_dir: {tmp_path / 'data'}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "competition", "folds", "-c", str(path), "folds.k=one"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "key 'folds.k' (from a command-line override)" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_run_folders_are_paths_of_the_config(tmp_path):
    cfg = CompetitionConfig(runs_dir=tmp_path / "runs", experiment="exp")
    exp = tmp_path / "runs" / "exp"
    assert (cfg.experiment_dir, cfg.run_dir("mnv2-top2"), cfg.stack_dir, cfg.report_dir) == (exp, exp / "mnv2-top2", exp / "stack", exp / "report")
    assert cfg.experiment_submissions_dir == exp / "submissions" and cfg.submissions_dir == Path("submissions")
    assert (cfg.kaggle_dir, cfg.ledger_path) == (tmp_path / "runs" / "kaggle", tmp_path / "runs" / "ledger.sqlite")
    assert (cfg.leaderboard_dir, cfg.lb_plot) == (tmp_path / "runs" / "leaderboard", tmp_path / "runs" / "lb_cv_vs_lb.png")
    assert {cfg.stack_dir.name, cfg.report_dir.name, cfg.experiment_submissions_dir.name} == set(RESERVED_RUN_NAMES)


def test_true_or_false_is_refused_only_where_a_number_is_expected():
    from typing import Literal, Optional

    from competition.config import numbers_only

    assert [numbers_only(t) for t in (int, float, Optional[float], int | None)] == [True] * 4  # noqa: UP045 (typing.Union too)
    assert [numbers_only(t) for t in (bool, bool | int, list[int], Literal["a"], str)] == [False] * 5
