"""The `auto` policy decided by measurement: a bounded race of fine-tuning policies (docs/policy-race.md).

The seed's 2 x 2 table (`policies.choose_auto`) gives the prior pick. The race then trains the
prior and the other candidates (`head`, `top:K`, `all_but_stem`, `all`, and `probe`, the linear probe
on frozen features of `competition.models.linear_probe`) on inner folds of the run's first unit's
training rows, never on its held-out fold, and stops weak candidates early by asynchronous successive
halving (ASHA: Li et al., "A System for Massively Parallel Hyperparameter Tuning", MLSys 2020,
arXiv:1810.05934) applied to candidates trained one after another, where the budget cannot pay for every
candidate to finish (`auto.race.halving: needed`; `always`: at every rung). The whole race costs at most
`auto.race.budget` of one policy's full run, fits and predictions (plus one epoch). The winner is the
candidate with the lowest inner-validation log loss unless the table's pick is within `prior_margin_se` (1)
standard errors of it (then the table's pick stays); `margin_se` > 0 makes it the simplest
candidate within that many standard errors of the best (1: the one-standard-error rule).

The decision is stored in the run folder (`policy_race.json`, keyed by the run's fingerprints), so
a resumed run reuses it and every unit trains with the same policy.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from competition.artefact import read_json
from competition.atomic import write_json
from competition.console import console, table
from competition.data.dataset import Dataset
from competition.errors import FingerprintError
from competition.folds import smallest_class
from competition.metrics import logloss, paired_difference, row_logloss
from competition.models.base import ImageModel
from competition.models.schema import Augment, ModelConfig, ModelInputs, PolicyDecision, PolicyRaceConfig
from competition.training import dihedral, tta
from competition.training.loop import steps_per_epoch

PROBE = "probe"  # the linear probe on frozen features, a candidate beside the fine-tuning policies
RACE_FILE = "policy_race.json"
INNER_FOLDS = 5  # the first unit's training rows are split into this many stratified inner folds (fewer when a class is smaller)
_CHEAP_FIRST = {PROBE: 0, "head": 1, "top": 2, "all_but_stem": 3, "all": 4}  # also the simplicity order
SCOUTS = (PROBE, "head")  # train no backbone block: cheap, and what small data needs; the prior leaves them room


class _Stop(Exception):
    """Raised from `on_epoch` to end a candidate's fit: past a rung it did not pass, or the budget is spent."""


class RaceRecord(BaseModel):
    """`policy_race.json`: the decision and the fingerprints of the run it was made for."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: dict[str, str]
    decision: dict[str, Any]


@dataclass
class Entry:
    """One candidate in the race: what it cost and how well it did."""

    name: str
    val_loss: list[float] = field(default_factory=list)  # per epoch, on the first inner fold
    epochs: int = 0  # epochs trained over all inner folds
    seconds: float = 0.0  # by the race's clock (`race_clock`)
    outcome: str = "not run: budget spent"
    loss: float | None = None  # pooled inner-validation log loss of its kept weights (complete candidates only)
    kept_past: list[int] = field(default_factory=list)  # rungs (epochs) it missed where the budget had room to let it train on
    row_loss: np.ndarray | None = field(default=None, repr=False)  # per validation row, complete candidates only

    def record(self) -> dict[str, Any]:
        """The numbers meta.json and the report show (no per-row arrays)."""
        out = asdict(self)
        out.pop("row_loss")
        out["val_loss"] = [round(v, 5) for v in self.val_loss]
        out["seconds"] = round(self.seconds, 2)
        return out


class Rungs:
    """ASHA's promotion rule for candidates trained one after another.

    Rung i sits at `min_epochs * eta**i` epochs (below `max_epochs`). Every candidate reaching a rung
    records its best validation loss so far there; it trains on only while it ranks among the best
    ceil(n / eta) of the n losses recorded at that rung (the first one always does).
    """

    def __init__(self, min_epochs: int, eta: int, max_epochs: int) -> None:
        self.eta = eta
        self.epochs: list[int] = []
        e = min_epochs
        while e < max_epochs:
            self.epochs.append(e)
            e *= eta
        self.seen: dict[int, list[float]] = {e: [] for e in self.epochs}

    def passes(self, epochs_done: int, best_loss: float) -> bool:
        """Record `best_loss` if `epochs_done` is a rung; False when the candidate should stop there."""
        if epochs_done not in self.seen:
            return True
        losses = self.seen[epochs_done]
        losses.append(best_loss)
        return sorted(losses).index(best_loss) < math.ceil(len(losses) / self.eta)


CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.process_time, "wall": time.perf_counter}


def race_clock(cfg: ModelConfig) -> str:
    """The clock the race's budget is kept in: `cpu` (this process's CPU seconds over all its threads,
    `time.process_time`) when the candidates train on the CPU, `wall` when their framework puts them on a
    GPU (`ImageModel.computes_on_gpu`).

    CPU seconds count this process's work only, so other jobs on a shared machine move the budget far less
    than the wall clock does (a first epoch timed under load set a budget ~4x a quiet run's:
    docs/policy-race.md); threads that spin while waiting for a descheduled sibling still add some. On a GPU
    the work is the device's and the process mostly waits for it, so there the wall clock is the cost."""
    from competition.models.registry import model_class

    return "wall" if model_class(cfg.framework).computes_on_gpu(cfg) else "cpu"


def _seconds(work: Callable[[], object], clock: Callable[[], float]) -> float:
    """Seconds `work()` takes by `clock`."""
    started = clock()
    work()
    return clock() - started


def inner_folds(labels: np.ndarray, min_valid: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified inner folds (fit rows, validation rows) of these rows: the first m of k, m the fewest whose
    validation rows add up to `min_valid` (all k when the rows are fewer); k is 5, or the smaller class's count when
    that is below 5 (`settled` races only with at least 2)."""
    from sklearn.model_selection import StratifiedKFold

    k = min(INNER_FOLDS, smallest_class(labels))
    splits = list(StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(labels)), labels))
    chosen, total = [], 0
    for fit, valid in splits:
        chosen.append((fit, valid))
        total += len(valid)
        if total >= min_valid:
            break
    return chosen


def simplicity(name: str) -> tuple[int, int]:
    """Rank of a candidate by how many weights it trains: probe < head < top:K (by K) < all_but_stem < all."""
    if name.startswith("top:"):
        return (_CHEAP_FIRST.get("top", 2), int(name[4:]))
    return (_CHEAP_FIRST[name], 0)


def race_order(candidates: list[str], prior: str) -> list[str]:
    """The table's pick first (its first epoch sets the budget, and tells whether it can complete: `Race.prior_cut`),
    then the others cheapest first, the scouts (`probe`, `head`) leading."""
    rest = sorted(dict.fromkeys(c for c in candidates if c != prior), key=simplicity)
    return [prior, *rest]


@dataclass
class RaceSetup:
    """What the race trains on and what its budget is measured against."""

    model_name: str
    model_cfg: ModelConfig  # the requested config (policy auto)
    train: Dataset  # every training row (input statistics are fitted on all images, as the trainer does)
    rows: np.ndarray  # the first unit's training rows: the race's data
    n_units: int
    predict_batch_size: int
    predict_rows: int = 0  # predictions one unit makes after its fit: (held-out + test rows) x TTA views
    augment: Augment | None = None  # the profile's augmentation on images, as the units train
    tta: list[dihedral.Variant] = field(default_factory=lambda: ["id"])  # the profile's TTA views, as the units predict


def candidate_config(model_cfg: ModelConfig, name: str) -> ModelConfig:
    """The config a candidate trains with: the linear probe's for `probe`, else the model's with that policy."""
    if name == PROBE:
        from competition.models.linear_probe import probe_for

        return probe_for(model_cfg)
    return model_cfg.model_copy(update={"policy": name})


class Race:
    """One race: candidates in order, each on the inner folds, stopped by the rungs or the budget."""

    def __init__(self, setup: RaceSetup, prior: PolicyDecision) -> None:
        self.setup = setup
        self.settings: PolicyRaceConfig = setup.model_cfg.auto.race
        labels = setup.train.labels
        assert labels is not None
        self.y = labels[setup.rows].astype(np.float64)
        self.folds = inner_folds(self.y, self.settings.min_valid, setup.model_cfg.seed)
        self.planned_folds = len(self.folds)  # before `prior_cut` keeps fewer
        self.max_epochs = min(self.settings.max_epochs, setup.model_cfg.train.epochs)
        self.rungs = Rungs(self.settings.min_epochs, self.settings.eta, self.max_epochs)
        self.prior = prior
        self.entries = [Entry(name) for name in race_order(self.settings.candidates, prior.name)]
        self.prior_entry = next(e for e in self.entries if e.name == prior.name)
        self.clock_name = race_clock(setup.model_cfg)
        self.clock = CLOCKS[self.clock_name]
        self.floor_s = 0.0  # `floor_steps` x `step_s`, known once the prior has trained an epoch
        self.step_s = 0.0  # seconds of one of the prior's optimizer steps, everything included (`_set_budget`), likewise
        self._prior_steps = 0  # optimizer steps the prior has trained so far, over its inner folds
        self.started = self.clock()
        self.wall_started = time.perf_counter()
        self.budget_s = math.inf  # known once the prior has trained an epoch
        self.reference_s = math.nan
        self._prior_epoch_ends: list[float] = []  # when each of the prior's epochs on the first inner fold ended
        self._predict_row_s = 0.0  # seconds per predicted row of the prior (timed once, after its first epoch)
        self._prior_epoch_s = math.nan  # the prior's fastest epoch so far on the first inner fold's fit rows

    @property
    def valid_y(self) -> np.ndarray:
        """The labels of the race's inner-validation rows, fold after fold (the order of a candidate's pooled predictions)."""
        return np.concatenate([self.y[v] for _, v in self.folds])

    def spent(self) -> float:
        """Seconds spent so far, by the race's clock (`race_clock`)."""
        return self.clock() - self.started

    def run(self) -> None:
        """Train every candidate the budget allows (the engine's bar counts the candidates done: `report_step`)."""
        from competition.engine import report_step

        for done, entry in enumerate(self.entries):
            report_step(done, len(self.entries))
            if self.spent() >= self.budget_s:
                break
            if entry.name == PROBE and self.setup.model_cfg.framework != "timm":
                entry.outcome = "not raced: the linear probe needs a timm backbone"
                continue
            started = self.clock()
            try:
                self._candidate(entry)
            finally:
                entry.seconds = self.clock() - started

    def _candidate(self, entry: Entry) -> None:
        """All inner folds of one candidate; on the first, the rungs may stop it; the budget may stop any fold."""
        cfg = candidate_config(self.setup.model_cfg, entry.name)
        is_probe = entry.name == PROBE
        features: np.ndarray | None = None  # the probe's dihedral-mean features, computed once; networks train on images
        predictions = []
        for i, (fit, valid) in enumerate(self.folds):
            if self.spent() >= self.budget_s:
                entry.outcome = f"stopped: budget spent before inner fold {i + 1} of {len(self.folds)}"
                return
            model = self._model(cfg)
            if features is None and is_probe:
                features = model.prefix_features(self.setup.train.images[self.setup.rows], self.setup.predict_batch_size)
            fit_in, valid_in = self._inputs(features, fit), self._inputs(features, valid)
            fit_started = self.clock()
            seed = int(np.random.SeedSequence([self.setup.model_cfg.seed, 7919, i]).generate_state(1)[0])
            try:
                model.fit(
                    fit_in,
                    valid_in,
                    epochs=self.max_epochs,  # every inner fold as a unit trains: its own early stopping, not fold 1's
                    batch_size=cfg.train.batch_size,
                    augment=None if is_probe else self.setup.augment,
                    seed=seed,
                    patience=cfg.train.patience,
                    on_epoch=partial(self._watch, entry, i, fit_started, len(fit), partial(model.predict, valid_in, self.setup.predict_batch_size)),
                )
            except _Stop as stop:
                entry.outcome = str(stop)
                return
            if is_probe:  # its features average all 8 views already
                predictions.append(model.predict(valid_in, self.setup.predict_batch_size))
            else:
                predictions.append(tta.predict_images(model, valid_in, self.setup.tta, self.setup.predict_batch_size))
        entry.row_loss = row_logloss(self.valid_y, np.concatenate(predictions))
        entry.loss = float(entry.row_loss.mean())
        entry.outcome = "complete"

    def _model(self, cfg: ModelConfig) -> ImageModel:
        """A fresh candidate model (pretrained weights, input statistics from every training image), its policy applied."""
        from competition.models.registry import create_model

        model = create_model(self.setup.model_name, cfg)
        model.prepare(self.setup.train.images, self.setup.train.angle)
        model.apply_policy(cfg.policy, self.setup.train.images)
        return model

    def _inputs(self, features: np.ndarray | None, index: np.ndarray) -> ModelInputs:
        rows, train = self.setup.rows[index], self.setup.train
        x = train.images[rows] if features is None else features[index]
        return ModelInputs(x, train.angle[rows], self.y[index], is_features=features is not None)

    def _watch(self, entry: Entry, fold: int, fit_started: float, n_fit: int, predict: Callable[[], np.ndarray], epoch: int, metrics: dict[str, float]) -> None:
        """`on_epoch` of every race fit: times the prior's epochs (the budget), stops a prior that cannot complete,
        applies the rungs and the budget.

        The rungs skip the probe (its one fit is final, not an epoch-1 point of a network) and never stop the prior
        (the table's informed guess, which the budget is timed on); its losses still count at the rungs. A candidate
        that misses a rung stops only when the budget cannot also pay for it and the later ones to finish (`affords`),
        or always with `halving: always`."""
        entry.epochs += 1
        if fold == 0:
            entry.val_loss.append(float(metrics["val_loss"]))
        if entry is self.prior_entry:
            self._prior_steps += steps_per_epoch(n_fit, self.setup.model_cfg.train.batch_size)
            if fold == 0:
                now = self.clock()
                if epoch == 0:
                    self._predict_row_s = _seconds(predict, self.clock) / max(1, len(self.folds[0][1]))
                self._time_reference(now, fit_started, n_fit)
            self._set_budget()
            if fold == 0 and epoch == 0 and (cut := self.prior_cut()) is not None:
                raise _Stop(cut)
        if self.spent() >= self.budget_s:
            raise _Stop(f"stopped: budget spent (inner fold {fold + 1}, epoch {epoch + 1})")
        # `passes` first: the prior's losses count at the rungs though no rung stops it
        if fold == 0 and entry.name != PROBE and not self.rungs.passes(epoch + 1, min(entry.val_loss)) and entry is not self.prior_entry:
            if self.settings.halving == "always" or not self.affords(entry, (self.clock() - fit_started) / (epoch + 1), epoch + 1):
                raise _Stop(f"stopped at the {epoch + 1}-epoch rung")
            entry.kept_past.append(epoch + 1)

    def affords(self, entry: Entry, epoch_s: float, epochs_done: int) -> bool:
        """Whether the budget still pays for `entry` (`epochs_done` epochs of its first inner fold done, `epoch_s`
        seconds each) to finish its inner folds and for every candidate after it to race in full, plus each one's TTA
        predictions of the validation rows at the prior's speed. A later candidate's epoch is costed at the more of
        `epoch_s` and `network_epoch_s`: later candidates train more weights (`race_order`), and one racing after a
        cheap candidate must not be costed at its speed.

        With `halving: needed` a candidate that misses a rung trains on while this holds: successive halving exists to
        share a budget that cannot pay for every candidate (Li et al., arXiv:1810.05934), and its cut at a rung looks at
        one inner fold, 16-20 rows on 100 images, where it stopped the run that scored best (`all`, 0.427 private against
        the race's pick 0.462; docs/policy-race.md). Where the budget binds (the full competition) the rungs stop as before."""
        epochs = len(self.folds) * self.max_epochs
        predict_s = self.tta_predict_s(self.folds)
        later_epoch_s = max(epoch_s, self.network_epoch_s())
        later = len(self.entries) - 1 - self.entries.index(entry)
        need = (epochs - epochs_done) * epoch_s + predict_s + later * (epochs * later_epoch_s + predict_s)
        return self.spent() + need <= self.budget_s

    def _time_reference(self, now: float, fit_started: float, n_fit: int) -> None:
        """The budget's reference, one policy's run: units x (epochs x the prior's fastest epoch so far, scaled to a
        unit's rows, + the unit's predictions at the prior's speed). The fastest epoch, re-timed after each: one slow
        first epoch (warm-up, a busy machine) would otherwise inflate the budget for the whole race."""
        self._prior_epoch_ends.append(now)
        ends = [fit_started, *self._prior_epoch_ends]
        fastest = min(b - a for a, b in zip(ends, ends[1:], strict=False))
        self._prior_epoch_s = fastest
        per_epoch = fastest * len(self.setup.rows) / n_fit  # a unit fits on all of `rows`
        per_unit = self.setup.model_cfg.train.epochs * per_epoch + self.setup.predict_rows * self._predict_row_s
        self.reference_s = self.setup.n_units * per_unit

    def _set_budget(self) -> None:
        """The budget after each of the prior's epochs: the larger of `budget` x the reference and the floor,
        `floor_steps` x `step_s`. `step_s` is what one optimizer step of the prior has cost so far, everything included
        (its model builds, epochs, validation and predictions: the race's `spent`, since the prior races first), or a
        whole network's step (`network_epoch_s` over the first inner fold's steps) when that is more: a cheap `head`
        prior must not price the floor.

        The floor is counted in steps and priced by the same clock on the same work as everything it pays for, so where
        it binds (tiny data) the race does about the same work on a fast or a slow machine, quiet or loaded, and on a
        GPU. A floor of fixed seconds bought 5-7x fewer epochs with two or three 2-thread jobs beside the race on 2 cores
        (threads spinning while they wait for a core count as CPU time): at 100 images the race then trained 2 of its 5
        candidates, or the prior kept 1 of its 5 inner folds (docs/policy-race.md, "The floor")."""
        self.step_s, self.floor_s, self.budget_s = self.budget_at(self.spent(), self._prior_steps)

    def budget_at(self, prior_s: float, prior_steps: int) -> tuple[float, float, float]:
        """(`step_s`, `floor_s`, `budget_s`) once the prior has spent `prior_s` seconds on `prior_steps` steps (`_set_budget`)."""
        network_step_s = self.network_epoch_s() / self.first_fold_steps()
        step_s = max(prior_s / prior_steps, network_step_s)
        floor_s = self.settings.floor_steps * step_s
        return step_s, floor_s, max(self.settings.budget * self.reference_s, floor_s)

    def first_fold_steps(self) -> int:
        """Optimizer steps of an epoch on the first inner fold's fit rows."""
        return steps_per_epoch(len(self.folds[0][0]), self.setup.model_cfg.train.batch_size)

    def network_epoch_s(self) -> float:
        """Estimated seconds of an epoch of a candidate that trains the whole network, on the first inner fold's fit rows:
        the more of the prior's fastest epoch and a full backward pass (3 forward passes of the fit rows at the prior's
        prediction speed, the rule of thumb that backpropagation costs about twice the forward pass). A cheap prior (a
        `head`) must not set the price of the candidates after it, nor the floor."""
        backward_s = 3 * len(self.folds[0][0]) * self._predict_row_s
        return max(backward_s, self._prior_epoch_s if math.isfinite(self._prior_epoch_s) else 0.0)

    def tta_predict_s(self, folds: list[tuple[np.ndarray, np.ndarray]]) -> float:
        """Estimated seconds of one candidate's TTA predictions of these inner folds' validation rows, at the prior's speed."""
        return sum(len(v) for _, v in folds) * len(self.setup.tta) * self._predict_row_s

    def prior_cost_s(self, n_folds: int | None = None) -> tuple[float, float]:
        """Estimated seconds (the prior's remaining race, the scouts' race) after the prior's first epoch, racing on
        the first `n_folds` inner folds (default: all): the prior's inner folds x epochs at its fastest epoch plus its
        TTA predictions; the probe's 8-view features of the race rows and the head's epochs (a forward pass per fit
        row) at the prior's predicted seconds per row."""
        folds = self.folds[:n_folds]  # None: all
        row_s = self._predict_row_s
        prior = (len(folds) * self.max_epochs - 1) * self._prior_epoch_s + self.tta_predict_s(folds)
        names = {e.name for e in self.entries if e is not self.prior_entry}
        fit_rows = sum(len(f) for f, _ in folds)
        scouts = (8 * len(self.setup.rows) * row_s if PROBE in names and self.setup.model_cfg.framework == "timm" else 0.0) + (
            self.max_epochs * fit_rows * row_s if "head" in names else 0.0
        )
        return prior, scouts

    def prior_cut(self) -> str | None:
        """Why the prior stops after its first epoch, or None when it can complete its inner folds and leave the
        scouts their race within the budget (`prior_cost_s`), the floor priced as it will be when the prior has
        finished those folds (`budget_at`; priced now, one epoch's steps would carry a whole fold's model build; the
        later folds' builds are not in the estimate, so the projection errs low).

        When all its inner folds do not fit but fewer do, every candidate races on the most that fit (the first m:
        fewer validation rows, the same for all), so the fine-tuning prior still competes: cut on 400 images, it left
        the probe the only candidate to complete, and `auto` chose it at 0.35 private against `all`'s 0.22 (session 8).
        Only when not even one inner fold fits (about 100 images: a fine-tuning policy's epochs cost most of a run)
        does the prior stop, and the budget goes to the cheaper candidates: racing on, it spent the whole budget there
        and the probe, the best single model on scikit-learn's digits, never raced."""
        for n_folds in range(len(self.folds), 0, -1):
            prior, scouts = self.prior_cost_s(n_folds)
            budget_s = self.budget_at(self.spent() + prior, n_folds * self.max_epochs * self.first_fold_steps())[2]
            if self.spent() + prior + scouts <= budget_s:
                del self.folds[n_folds:]  # in place: the prior's loop over them is running
                return None
        unit = seconds_unit({"clock": self.clock_name})  # prior, scouts: the loop's last estimate, one inner fold
        return (
            f"stopped after its first epoch: even 1 of its {len(self.folds)} inner folds x {self.max_epochs} epochs (~{prior:.0f} {unit} more) "
            f"and the scouts' race (~{scouts:.0f} {unit}) exceed the budget ({budget_s:.0f} {unit}): the cheaper candidates race instead"
        )

    def class_prior_loss(self) -> float:
        """Log loss of predicting each inner fold's training iceberg rate: the floor any candidate should beat."""
        return logloss(self.valid_y, np.concatenate([np.full(len(v), self.y[f].mean()) for f, v in self.folds]))

    def decide(self) -> tuple[str, str]:
        """(winner, rule text) of this race's complete candidates: `prior_choice`, else `one_se_choice`."""
        kept = prior_choice(self.entries, self.settings.prior_margin_se, self.prior.name)
        return kept if kept is not None else one_se_choice(self.entries, self.settings.margin_se, self.prior.name)

    def numbers(self, rule: str, winner: str) -> dict[str, Any]:
        """The race's figures for meta.json (`policy_numbers.race`) and the report."""
        spent = self.spent()
        return {
            "candidates": [e.record() for e in self.entries],
            "prior": self.prior.name,
            "winner": winner,
            "rule": rule,
            "class_prior_loss": round(self.class_prior_loss(), 5),
            "inner_folds": len(self.folds),
            "inner_folds_planned": self.planned_folds,
            "valid_rows": len(self.valid_y),
            "race_rows": len(self.setup.rows),
            "rungs": self.rungs.epochs,
            "max_epochs": self.max_epochs,
            "eta": self.settings.eta,
            "halving": self.settings.halving,
            "margin_se": self.settings.margin_se,
            "budget": self.settings.budget,
            "floor_steps": self.settings.floor_steps,
            "step_s": round(self.step_s, 6),
            "floor_s": round(self.floor_s, 4),
            "budget_s": round(self.budget_s, 4),
            "reference_s": round(self.reference_s, 4),
            "clock": self.clock_name,
            "race_s": round(spent, 4),
            "wall_s": round(time.perf_counter() - self.wall_started, 4),
            "spent_fraction": round(spent / self.reference_s, 4),
        }


def one_se_choice(entries: list[Entry], margin_se: float, prior_name: str) -> tuple[str, str]:
    """(winner, rule text) by the one-standard-error rule over the complete candidates of `entries` (`prior_name`
    is the table's pick, one of them): the simplest whose inner-validation log loss is within `margin_se` standard errors of the best's
    (Hastie, Tibshirani, Friedman, The Elements of Statistical Learning, 2nd ed., 7.10). Simplest = fewest trained
    weights (`simplicity`). With `margin_se` 0 (the default since session 9) the lowest loss wins and simplicity only
    breaks exact ties; with 1, on small data a simple candidate wins unless a richer one is clearly better, which
    lost 0.09-0.13 log loss on the ladder's 200 and 400 images (docs/policy-race.md). The table's pick breaks exact
    ties among equally simple candidates; it is kept when nothing completed."""
    prior, complete, best = _standings(entries, prior_name)
    if best is None:
        return prior.name, f"no candidate completed its inner folds within the budget: the table's pick {prior.name} kept"
    gaps = {e.name: paired_gap(e, best) for e in complete}
    within = [e for e in complete if e is best or gaps[e.name][0] <= margin_se * gaps[e.name][1]]
    simplest = min(within, key=lambda e: (simplicity(e.name), e is not prior))
    if simplest is best:
        simpler = [e for e in complete if simplicity(e.name) < simplicity(best.name)]
        if not simpler:
            why = "and it is the simplest that completed"
        elif margin_se > 0:
            why = f"no simpler candidate within {margin_se:g} SE"
        else:
            why = "the lowest wins (margin_se 0)"
        return best.name, f"{best.name} has the lowest inner-validation log loss ({best.loss:.4f}); {why}"
    gap, se = gaps[simplest.name]
    n_rows = 0 if best.row_loss is None else len(best.row_loss)
    return simplest.name, (
        f"{simplest.name} {simplest.loss:.4f} is within {margin_se:g} SE of the best, {best.name} {best.loss:.4f} "
        f"(worse by {gap:.4f}, standard error {se:.4f} over {n_rows} rows), and simpler -> {simplest.name}"
    )


def prior_choice(entries: list[Entry], margin_se: float, prior_name: str) -> tuple[str, str] | None:
    """(the table's pick, rule text) when it completed and the lowest complete candidate beats it by no more than
    `margin_se` standard errors of the paired per-row difference, else None (the race decides: `one_se_choice`).

    The table is the prior the race must overturn with evidence, not a tie to break: on the ladder's 400 images the
    race twice measured top:3 and all_but_stem (the table's pick) within 0.001 of each other over 256 rows, and the
    lowest took top:3 once, 0.351 private against 0.222 (docs/policy-race.md, "Decision rule")."""
    prior, complete, best = _standings(entries, prior_name)
    if margin_se <= 0 or prior not in complete or best is None or best is prior:
        return None
    gap, se = paired_gap(prior, best)
    if gap > margin_se * se:
        return None
    n_rows = 0 if best.row_loss is None else len(best.row_loss)
    return prior.name, (
        f"the table's pick {prior.name} {prior.loss:.4f} is within {margin_se:g} SE of the lowest, {best.name} {best.loss:.4f} "
        f"(worse by {gap:.4f}, standard error {se:.4f} over {n_rows} rows): kept"
    )


def _standings(entries: list[Entry], prior_name: str) -> tuple[Entry, list[Entry], Entry | None]:
    """(the table's pick, the complete candidates, the lowest of them: the pick on an exact tie; None when none completed)."""
    prior = next(e for e in entries if e.name == prior_name)
    complete = [e for e in entries if e.row_loss is not None and e.loss is not None]
    return prior, complete, min(complete, key=lambda e: (e.loss, e is not prior), default=None)


def paired_gap(entry: Entry, best: Entry) -> tuple[float, float]:
    """Mean and standard error of `entry`'s per-row log loss minus `best`'s, paired over the same validation rows."""
    assert entry.row_loss is not None and best.row_loss is not None
    return paired_difference(entry.row_loss, best.row_loss)


def table_pick(setup: RaceSetup) -> PolicyDecision:
    """The seed's 2 x 2 table's decision (`ImageModel.apply_policy("auto")` on every training image): the race's prior."""
    from competition.models.registry import create_model

    model = create_model(setup.model_name, setup.model_cfg)
    model.prepare(setup.train.images, setup.train.angle)
    return model.apply_policy("auto", setup.train.images)


def race(setup: RaceSetup, prior: PolicyDecision) -> PolicyDecision:
    """Race the candidates (the table's pick, then the rest cheapest first: `race_order`) and return the decision with its figures in `numbers["race"]`."""
    contest = Race(setup, prior)
    contest.run()
    winner, rule = contest.decide()
    floor = contest.class_prior_loss()
    won = next(e for e in contest.entries if e.name == winner)
    if won.loss is not None and won.loss >= floor:
        rule += f" (warning: no better than the class prior's {floor:.4f} on these rows)"
    figures = contest.numbers(rule, winner)
    reason = (
        f"race on {figures['valid_rows']} inner-validation predictions ({figures['inner_folds']} inner fold{'s' * (figures['inner_folds'] != 1)} of the first unit's "
        f"{figures['race_rows']} training rows; {figures['spent_fraction']:.0%} of one policy's run): {rule}. Table: {prior.reason}"
    )
    return PolicyDecision(name=winner, requested="auto", reason=reason, numbers={**prior.numbers, "table_pick": prior.name, "race": figures})


def race_columns(figures: dict[str, Any]) -> list[str]:
    """The headers of `race_table`'s rows; the seconds column names the race's clock ("CPU s" or "s")."""
    return ["candidate", "val loss: first, best (inner fold 1)", "epochs", seconds_unit(figures), "inner log loss", "outcome"]


def race_table(figures: dict[str, Any]) -> list[tuple[str, str, int, str, str, str]]:
    """Rows (candidate, first and best validation loss, epochs, seconds, inner log loss, outcome) of a race's figures
    (`policy_numbers.race` of meta.json); the table's pick is marked "(table)", the winner "*"."""
    rows = []
    for c in figures["candidates"]:
        curve = f"{c['val_loss'][0]:.4f}, {min(c['val_loss']):.4f}" if c["val_loss"] else ""
        loss = "" if c["loss"] is None else f"{c['loss']:.4f}"
        name = c["name"] + (" (table)" if c["name"] == figures["prior"] else "") + (" *" if c["name"] == figures["winner"] else "")
        kept = c.get("kept_past")  # absent from races stored before session 10
        outcome = c["outcome"] + (f" (kept past the {', '.join(map(str, kept))}-epoch rung{'s' * (len(kept) > 1)}: the budget had room)" if kept else "")
        rows.append((name, curve, c["epochs"], f"{c['seconds']:.1f}", loss, outcome))
    return rows


def _budget_text(figures: dict[str, Any]) -> str:
    """The budget as the title shows it: the fraction, or the floor when that is what bound (`floor_steps`; races stored
    before session 12 had `min_seconds`, before session 6 no floor)."""
    floor = figures.get("floor_s", figures.get("min_seconds", 0.0))
    if figures["budget"] * figures["reference_s"] >= floor:
        return f"{figures['budget']:.0%}"
    text = f"{figures['budget']:.0%} of a run is under the floor: "
    if "floor_steps" in figures:
        return text + f"auto.race.floor_steps {figures['floor_steps']} (= {floor:.1f} {seconds_unit(figures)} here)"
    text += f"auto.race.min_seconds {figures['min_seconds']:g} s"
    return text + (f" (= {floor:g} CPU s on all threads)" if figures.get("clock") == "cpu" else "")


def seconds_unit(figures: dict[str, Any]) -> str:
    """How a race's seconds read: "CPU s" when its budget was kept in CPU seconds (`race_clock`), else "s"
    (the wall clock; races stored before the clock was recorded)."""
    return "CPU s" if figures.get("clock") == "cpu" else "s"


def print_race(figures: dict[str, Any]) -> None:
    """The race as a Rich table in the terminal, with its rule and cost."""
    title = (
        f"policy race ({figures['valid_rows']} inner-validation rows; class prior {figures['class_prior_loss']:.4f}; "
        f"{figures['race_s']:.1f} {seconds_unit(figures)} = {figures['spent_fraction']:.0%} of one policy's run, budget {_budget_text(figures)})"
    )
    console.print(table(title, race_columns(figures), race_table(figures)))
    console.print(f"policy race: {figures['rule']}")


def stored(run_dir: Path, key: dict[str, str]) -> PolicyDecision | None:
    """The decision stored in `run_dir` for these fingerprints, or None (none stored, or made for other ones)."""
    path = Path(run_dir) / RACE_FILE
    if not path.is_file():
        return None
    record = read_json(path, RaceRecord, f"delete {path} to race again", FingerprintError)
    return PolicyDecision(**record.decision) if record.key == key else None


def settled(run_dir: Path, key: dict[str, str], setup: RaceSetup, run: Callable[[], PolicyDecision] | None = None) -> PolicyDecision | None:
    """The run's `auto` decision: stored in `run_dir`, else raced by `run` (default: `race` here; the trainer runs it as
    an engine task, where the units train) and stored; None when nothing is raced.

    Nothing is raced (the caller applies the policy as before) when the policy is not `auto`, the
    race is off (`auto.race.enabled: false`), the weights are random (`weights: none` trains every block),
    the model is a linear probe (framework `probe`: one way to train, `auto` means `head`), or the first unit's
    training rows hold fewer than 2 of a class (no stratified inner folds; said in one line).
    Ctrl-C during the race raises KeyboardInterrupt with one line for the CLI to print: what was
    interrupted, that nothing of the race was stored, and that the same command races again.
    """
    cfg = setup.model_cfg
    if cfg.policy != "auto" or not cfg.auto.race.enabled or cfg.weights == "none" or cfg.framework == "probe":
        return None
    labels = setup.train.labels
    assert labels is not None
    if (rarer := smallest_class(labels[setup.rows])) < 2:
        console.print(
            f"policy race: not run: the first unit's training rows hold {rarer} of the rarer class, and inner folds need 2 of each: the table's pick applies"
        )
        return None
    decision = stored(run_dir, key)
    if decision is not None:
        console.print(f"policy race: reusing the decision in {Path(run_dir) / RACE_FILE}: {decision.name}")
        return decision
    try:
        decision = run() if run is not None else race(setup, table_pick(setup))
    except KeyboardInterrupt as exc:
        raise KeyboardInterrupt(
            f"the policy race of run {Path(run_dir).name}; nothing of the race was stored (no {RACE_FILE}, no unit trained): the same command races again"
        ) from exc
    print_race(decision.numbers["race"])
    write_json(Path(run_dir) / RACE_FILE, {"key": key, "decision": asdict(decision)})
    return decision
