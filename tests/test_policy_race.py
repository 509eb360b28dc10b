"""The `auto` policy's race (competition.training.policy_race) on simulated data and a tiny timm network.

The network is mobilenetv3_small_050 at 32 px with "pretrained" weights from a local file (a seeded
random init saved as the ImageNet classifier's state dict: the race only runs for pretrained weights,
and the tests have no network).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from competition.atomic import write_json
from competition.config import CompetitionConfig
from competition.models.linear_probe import probe_for
from competition.models.schema import PolicyDecision, PolicyRaceConfig
from competition.training import policy_race, store, trainer
from competition.training.policy_race import RACE_FILE, Rungs, inner_folds, race_order
from competition.training.trainer import plan_run, race_setup, train_model

from tiny_training import MODEL, TINY, tiny_competition

pytestmark = pytest.mark.slow

FREE = "auto.race.budget=1000"  # a budget that does not bind: every candidate can finish
# the table picks head here (similar above 100 x); a high rate makes fine-tuning every block clearly worse
RACE = [
    "epochs=2",
    "optimizer.lr=0.3",
    "policy=auto",
    "auto.different_above=100",
    "auto.race.eta=2",
    "auto.race.min_valid=1",
    "auto.race.candidates=[probe,head,all]",
]


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> CompetitionConfig:
    """48 simulated training images in 3 folds, 16 test images."""
    return tiny_competition(tmp_path_factory.mktemp("competition"))


@pytest.fixture(scope="module")
def pretrained(cfg: CompetitionConfig) -> list[str]:
    """The tiny setup with a local weight file standing in for ImageNet weights, policy auto, the race's settings."""
    import timm
    import torch

    torch.manual_seed(0)
    path = cfg.data_dir.parent / "weights.pth"
    torch.save(timm.create_model(MODEL).state_dict(), path)
    kept = [o for o in TINY if not o.startswith(("weights=", "policy=", "epochs="))]
    return [*kept, "weights=pretrained", f"weights_file={path}", *RACE]


@pytest.fixture(scope="module")
def raced(cfg: CompetitionConfig, pretrained: list[str]) -> store.Run:
    """One run whose policy the race decides (a generous budget: the race is not cut short)."""
    return store.load_run(train_model(cfg, MODEL, "cpu", [*pretrained, FREE]))


def _figures(run: store.Run) -> dict:
    extra = run.meta.model_extra or {}
    return extra["policy_numbers"]["race"]


def test_rungs_let_only_the_best_fraction_train_on() -> None:
    rungs = Rungs(min_epochs=1, eta=2, max_epochs=5)
    assert rungs.epochs == [1, 2, 4]
    assert rungs.passes(1, 0.60)  # the first at a rung always trains on
    assert not rungs.passes(1, 0.70)  # 2 recorded: only the best ceil(2/2) = 1 trains on
    assert rungs.passes(1, 0.50)  # 3 recorded: best 2 of 3
    assert not rungs.passes(1, 0.65)  # 4 recorded: 0.65 ranks third of [0.5, 0.6, 0.65, 0.7]
    assert rungs.passes(3, 9.0)  # not a rung: nothing is compared


def test_inner_folds_add_folds_until_enough_validation_rows() -> None:
    y = np.tile([0, 1], 16)
    assert len(inner_folds(y, 1, seed=0)) == 1
    folds = inner_folds(y, 16, seed=0)
    assert len(folds) == 3 and sum(len(v) for _, v in folds) >= 16
    assert len(inner_folds(y, 1000, seed=0)) == 5  # fewer rows than wanted: all of them
    for fit, valid in folds:
        assert not set(fit) & set(valid) and y[valid].mean() == pytest.approx(0.5, abs=0.15)


def test_inner_folds_shrink_to_the_rarer_class_and_a_race_needs_two_of_each(
    cfg: CompetitionConfig, pretrained: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Eight rows, four of each class (the `ten_balanced` field case's first unit): four inner folds, not a scikit-learn
    traceback; one of a class: no race, one line, the table's pick (`settled` returns None)."""
    y = np.array([0, 1] * 4)
    folds = inner_folds(y, 1000, seed=0)
    assert len(folds) == 4 and all(set(y[v]) == {0, 1} for _, v in folds)
    setup = race_setup(plan_run(cfg, MODEL, "cpu", [*pretrained, FREE]))
    labels = setup.train.labels
    assert labels is not None
    rows = np.concatenate([np.flatnonzero(labels == 0)[:6], np.flatnonzero(labels == 1)[:1]])
    assert policy_race.settled(tmp_path, {"config_hash": "x"}, replace(setup, rows=rows)) is None
    said = " ".join(capsys.readouterr().err.split())  # the console writes to stderr, wrapped
    assert "policy race: not run: the first unit's training rows hold 1 of the rarer class, and inner folds need 2 of each" in said
    assert not (tmp_path / RACE_FILE).exists()


def test_prior_races_first_then_cheapest_first() -> None:
    assert race_order(["all", "probe", "top:3", "head", "all_but_stem"], "all_but_stem") == ["all_but_stem", "probe", "head", "top:3", "all"]
    assert race_order(["head"], "all") == ["all", "head"]  # the table's pick always races


def test_race_decision_and_figures_are_recorded(cfg: CompetitionConfig, raced: store.Run) -> None:
    meta, figures = raced.meta, _figures(raced)
    names = [c["name"] for c in figures["candidates"]]
    assert meta.policy_requested == "auto" and names[0] == figures["prior"] and set(names) == {figures["prior"], "probe", "head", "all"}
    assert meta.policy == figures["winner"] and figures["rule"] in meta.policy_reason
    assert figures["valid_rows"] >= 1 and figures["race_rows"] == 32  # fold 0 of 3 held out of 48 rows
    assert all(len(c["val_loss"]) >= 1 and c["seconds"] > 0 for c in figures["candidates"])
    complete = [c for c in figures["candidates"] if c["outcome"] == "complete"]
    assert any(c["name"] == figures["winner"] for c in complete) and all(c["loss"] > 0 for c in complete)
    stored = json.loads((raced.path / RACE_FILE).read_text())
    assert stored["decision"]["name"] == meta.policy and stored["key"]["config_hash"] == meta.config_hash
    units = [json.loads(p.read_text()) for p in sorted((raced.path / store.UNITS_DIR).glob("*.json"))]
    assert len(units) == 3 and {u["policy"]["name"] for u in units} == {meta.policy}  # every unit trains the race's pick
    cost = (meta.model_extra or {})["policy_race"]
    assert cost["race_s"] == figures["wall_s"] and cost["fraction_of_units"] == pytest.approx(
        figures["wall_s"] / cost["units_s"], rel=1e-2
    )  # units_s is rounded to 0.01 s; both in wall seconds, whatever the budget's clock


@pytest.fixture(scope="module")
def halved(cfg: CompetitionConfig, pretrained: list[str]) -> dict[str, Any]:
    """The figures of `raced`'s race again with `halving: always`: ASHA's rule at every rung, budget or not."""
    setup = race_setup(plan_run(cfg, MODEL, "cpu", [*pretrained, FREE, "auto.race.halving=always"]))
    return policy_race.race(setup, policy_race.table_pick(setup)).numbers["race"]


def test_a_candidate_worse_at_a_rung_stops_early(halved: dict[str, Any]) -> None:
    stopped = [c for c in halved["candidates"] if c["outcome"].startswith("stopped at the 1-epoch rung")]
    assert stopped, halved["candidates"]
    ahead = [c for c in halved["candidates"] if c["outcome"] == "complete"]
    for c in stopped:
        assert c["epochs"] == 1 < halved["max_epochs"] and c["loss"] is None
        earlier = halved["candidates"][: halved["candidates"].index(c)]
        assert any(e["val_loss"][0] < c["val_loss"][0] for e in earlier)  # eta=2: it had to beat one of those before it
    assert all(c["epochs"] >= halved["max_epochs"] or c["name"] == "probe" for c in ahead)


def test_with_budget_to_spare_a_candidate_that_misses_a_rung_trains_on(raced: store.Run, halved: dict[str, Any]) -> None:
    """`halving: needed` (the default): the same race, the same epoch-1 losses, but the budget can pay for every
    candidate, so the one ASHA's rule stops at the 1-epoch rung completes, and the table says it missed the rung.
    (`raced` trains through the engine on the units' threads, `halved` in this process: the high learning rate keeps
    the gap at the rung far wider than the two thread counts' float differences.)"""
    figures = _figures(raced)
    assert figures["halving"] == "needed" and halved["halving"] == "always"
    cut = {c["name"] for c in halved["candidates"] if c["outcome"].startswith("stopped at the 1-epoch rung")}
    kept = {c["name"] for c in figures["candidates"] if c["kept_past"] == [1]}
    assert cut and kept == cut, (figures["candidates"], halved["candidates"])
    assert all(c["outcome"] == "complete" and c["loss"] is not None for c in figures["candidates"])
    notes = {row[0].split()[0]: row[5] for row in policy_race.race_table(figures)}
    assert all(notes[name] == "complete (kept past the 1-epoch rung: the budget had room)" for name in kept)


def test_a_rung_stops_a_candidate_when_the_budget_cannot_pay_for_it_and_the_later_ones(cfg: CompetitionConfig, pretrained: list[str]) -> None:
    """`Race.affords`, by a clock the test sets: the candidate's own remaining epochs at its seconds per epoch, plus
    each later candidate's full race at the most of that, the prior's epoch and a full backward pass, plus every
    candidate's TTA predictions of the validation rows."""
    setup = race_setup(plan_run(cfg, MODEL, "cpu", [*pretrained, "auto.race.candidates=[probe,head,all]", "auto.race.min_valid=1000"]))
    contest = policy_race.Race(setup, PolicyDecision(name="top:3", requested="auto", reason="the table (set by this test)"))
    assert [e.name for e in contest.entries] == ["top:3", "probe", "head", "all"] and len(contest.folds) == 5
    contest.clock = lambda: 100.0
    contest.started, contest._prior_epoch_s, contest._predict_row_s = 0.0, 3.0, 0.001
    epochs, n_fit = 5 * contest.max_epochs, len(contest.folds[0][0])
    predict_s = len(contest.valid_y) * len(setup.tta) * 0.001
    need = (epochs - 1) * 2.0 + predict_s + epochs * 3.0 + predict_s  # head's rest at 2 s an epoch + `all` at the prior's 3 s
    contest.budget_s = 100.0 + need
    assert contest.affords(contest.entries[2], epoch_s=2.0, epochs_done=1)
    contest.budget_s -= 0.01
    assert not contest.affords(contest.entries[2], epoch_s=2.0, epochs_done=1)
    contest._predict_row_s = 3.0 / n_fit  # a full backward pass (3 forward passes of the fit rows) costs 9 s an epoch
    predict_s = len(contest.valid_y) * len(setup.tta) * contest._predict_row_s
    contest.budget_s = 100.0 + (epochs - 1) * 2.0 + predict_s + epochs * 9.0 + predict_s
    assert contest.affords(contest.entries[2], epoch_s=2.0, epochs_done=1)
    contest.budget_s -= 0.01
    assert not contest.affords(contest.entries[2], epoch_s=2.0, epochs_done=1)
    contest.budget_s = 100.0 + (epochs - 1) * 2.0 + predict_s  # the last candidate: nothing after it
    assert contest.affords(contest.entries[3], epoch_s=2.0, epochs_done=1)


def test_same_seed_same_decision(cfg: CompetitionConfig, pretrained: list[str], raced: store.Run) -> None:
    setup = race_setup(plan_run(cfg, MODEL, "cpu", [*pretrained, FREE]))
    again = policy_race.race(setup, policy_race.table_pick(setup)).numbers["race"]
    first = _figures(raced)
    assert again["winner"] == first["winner"] and again["rule"] == first["rule"]
    assert [(c["name"], c["val_loss"], c["outcome"]) for c in again["candidates"]] == [(c["name"], c["val_loss"], c["outcome"]) for c in first["candidates"]]


def test_resumed_run_reuses_the_stored_decision(cfg: CompetitionConfig, pretrained: list[str], raced: store.Run, tmp_path: Path) -> None:
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(raced.path.parent, runs / cfg.experiment)
    run_dir = runs / cfg.experiment / raced.path.name
    for path in store.unit_paths(run_dir, store.Unit(0, 2, 0)):
        path.unlink()
    race_file = run_dir / RACE_FILE
    before = (race_file.stat().st_mtime_ns, race_file.read_bytes())
    resumed = store.load_run(train_model(cfg.model_copy(update={"runs_dir": runs}), MODEL, "cpu", [*pretrained, FREE]))
    assert resumed.meta.trained_this_run == ["r0_f2_s0"]
    assert (race_file.stat().st_mtime_ns, race_file.read_bytes()) == before  # not raced again
    assert resumed.meta.policy == raced.meta.policy and _figures(resumed) == _figures(raced)
    assert policy_race.stored(run_dir, {"config_hash": "other"}) is None  # another run's fingerprints: race again


def test_budget_bounds_the_race(cfg: CompetitionConfig, pretrained: list[str]) -> None:
    setup = race_setup(
        plan_run(cfg, MODEL, "cpu", [*pretrained, "auto.race.budget=0.4", "auto.race.floor_steps=0", "auto.race.candidates=[head,top:3,all,probe]"])
    )
    figures = policy_race.race(setup, policy_race.table_pick(setup)).numbers["race"]
    slack_s = max(c["seconds"] / max(1, c["epochs"]) for c in figures["candidates"])  # one epoch (with its model's setup)
    assert figures["spent_fraction"] <= figures["budget"] + slack_s / figures["reference_s"]
    assert figures["budget_s"] == pytest.approx(0.4 * figures["reference_s"], rel=1e-2)
    assert any("budget" in c["outcome"] for c in figures["candidates"]), figures["candidates"]  # it did bind
    import torch

    assert figures["clock"] == ("wall" if torch.cuda.is_available() else "cpu") and figures["wall_s"] > 0


def test_the_budget_is_kept_in_cpu_seconds_on_a_cpu(cfg: CompetitionConfig, pretrained: list[str]) -> None:
    """On the CPU the race spends this process's CPU seconds: time it waits (a sleep here; on a shared machine, other
    processes holding the cores) is not spent, so a busy machine cannot shrink the candidates' share of the budget.
    On a GPU (or device=cuda) the wall clock; a config on the CPU always gets CPU seconds."""
    import torch

    setup = race_setup(plan_run(cfg, MODEL, "cpu", [*pretrained, "device=cpu"]))
    assert policy_race.race_clock(setup.model_cfg) == "cpu"
    assert policy_race.race_clock(setup.model_cfg.model_copy(update={"device": "cuda"})) == "wall"
    auto = policy_race.race_clock(setup.model_cfg.model_copy(update={"device": "auto"}))
    assert auto == ("wall" if torch.cuda.is_available() else "cpu")
    contest = policy_race.Race(setup, policy_race.table_pick(setup))
    before = contest.spent()
    policy_race.time.sleep(0.5)
    assert contest.spent() - before < 0.1  # half a wall second passed; the process did not compute


def test_race_cost_counts_the_races_wall_seconds() -> None:
    """meta.json's `policy_race` compares the race with the units in wall seconds (`wall_s`), whatever the budget's
    clock; a race stored before the clock was recorded has wall seconds in `race_s`."""
    unit = SimpleNamespace(timings={"fit_s": 30.0, "predict_s": 10.0})
    numbers = {"race_s": 50.0, "wall_s": 20.0, "clock": "cpu"}
    results = [SimpleNamespace(policy={"numbers": {"race": numbers}}, timings=unit.timings)] * 2
    assert trainer.race_cost(results) == {"file": RACE_FILE, "race_s": 20.0, "units_s": 80.0, "fraction_of_units": 0.25}
    old = [SimpleNamespace(policy={"numbers": {"race": {"race_s": 40.0}}}, timings=unit.timings)]
    assert trainer.race_cost(old)["fraction_of_units"] == 1.0


def test_no_race_for_an_explicit_policy_random_init_or_a_linear_probe(cfg: CompetitionConfig, pretrained: list[str], tmp_path: Path) -> None:
    for extra in (["policy=head"], ["weights=none"], ["auto.race.enabled=false"]):
        setup = race_setup(plan_run(cfg, MODEL, "cpu", [*pretrained, *extra]))
        assert policy_race.settled(tmp_path, {"config_hash": "x"}, setup) is None
    # a probe under auto (which means head for it) has nothing to race; raced, its `all` candidate would fail mid-race
    probe = probe_for(setup.model_cfg).model_copy(update={"policy": "auto"})
    assert policy_race.settled(tmp_path, {"config_hash": "x"}, replace(setup, model_cfg=probe)) is None
    assert not (tmp_path / RACE_FILE).exists()


def test_ctrl_c_in_the_race_says_one_line_stores_nothing_and_exits_130(
    cfg: CompetitionConfig, pretrained: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C inside a race candidate (its fit raises KeyboardInterrupt), through the CLI's entry: one line says what
    was interrupted, that nothing of the race was stored and that a rerun races again; exit code 130 (Typer alone
    exited 130 without a word)."""
    import sys

    from competition.cli import main
    from competition.models.timm_net import TimmModel

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(TimmModel, "fit", interrupted)
    runs = tmp_path / "runs"
    places = [f"data_dir={cfg.data_dir}", f"work_dir={cfg.work_dir}", f"runs_dir={runs}", f"submissions_dir={tmp_path / 'subs'}"]
    monkeypatch.setattr(sys, "argv", ["competition", "train", MODEL, *places, *pretrained, FREE])
    with pytest.raises(SystemExit) as exited:
        main()
    err = capsys.readouterr().err
    assert exited.value.code == 130 and "Traceback" not in err
    said = [line for line in err.splitlines() if "interrupted" in line]
    assert said == [
        f"interrupted: the policy race of run {MODEL}; nothing of the race was stored (no {RACE_FILE}, no unit trained): the same command races again"
    ], err
    assert not (runs / cfg.experiment / MODEL / RACE_FILE).exists()


def test_report_shows_the_race(raced: store.Run) -> None:
    from competition.report import _race_sections

    [(heading, body)] = _race_sections([raced])
    figures = _figures(raced)
    winner = figures["winner"] + (" (table)" if figures["winner"] == figures["prior"] else "") + " *"
    assert heading == f"Policy race: {raced.name}" and f"<td>{winner}</td>" in body and "(table)" in body
    assert all(f"<td>{row[5]}</td>" in body for row in policy_race.race_table(figures))


def test_a_probe_decision_trains_the_linear_probe_in_every_unit(cfg: CompetitionConfig, pretrained: list[str], tmp_path: Path) -> None:
    local = cfg.model_copy(update={"runs_dir": tmp_path / "runs"})
    plan = plan_run(local, MODEL, "cpu", [*pretrained, FREE])
    decision = PolicyDecision(name="probe", requested="auto", reason="the race picked the probe (stored by this test)")
    plan.run_dir.mkdir(parents=True)
    write_json(plan.run_dir / RACE_FILE, {"key": plan.prints.recorded(), "decision": asdict(decision)})
    meta = store.load_run(train_model(local, MODEL, "cpu", [*pretrained, FREE])).meta
    assert meta.policy == "probe" and meta.policy_reason == decision.reason and meta.config["model"]["framework"] == "probe"
    assert meta.config_hash == plan.prints.config_hash and len(meta.fold_scores) == 3
    assert meta.tta == ["id"] and meta.augment is not None and meta.augment.startswith("no flips/turns")  # its features average all 8 already


def _entry(name: str, row_loss: list[float]) -> policy_race.Entry:
    loss = np.asarray(row_loss, np.float64)
    return policy_race.Entry(name, outcome="complete", loss=float(loss.mean()), row_loss=loss)


def test_one_se_rule_prefers_the_simplest_candidate_within_the_noise() -> None:
    rng = np.random.default_rng(0)
    noisy = rng.normal(0.5, 0.4, 60).clip(0.01)
    # the table's pick (all_but_stem) is a little better than the probe, by far less than one standard error
    prior, probe = _entry("all_but_stem", noisy - 0.01), _entry("probe", noisy + rng.normal(0, 0.3, 60))
    winner, rule = policy_race.one_se_choice([prior, probe], margin_se=1.0, prior_name="all_but_stem")
    assert prior.loss is not None and probe.loss is not None and prior.loss < probe.loss
    assert winner == "probe" and "within 1 SE" in rule and "simpler" in rule
    default = PolicyRaceConfig().margin_se  # 0 since session 9: the lowest loss, whatever the noise
    winner, rule = policy_race.one_se_choice([prior, probe], margin_se=default, prior_name="all_but_stem")
    assert winner == "all_but_stem" and rule == f"all_but_stem has the lowest inner-validation log loss ({prior.loss:.4f}); the lowest wins (margin_se 0)"


def test_one_se_rule_takes_the_best_when_it_is_clearly_better() -> None:
    base = np.linspace(0.2, 0.8, 400)
    prior, head = _entry("all_but_stem", base), _entry("head", base + 0.15)
    stopped = policy_race.Entry("all", val_loss=[0.1], epochs=1, outcome="stopped: budget spent")  # never eligible
    winner, rule = policy_race.one_se_choice([prior, head, stopped], margin_se=1.0, prior_name="all_but_stem")
    assert winner == "all_but_stem" and "lowest inner-validation log loss" in rule
    assert policy_race.one_se_choice([stopped, policy_race.Entry("top:3")], 1.0, "top:3")[0] == "top:3"  # nothing complete: the table's pick


def test_the_tables_pick_stays_unless_the_race_beats_it_clearly() -> None:
    """`prior_choice`: the table's pick within `prior_margin_se` (default 1) paired standard errors of the lowest stays;
    clearly beaten, or not complete, or with the margin 0, the race decides (`one_se_choice`)."""
    rng = np.random.default_rng(1)
    base = rng.normal(0.4, 0.3, 80).clip(0.01)
    noise = rng.normal(0.0, 0.2, 80)
    prior, top3 = _entry("all_but_stem", base + 0.01 + noise - noise.mean()), _entry("top:3", base)  # 0.01 worse, SE ~0.02
    default = PolicyRaceConfig().prior_margin_se
    kept = policy_race.prior_choice([prior, top3], default, "all_but_stem")
    assert default == 1.0 and kept is not None and kept[0] == "all_but_stem" and kept[1].endswith(": kept")
    assert "within 1 SE of the lowest, top:3" in kept[1] and "over 80 rows" in kept[1]
    beaten = _entry("all_but_stem", base + 0.15)
    assert policy_race.prior_choice([beaten, top3], default, "all_but_stem") is None  # the race's lowest then wins
    assert policy_race.prior_choice([prior, top3], 0.0, "all_but_stem") is None
    stopped = policy_race.Entry("all_but_stem", val_loss=[0.5], epochs=1, outcome="stopped: budget spent")
    assert policy_race.prior_choice([stopped, top3], default, "all_but_stem") is None
    assert policy_race.prior_choice([_entry("all_but_stem", base - 0.1), top3], default, "all_but_stem") is None  # lowest itself


def test_simplicity_orders_by_trained_weights() -> None:
    names = ["all", "top:5", "probe", "all_but_stem", "top:2", "head"]
    assert sorted(names, key=policy_race.simplicity) == ["probe", "head", "top:2", "top:5", "all_but_stem", "all"]


def test_every_inner_fold_trains_as_a_unit_even_when_the_first_stopped_early(
    cfg: CompetitionConfig, pretrained: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A candidate whose first inner fold stops early (here: its fit is cut to one epoch, as early stopping would)
    still trains each other inner fold for all `max_epochs`, with its own early stopping: the first fold's stop
    is noise of that fold, and capping the others at it made the table's pick lose races it should win."""
    from competition.models.timm_net import TimmModel

    real_fit = TimmModel.fit
    asked: dict[str, list[int]] = {}

    def first_fold_stops_early(self: TimmModel, *args: Any, **kwargs: Any) -> Any:
        calls = asked.setdefault(str(self.config.policy), [])
        calls.append(kwargs["epochs"])
        return real_fit(self, *args, **{**kwargs, "epochs": 1 if len(calls) == 1 else kwargs["epochs"]})

    monkeypatch.setattr(TimmModel, "fit", first_fold_stops_early)
    setup = race_setup(plan_run(cfg, MODEL, "cpu", [*pretrained, FREE, "auto.race.min_valid=1000"]))
    figures = policy_race.race(setup, policy_race.table_pick(setup)).numbers["race"]
    prior = figures["candidates"][0]
    assert prior["name"] == "head" and prior["outcome"] == "complete" and figures["inner_folds"] == 5
    assert asked["head"] == [figures["max_epochs"]] * 5  # not [2, 1, 1, 1, 1]
    assert prior["epochs"] == 1 + 4 * figures["max_epochs"]  # nothing stops 2 epochs with a 1-epoch warm-up


def test_race_trains_and_predicts_as_the_units(cfg: CompetitionConfig, pretrained: list[str]) -> None:
    """Candidates get the profile's augmentation and TTA views, and the budget counts each unit's predictions."""
    plan = plan_run(cfg, MODEL, "cpu", [*pretrained, "tta=[id,flip]"])
    setup = race_setup(plan)
    held = len(plan.train) - len(setup.rows)
    assert setup.tta == ["id", "flip"] and setup.augment is not None  # the cpu profile flips and turns
    assert setup.predict_rows == (held + len(plan.test)) * 2
    bare = race_setup(plan_run(cfg, MODEL, "cpu", [*pretrained, "augment.hflip=0", "augment.vflip=0", "augment.rot90=0"]))
    assert bare.augment is None


def test_a_tiny_run_still_gets_floor_steps_of_race(cfg: CompetitionConfig, pretrained: list[str]) -> None:
    """1% of a run of seconds cannot train one candidate: the race may always spend as long as `floor_steps`
    optimizer steps, priced by what the prior's steps cost, everything included: the prior (10 steps at most here)
    completes."""
    setup = race_setup(plan_run(cfg, MODEL, "cpu", [*pretrained, "auto.race.budget=0.01", "auto.race.floor_steps=30"]))
    figures = policy_race.race(setup, policy_race.table_pick(setup)).numbers["race"]
    assert figures["floor_steps"] == 30 and figures["step_s"] > 0
    assert figures["floor_s"] == pytest.approx(30 * figures["step_s"], rel=1e-3, abs=1e-3)
    assert figures["budget_s"] == pytest.approx(max(0.01 * figures["reference_s"], figures["floor_s"]), rel=1e-3, abs=1e-3)
    assert figures["budget_s"] == pytest.approx(figures["floor_s"], rel=1e-3, abs=1e-3)  # the floor binds here
    assert figures["candidates"][0]["name"] == figures["prior"] and figures["candidates"][0]["outcome"] == "complete"


def test_the_floor_buys_the_same_race_on_a_slower_clock(cfg: CompetitionConfig, pretrained: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the floor binds, a machine 100 times slower (here: a clock that runs 100 times faster, as CPU time does when
    threads spin waiting for an oversubscribed core) runs the same race: every candidate on every inner fold, the
    same winner. A floor of fixed seconds would buy a hundredth of the work."""
    free = race_setup(plan_run(cfg, MODEL, "cpu", [*pretrained, FREE]))
    quiet = policy_race.race(free, policy_race.table_pick(free)).numbers["race"]
    steps = math.ceil(20 * quiet["race_s"] / quiet["step_s"])  # the whole race, 20 times over (timing noise), in the race's steps
    for name, clock in list(policy_race.CLOCKS.items()):
        monkeypatch.setitem(policy_race.CLOCKS, name, lambda clock=clock: 100 * clock())
    setup = race_setup(plan_run(cfg, MODEL, "cpu", [*pretrained, "auto.race.budget=0.01", f"auto.race.floor_steps={steps}"]))
    slow = policy_race.race(setup, policy_race.table_pick(setup)).numbers["race"]
    assert slow["budget_s"] == pytest.approx(slow["floor_s"], rel=1e-3)  # the floor is the budget
    assert slow["race_s"] > 10 * slow["wall_s"]  # its clock did outrun the wall: a floor of the quiet race's seconds would have been spent
    assert [c["outcome"] for c in slow["candidates"]] == [c["outcome"] for c in quiet["candidates"]] == ["complete"] * len(quiet["candidates"])
    assert slow["inner_folds"] == quiet["inner_folds"] and slow["winner"] == quiet["winner"]


def test_a_prior_that_cannot_complete_stops_after_one_epoch(cfg: CompetitionConfig, pretrained: list[str]) -> None:
    """The table picks all_but_stem (a domain 'different' above 0.01 x) and must race all 5 inner folds (min_valid
    above the rows); with a budget of 1% its first epoch shows it cannot complete: it stops there, with the
    estimate in its outcome, instead of spending the budget the cheaper candidates need."""
    options = ["auto.different_above=0.01", "auto.race.budget=0.01", "auto.race.floor_steps=0", "auto.race.min_valid=1000"]
    setup = race_setup(plan_run(cfg, MODEL, "cpu", [*pretrained, *options]))
    figures = policy_race.race(setup, policy_race.table_pick(setup)).numbers["race"]
    first = figures["candidates"][0]
    assert figures["prior"] == first["name"] == "all_but_stem" and figures["inner_folds"] == 5
    assert first["epochs"] == 1 and first["outcome"].startswith("stopped after its first epoch: even 1 of its 5 inner folds x 2 epochs"), first


def _contest(budget_fraction: float, reference_s: float, floor_steps: int = 0, spent_s: float = 0.0) -> policy_race.Race:
    """A race after its prior's first epoch (on the wall clock, `spent_s` seconds ago): 5 inner folds of 80 fit and 20
    validation rows (3 steps of 32 an epoch), 5 epochs, 2 s an epoch, 0.01 s a predicted row; the probe and head to come."""
    contest = object.__new__(policy_race.Race)
    contest.clock_name = "wall"
    contest.clock = policy_race.CLOCKS["wall"]
    contest.started = contest.clock() - spent_s
    contest.settings = PolicyRaceConfig(budget=budget_fraction, floor_steps=floor_steps)
    contest.reference_s = reference_s
    contest._prior_epoch_s, contest._predict_row_s, contest.max_epochs = 2.0, 0.01, 5
    contest.folds = [(np.arange(80), np.arange(20))] * 5
    contest.y = np.zeros(100)
    contest.setup = SimpleNamespace(tta=["id"], rows=np.arange(100), model_cfg=SimpleNamespace(framework="timm", train=SimpleNamespace(batch_size=32)))
    contest.prior_entry = policy_race.Entry("all_but_stem")
    contest.entries = [contest.prior_entry, policy_race.Entry("probe"), policy_race.Entry("head")]
    return contest


def test_the_prior_races_on_when_it_fits() -> None:
    """`prior_cut`: the prior's remaining folds and epochs plus the scouts' estimate against the budget."""
    contest = _contest(1.0, 100.0)
    prior, scouts = contest.prior_cost_s()
    assert prior == pytest.approx(24 * 2.0 + 100 * 0.01) and scouts == pytest.approx(8 * 100 * 0.01 + 5 * 400 * 0.01)
    assert contest.prior_cut() is None and len(contest.folds) == 5  # 49 + 28 s, nothing spent yet: within 100 s
    contest.reference_s = 20.0  # not even one inner fold: 4 x 2 + 0.2 s more, and the scouts' 8 + 4 s
    assert contest.prior_cut() == (
        "stopped after its first epoch: even 1 of its 5 inner folds x 5 epochs (~8 s more) and the scouts' race (~12 s) exceed the budget (20 s): "
        "the cheaper candidates race instead"
    )
    contest.reference_s = 70.0  # all 5 do not fit (77 s); 4 do (38.8 s + 24 s): every candidate races on those 4
    assert contest.prior_cut() is None and len(contest.folds) == 4 and len(contest.valid_y) == 80


def test_the_prior_cut_prices_the_floor_as_at_the_prior_s_end() -> None:
    """Where the floor binds, `prior_cut` prices a step as the prior's whole race will have cost it, not as its first
    epoch did (10 s here: a fold's model build over 3 steps would price the floor at 3.3 s a step, 333 s, and keep
    5 inner folds the prior could not finish within the floor it ends with)."""
    contest = _contest(1e-9, 100.0, floor_steps=100, spent_s=10.0)
    # 5 folds: 10 + 49 s over 75 steps, 0.8 s a step (a whole network's: 3 x 80 rows x 0.01 s / 3 steps) -> floor 80 s < 10 + 49 + 28 s
    # 4 folds: 10 + 38.8 s over 60 steps, 0.81 s a step -> floor 81 s >= 10 + 38.8 + 24 s
    assert contest.prior_cut() is None and len(contest.folds) == 4


def test_the_rule_and_the_title_say_why_in_plain_words() -> None:
    """A best that is also the simplest complete candidate is said to be so (not "no simpler candidate within 1 SE"),
    and a budget under the floor names the floor (a newcomer read "budget 30%" beside "101%")."""
    probe, head = _entry("probe", [0.2, 0.3, 0.25]), _entry("head", [0.6, 0.7, 0.65])
    winner, rule = policy_race.one_se_choice([head, probe], margin_se=1.0, prior_name="head")
    assert winner == "probe" and rule.endswith("and it is the simplest that completed")
    floor = {"budget": 0.3, "reference_s": 100.0, "floor_steps": 400, "floor_s": 60.0, "budget_s": 60.0}
    assert policy_race._budget_text(floor) == "30% of a run is under the floor: auto.race.floor_steps 400 (= 60.0 s here)"
    assert policy_race._budget_text({**floor, "reference_s": 1000.0, "budget_s": 300.0}) == "30%"
    on_cpu = {**floor, "clock": "cpu", "floor_s": 120.0, "budget_s": 120.0}
    assert policy_race._budget_text(on_cpu) == "30% of a run is under the floor: auto.race.floor_steps 400 (= 120.0 CPU s here)"
    stored = {"budget": 0.3, "reference_s": 100.0, "min_seconds": 60.0, "floor_s": 120.0, "budget_s": 120.0, "clock": "cpu"}  # before session 12
    assert policy_race._budget_text(stored) == "30% of a run is under the floor: auto.race.min_seconds 60 s (= 120 CPU s on all threads)"
    assert policy_race.race_columns(on_cpu)[3] == "CPU s" and policy_race.race_columns(floor)[3] == "s"
