"""The fold trainer: one model on every (repeat, fold, seed) unit of the folds file.

Each unit fits on the other folds, early-stops and keeps the best epoch on the held-out fold,
predicts the held-out fold (OOF) and the whole test set with TTA, and returns everything it made,
its saved model as files included. Every missing unit is a task of an engine (competition.engine:
`local` runs them here one after another, `ray` in Ray worker processes on a cluster: `unit_pool`); the
plan, with its images, is shared once, and the driver writes each unit's files (store.write_unit)
as its result lands, so no worker writes into the run folder and the files are the same whichever
engine ran the unit. A rerun skips finished units, so a run killed at any moment resumes where it
stopped and ends with the same tables as an uninterrupted one: every unit's randomness comes from
its own seed, never from the units before it. The unit's torch runs with its profile's
`resources.cpus` threads in both engines (Ray would give it that many through OMP_NUM_THREADS, and
the thread count changes the last bits of a fit), so both engines write the same bytes.
"""

from __future__ import annotations

import math
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from competition.atomic import recover_folder, replaced_folder, staging_path
from competition.config import RESERVED_RUN_NAMES, CompetitionConfig, config_hash, parse_overrides, validate
from competition.console import console, progress, table
from competition.data.dataset import Dataset
from competition.engine import Engine, Resources, Task, open_engine, report_step
from competition.errors import ConfigError, UserError
from competition.fingerprint import of_json
from competition.folds import Folds
from competition.locks import run_lock
from competition.metrics import logloss
from competition.models.base import ImageModel
from competition.models.schema import Augment, ModelConfig, ModelInputs, PolicyDecision
from competition.overrides import Overrides, route
from competition.task import R
from competition.training import dihedral, policy_race, store, tta
from competition.training.augment import Augmenter
from competition.training.curves import CURVES_FILE, plot_curves
from competition.training.prefix_cache import FeatureAugmenter, PrefixCache
from competition.training.profiles import ChosenProfile, Profile, UnitResources, load_profile

UNHASHED_PROFILE_KEYS = {
    "seeds",
    "seed",
    "save_models",
    "predict_batch_size",
    "per_model",
    "resources",
    "min_steps",
}  # do not change any unit's predictions (`per_model` is applied before hashing; `resources` sets torch's threads: last bits only;
# `min_steps` acts through the model's train.epochs, which is hashed, so runs it leaves alone keep their hash)
PROFILE_TO_MODEL = {
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "patience": "train.patience",
    "policy": "policy",
    "mixed_precision": "mixed_precision",
}


@dataclass(frozen=True)
class Plan:
    """Everything fixed before the first unit: configs, data, folds and the units to run."""

    cfg: CompetitionConfig
    model_name: str
    model_cfg: ModelConfig
    chosen: ChosenProfile
    train: Dataset
    test: Dataset  # the test rows the model predicts (all, or the scored ones: see Profile.predict_unscored)
    test_ids: np.ndarray  # every test id, in the order of test.json
    folds: Folds
    run_dir: Path
    prints: store.Fingerprints
    units: list[store.Unit]
    policy_source: str
    prefix_root: Path  # absolute `<work_dir>/cache/prefix` (workers may start elsewhere; see prefix_folder)
    decision: PolicyDecision | None = None  # the policy race's decision for `auto` (settle_policy); model_cfg then trains it
    scaled: str | None = None  # why epochs were raised for this data (scale_to_data), None when they were not

    @property
    def profile(self) -> Profile:
        return self.chosen.profile


def merge_profile(model_cfg: ModelConfig, profile: Profile, model_overrides: Sequence[str]) -> ModelConfig:
    """The model config the units train with: the profile's values replace the YAML's, command-line model keys win."""
    by_user = {".".join(keys) for keys, _ in parse_overrides(model_overrides)}
    data = model_cfg.model_dump(mode="json")
    for key, dotted in PROFILE_TO_MODEL.items():
        value = getattr(profile, key)
        if value is not None and dotted not in by_user:
            *sections, leaf = dotted.split(".")
            node = data
            for section in sections:
                node = node[section]
            node[leaf] = value
    return validate(ModelConfig, data, f"model {model_cfg.name!r} with the trainer profile")


def hashed_settings(model_cfg: ModelConfig, profile: Profile) -> dict[str, Any]:
    """What a run's config hash is the hash of: every setting that changes a unit's predictions (not the number of seeds; `auto`'s thresholds and race only
    when the policy is `auto`, so tuning the race keeps the finished units of explicit policies valid)."""
    model = model_cfg.model_dump(mode="json", exclude=None if model_cfg.policy == "auto" else {"auto"})
    return {"model": model, "profile": profile.model_dump(mode="json", exclude=UNHASHED_PROFILE_KEYS)}


RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def run_folder(cfg: CompetitionConfig, model_name: str, run_name: str | None) -> Path:
    """runs/<experiment>/<run name or model>/: a name lets one model have several runs (policies, seeds) to stack."""
    name = model_name if run_name is None else run_name
    if run_name is not None and (not RUN_NAME.fullmatch(run_name) or run_name in RESERVED_RUN_NAMES):
        raise ConfigError(
            f"run name (--name) {run_name!r}: expected letters, digits, '.', '_' or '-' (not starting with '.', '_' or '-'), "
            f"and not one of {', '.join(RESERVED_RUN_NAMES)}"
        )
    return cfg.run_dir(name)


def plan_run(cfg: CompetitionConfig, model_name: str, profile: str | None, overrides: Sequence[str], run_name: str | None = None) -> Plan:
    """Resolve configs (routing overrides), load data and folds, list the units."""
    from competition.data.loader import load_competition
    from competition.folds import load_folds
    from competition.models.registry import load_model_config

    routed = route(overrides, "train")
    cfg = routed.apply_competition(cfg)
    chosen = load_profile(profile, routed.profile, model=model_name)
    model_cfg = merge_profile(load_model_config(model_name, routed.model), chosen.profile, routed.model)
    train, test = load_competition(cfg)
    test_ids = test.ids
    if not chosen.profile.predict_unscored:
        test = test.subset(~test.machine_generated)
    folds = load_folds(cfg, train)
    min_steps = chosen.profile.min_steps if given(routed, "min_steps") or not given(routed, "epochs", "train.epochs") else 0
    model_cfg, scaled = scale_to_data(model_cfg, min_steps, smallest_fit(folds, len(train)))
    settings = hashed_settings(model_cfg, chosen.profile)
    prints = store.Fingerprints(of_json(settings), folds.fingerprint, train.fingerprint, test.fingerprint, settings)
    units = [store.Unit(r, f, s) for r, f in folds.units() for s in chosen.profile.seed_values()]
    run_dir = run_folder(cfg, model_name, run_name)
    prefix_root = (cfg.cache_dir / "prefix").absolute()
    return Plan(cfg, model_name, model_cfg, chosen, train, test, test_ids, folds, run_dir, prints, units, policy_source(routed, chosen), prefix_root,
                scaled=scaled)  # fmt: skip


def smallest_fit(folds: Folds, n_train: int) -> int:
    """Training rows of the unit that fits on the fewest (all rows but its held-out fold's)."""
    return n_train - int(folds.table.groupby(["repeat", "fold"]).size().max())


def scale_to_data(model_cfg: ModelConfig, min_steps: int, n_fit: int) -> tuple[ModelConfig, str | None]:
    """The config with `train.epochs` raised so that a fit on `n_fit` rows takes at least `min_steps` optimizer steps,
    patience and gradual unfreezing (both in epochs) raised in the same proportion (rounded up); and why, or
    (`model_cfg`, None) when the epochs already give that many steps.

    `plan_run` passes the profile's `min_steps` unless the command line gave `epochs` without `min_steps`: epochs
    typed by the user are trained as given.

    A fixed number of epochs is a fixed number of passes, not of updates: on 80 fit rows in batches of 32 the cpu
    profile's 8 epochs are 24 steps, on the full competition 328. Fine-tuning recipes state their length in steps
    for this reason (BiT's HyperRule: 500 steps for every dataset under 20,000 images; Kolesnikov et al., "Big
    Transfer (BiT): General Visual Representation Learning", ECCV 2020, section 3.3). On the ladder's digits
    (docs/training-loop.md, "Length on small data") 30 epochs instead of 5 cut every fine-tuned run's private log loss
    by 0.02-0.13. Steps per epoch as the fit loop counts them (`loop.steps_per_epoch`); frameworks that fit no network
    (`registry.EPOCHLESS`: the linear probe) are left alone."""
    from competition.models.registry import EPOCHLESS
    from competition.training.loop import steps_per_epoch

    t = model_cfg.train
    per_epoch = steps_per_epoch(n_fit, t.batch_size)
    epochs = max(t.epochs, math.ceil(min_steps / per_epoch))
    if epochs == t.epochs or model_cfg.framework in EPOCHLESS:
        return model_cfg, None
    factor = epochs / t.epochs

    def scaled(value: int | None) -> int | None:
        return None if value is None else math.ceil(value * factor)

    train = t.model_copy(update={"epochs": epochs, "patience": scaled(t.patience), "unfreeze_every": scaled(t.unfreeze_every)})
    reason = (
        f"epochs {t.epochs} -> {epochs}, patience {t.patience} -> {train.patience}: at least min_steps={min_steps} optimizer steps "
        f"({n_fit} fit rows in batches of {t.batch_size} are {per_epoch} an epoch); min_steps=0 keeps {t.epochs}"
    )
    return model_cfg.model_copy(update={"train": train}), reason


def given(routed: Overrides, *keys: str) -> bool:
    """Whether the command line set one of `keys` (a trainer-profile or model key, as typed)."""
    return any(item.partition("=")[0].strip() in keys for item in [*routed.profile, *routed.model])


def policy_source(routed: Overrides, chosen: ChosenProfile) -> str:
    """Where the requested policy came from, for meta.json (the decision's reason says why it was applied)."""
    if given(routed, "policy"):
        return "command line"
    if chosen.profile.policy is not None:
        return f"profile {chosen.name}"
    return "the model's config"


def fresh_model(plan: Plan) -> tuple[ImageModel, PolicyDecision]:
    """A new model (initialised from its config's `seed`), input statistics from all training images, policy applied.

    The input statistics use every training image and angle (no labels), so the frozen prefix,
    and its cache, is the same for every fold.
    """
    from competition.models.registry import create_model

    model = create_model(plan.model_name, plan.model_cfg)
    model.prepare(plan.train.images, plan.train.angle)
    decision = model.apply_policy(plan.model_cfg.policy, plan.train.images)
    if plan.decision is not None:  # the race's pick is applied above; the model and the run record the race's reason
        model.policy = decision = plan.decision
    return model, decision


def settle_policy(plan: Plan, engine: Engine, shared: Plan) -> PolicyDecision | None:
    """The decision on an `auto` policy: stored in the run folder, else raced as one engine task (`race_policy`, it
    trains: it runs where the units run) and stored by this process; None when nothing is raced.

    The race trains on the first unit's training rows only (repeat 0, fold 0 held out); its pick
    (a policy, or `probe`: the linear probe's config) then trains every unit (`decided`).
    `shared` is `plan` as `engine.share` returned it.
    """

    def run() -> PolicyDecision:
        found: list[PolicyDecision] = []
        key = f"policy race of {plan.run_dir.name}"  # the bar names the run: the race can take minutes before the units start
        engine.run([unit_task(plan, key, race_policy, (shared,))], lambda _, d: found.append(d), key)
        return found[0]

    return policy_race.settled(plan.run_dir, plan.prints.recorded(), race_setup(plan), run)


def race_policy(plan: Plan) -> PolicyDecision:
    """The engine task of the policy race (`policy_race.race` from the table's prior), on the units' threads (`unit_threads`)."""
    setup = race_setup(plan)
    with unit_threads(plan.model_cfg.framework, plan.profile.resources.threads()):
        return policy_race.race(setup, policy_race.table_pick(setup))


def decided(plan: Plan, decision: PolicyDecision | None) -> Plan:
    """The plan that trains the race's pick (a policy, or `probe`: the linear probe's config), or `plan` without a race."""
    if decision is None:
        return plan
    probe = decision.name == policy_race.PROBE
    chosen = probe_profile(plan.chosen) if probe else plan.chosen
    model_cfg = policy_race.candidate_config(plan.model_cfg, decision.name)
    return replace(plan, model_cfg=model_cfg, chosen=chosen, decision=decision, scaled=None if probe else plan.scaled)


def probe_profile(chosen: ChosenProfile) -> ChosenProfile:
    """The profile for a linear probe the race picked: one cached view (TTA `id`), no flips or turns.

    The probe's features already average all 8 flips/turns (docs/linear-probe.md), so more cached
    views would cost 8 backbone passes each and give the same features; configs/profiles/cpu.yaml's
    `per_model` does the same for the `*_probe` models.
    """
    profile = chosen.profile
    augment = profile.augment.model_copy(update={"hflip": 0.0, "vflip": 0.0, "rot90": 0.0})
    return replace(chosen, profile=profile.model_copy(update={"tta": ["id"], "augment": augment}))


def race_setup(plan: Plan) -> policy_race.RaceSetup:
    """The policy race's data: the training rows of the first unit (repeat 0, fold 0 held out), and its budget's terms."""
    first = plan.units[0]
    held = plan.folds.assignment(plan.train.ids, first.repeat) == first.fold
    rows = np.flatnonzero(~held)
    predict_rows = (int(held.sum()) + len(plan.test)) * len(plan.profile.tta)  # OOF and test predictions of one unit
    augment = Augmenter(plan.profile.augment) if _augments(plan.profile) else None
    return policy_race.RaceSetup(
        model_name=plan.model_name,
        model_cfg=plan.model_cfg,
        train=plan.train,
        rows=rows,
        n_units=len(plan.units),
        predict_batch_size=plan.profile.predict_batch_size,
        predict_rows=predict_rows,
        augment=augment,
        tta=list(plan.profile.tta),
    )


def cache_views(profile: Profile) -> tuple[list[dihedral.Variant], list[dihedral.Variant]]:
    """Views to cache: training images need augmentation + TTA views (id first), test images the TTA views."""
    train_views = list(dict.fromkeys(["id", *profile.augment.dihedral_support(), *profile.tta]))
    return train_views, list(profile.tta)


def prefix_cache(plan: Plan, model: ImageModel, decision: PolicyDecision) -> PrefixCache | None:
    """The filled prefix cache for this model, or None when caching is off or only the stem is frozen.

    The prefix does not depend on the unit (pretrained weights, or random ones from the config's
    `seed`), so one cache serves every fold and seed.
    """
    if not plan.profile.cache_prefix or model.frozen_prefix() < 2:
        return None  # nothing frozen, or only the stem: its output is large (GBs at full size) and cheap to recompute
    key = {
        "train": plan.train.fingerprint,
        "test": plan.test.fingerprint,
        "test_rows": len(plan.test),
        "model": plan.model_cfg.model_dump(mode="json", exclude={"head", "optimizer", "train", "auto", "policy", "probe"}),
        "policy": decision.name,
        "frozen_prefix": model.frozen_prefix(),
        "weight_source": model.weight_source,
    }
    cache = PrefixCache(prefix_folder(plan.prefix_root), plan.model_name, key)
    train_views, test_views = cache_views(plan.profile)
    todo = len(cache.missing("train", train_views)) + len(cache.missing("test", test_views))
    if todo:
        with progress() as bar:
            task = bar.add_task(f"prefix cache: {model.frozen_prefix()} frozen blocks x {todo} views", total=todo)
            compute = lambda images: model.prefix_features(images, plan.profile.predict_batch_size)  # noqa: E731
            cache.fill("train", plan.train.images, train_views, compute, lambda: bar.advance(task))
            cache.fill("test", plan.test.images, test_views, compute, lambda: bar.advance(task))
    return cache


def prefix_folder(root: Path) -> Path:
    """Where this process keeps the prefix cache: `root` when its work folder exists here and it can be written, else
    a folder of this node's temporary directory (a derived cache, keyed the same way: a node without the driver's
    files computes it once for its own units). Units filling one folder at once are safe: every file is written
    to a temporary name and renamed (atomic_path), and all writers write the same bytes."""
    work_dir = root.parent.parent  # root is <work_dir>/cache/prefix
    if work_dir.is_dir():
        with suppress(OSError):
            root.mkdir(parents=True, exist_ok=True)
        if root.is_dir() and os.access(root, os.W_OK | os.X_OK):
            return root
    return Path(tempfile.gettempdir()) / "competition-prefix-cache"


def unit_inputs(plan: Plan, cache: PrefixCache | None, fit_rows: np.ndarray, held_rows: np.ndarray) -> tuple[ModelInputs, ModelInputs, Augment | None, str]:
    """Fit and validation inputs (images or cached features), the matching augmentation and a note of what it does."""
    train, profile = plan.train, plan.profile
    labels = train.labels
    assert labels is not None
    if cache is None:
        x = train.images
        augment: Augment | None = Augmenter(profile.augment) if _augments(profile) else None
    else:
        train_views, _ = cache_views(profile)
        views = [cache.load("train", v, len(train)) for v in train_views]
        x = np.asarray(views[0])  # the "id" view
        augment = FeatureAugmenter(profile.augment, train_views, views, fit_rows) if len(profile.augment.dihedral_support()) > 1 else None
    is_features = cache is not None
    fit_in = ModelInputs(x[fit_rows], train.angle[fit_rows], labels[fit_rows], is_features=is_features)
    valid_in = ModelInputs(x[held_rows], train.angle[held_rows], labels[held_rows], is_features=is_features)
    return fit_in, valid_in, augment, augment_note(profile, cached=is_features)


def run_unit(plan: Plan, unit: store.Unit, on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> store.UnitResult:
    """Fit one unit, predict its held-out fold and the test set, save its model; tables are written by the caller."""
    t0 = time.perf_counter()
    model, decision = fresh_model(plan)
    t_cache = time.perf_counter()
    cache = prefix_cache(plan, model, decision)
    cache_s = time.perf_counter() - t_cache
    held = plan.folds.assignment(plan.train.ids, unit.repeat) == unit.fold
    fit_rows, held_rows = np.flatnonzero(~held), np.flatnonzero(held)
    fit_in, valid_in, augment, augment_used = unit_inputs(plan, cache, fit_rows, held_rows)
    fit_seed = int(np.random.SeedSequence([unit.seed, unit.repeat, unit.fold]).generate_state(1)[0])
    t1 = time.perf_counter()
    train_cfg = plan.model_cfg.train
    result = model.fit(
        fit_in,
        valid_in,
        epochs=train_cfg.epochs,
        batch_size=train_cfg.batch_size,
        augment=augment,
        seed=fit_seed,
        patience=train_cfg.patience,
        on_epoch=on_epoch,
    )
    t2 = time.perf_counter()
    oof, test_pred = predict_both(plan, model, cache, held_rows)
    t3 = time.perf_counter()
    assert valid_in.y is not None
    return store.UnitResult(
        unit=unit,
        oof_ids=plan.train.ids[held_rows],
        oof=oof,
        test=test_pred,
        logloss=logloss(valid_in.y, oof),
        best_epoch=result.best_epoch,
        history={k: [float(v) for v in vals] for k, vals in result.history.items()},
        timings={"setup_s": t1 - t0 - cache_s, "cache_s": cache_s, "fit_s": t2 - t1, "predict_s": t3 - t2},
        policy=asdict(decision),
        weight_source=model.weight_source,
        prefix_cache=None if cache is None else str(cache.dir),
        augment=augment_used,
        versions=versions(plan.model_cfg.framework),
        model_files=saved_files(model) if plan.profile.save_models else {},
    )


def saved_files(model: ImageModel) -> dict[str, bytes]:
    """The model as `ImageModel.save` writes it, read back as files (relative path -> bytes) for the driver to write."""
    with tempfile.TemporaryDirectory(prefix="competition-unit-") as tmp:
        folder = Path(tmp) / "model"
        model.save(folder)
        return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def train_unit(plan: Plan, unit: store.Unit, decision: PolicyDecision | None) -> store.UnitResult:
    """The engine task of one unit: `run_unit` on the race's pick, on its threads (`unit_threads`), epochs reported as steps."""
    plan = decided(plan, decision)
    epochs = plan.model_cfg.train.epochs
    with unit_threads(plan.model_cfg.framework, plan.profile.resources.threads()):
        return run_unit(plan, unit, lambda epoch, _metrics: report_step(epoch + 1, epochs))


def unit_resources(profile: Profile) -> Resources:
    """The engine's resources for one unit of this profile (`resources:`, per model through `per_model:`)."""
    return Resources(cpus=profile.resources.cpus, gpus=profile.resources.gpus)


def unit_task(plan: Plan, key: str, fn: Callable[..., R], args: tuple[Any, ...]) -> Task[R]:
    """An engine task of this plan's units or race: `fn(*args)` holding the profile's resources, in the framework's pool."""
    return Task(key, fn, args, unit_resources(plan.profile), unit_pool(plan.model_cfg.framework, plan.profile.resources))


def unit_pool(framework: str, resources: UnitResources) -> str | None:
    """The worker pool (`Task.worker`) of a unit and race of `framework` holding `resources`: None, a fresh process
    per unit, for a GPU unit (its memory is released when its process ends); else the framework's pool, "torch"
    (timm, probe) or "keras-<threads>", whose kept process pays the framework's imports once for a model's race and
    units, as engine=local's process per model does (`train_isolated`). The pools never share a process, so a
    torch pool's process never loads TensorFlow; TensorFlow keeps the thread counts its first unit pinned
    (`unit_threads`), hence a Keras pool per thread count (torch's are set per unit)."""
    if resources.gpus > 0:
        return None
    return f"keras-{resources.threads()}" if framework == "keras" else "torch"


@contextmanager
def unit_threads(framework: str, n: int) -> Iterator[None]:
    """The unit's framework computes on `n` threads in the block: torch's intra-op threads (timm, probe:
    set, then restored), or TensorFlow's pools (keras: `keras_vgg.pin_threads`, fixed for the rest of
    the process, since TensorFlow reads them once; torch is left alone).

    The thread count changes how reductions split, hence the last bits of a fit (2.3e-5 on a tiny fine-tuning run
    with 1 vs 2 threads): fixing it per unit makes `local` and `ray` write the same bytes. Keras units run where
    TensorFlow has not run yet or ran with these counts (the Ray engine's keras pool; `make train`'s process or
    `train_isolated`'s child per model), so the pinning holds; a process where TensorFlow already ran with other counts keeps them, and says so.
    """
    if framework == "keras":
        from competition.models.keras_vgg import pin_threads

        if not pin_threads(n):
            console.print(
                f"[yellow]note[/] TensorFlow already runs in this process with other thread counts: this unit computes on "
                f"those, not {n} (its last bits may differ from a run in a process where TensorFlow had not run)"
            )
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _augments(profile: Profile) -> bool:
    a = profile.augment
    return len(a.dihedral_support()) > 1 or a.geometric or a.speckle > 0


def predict_both(plan: Plan, model: ImageModel, cache: PrefixCache | None, held_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TTA predictions for the held-out rows and the whole test set (from the cache when there is one)."""
    views, bs, train, test = plan.profile.tta, plan.profile.predict_batch_size, plan.train, plan.test
    if cache is None:
        oof = tta.predict_images(model, ModelInputs(train.images[held_rows], train.angle[held_rows]), views, bs)
        return oof, tta.predict_images(model, ModelInputs(test.images, test.angle), views, bs)
    oof = tta.predict_features(model, lambda v: np.asarray(cache.load("train", v, len(train))[held_rows]), train.angle[held_rows], views, bs)
    return oof, tta.predict_features(model, lambda v: np.asarray(cache.load("test", v, len(test))), test.angle, views, bs)


FRAMEWORK_LIBRARIES = {
    "timm": ("torch", "torchvision", "timm"),
    "keras": ("tensorflow", "keras"),
    "probe": ("torch", "torchvision", "timm"),
}  # what a unit of each framework trains with, beside numpy, pandas and scikit-learn


def versions(framework: str) -> dict[str, str]:
    """Versions of python and of the libraries a unit of `framework` trains with, as loaded in this process.

    Only that framework's libraries are named, never whatever else this process happens to have loaded
    (a local run in a process that also ran Keras must record what a fresh Ray worker records). A
    library not loaded here is left out; none is imported just to ask.
    """
    found = {"python": platform.python_version()}
    for name in ("numpy", "pandas", "sklearn", *FRAMEWORK_LIBRARIES[framework]):
        module = sys.modules.get(name)
        if module is not None:
            found[name] = str(getattr(module, "__version__", "unknown"))
    return found


def end_with_parent(parent: int, poll_s: float = 1.0) -> None:
    """Make this process end within `poll_s` seconds of process `parent`'s end (`train_isolated`'s child initializer).

    Ctrl-C reaches the whole process group, but `kill PID`, `timeout` or a cancelled CI job end only the
    CLI process: its spawned training child would train on as an orphan (one trained for an hour beside a
    later benchmark, session 8). A daemon thread polls the parent's pid (it changes when the child is
    re-parented), then sends this process SIGTERM, and ends it outright 5 s later if a handler kept it
    alive. POSIX (the harness's platforms; locks use fcntl): a re-parented process's `getppid` changes,
    and unlike Linux's PR_SET_PDEATHSIG it does not fire when only the parent's spawning *thread* ends.
    A process the child starts itself is not covered (none does). Raises nothing.
    """
    import signal
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5.0)
        os._exit(128 + signal.SIGTERM)

    threading.Thread(target=watch, name="end-with-parent", daemon=True).start()


def train_isolated(cfg: CompetitionConfig, model_name: str, profile: str | None = None, overrides: Sequence[str] = (), *, run_name: str | None = None) -> Path:
    """`train_model` in a fresh interpreter, for steps that train several models in a row.

    Once TensorFlow has run in a process, torch training there is ~2.5x slower on CPU (its thread
    pools compete; measured with MobileNetV2 after a Keras VGG16 predict), and each framework keeps
    its memory; a process per model avoids both.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn, initializer=end_with_parent, initargs=(os.getpid(),)) as pool:
        try:
            return pool.submit(train_model, cfg, model_name, profile, list(overrides), run_name=run_name).result()
        except BrokenProcessPool:
            raise UserError(
                f"training {run_name or model_name}: its process died without an error message (out of memory?); "
                f"finished units are kept: `make train MODEL={model_name}{'' if run_name is None else f' NAME={run_name}'}` resumes and shows what happens"
            ) from None


def train_model(
    cfg: CompetitionConfig,
    model_name: str,
    profile: str | None = None,
    overrides: Sequence[str] = (),
    *,
    fresh: bool = False,
    run_name: str | None = None,
    engine: Engine | None = None,
) -> Path:
    """Train `model_name` on every unit of the folds file; return the run folder.

    `overrides` are KEY=VALUE strings routed to the competition config, the profile or the model
    config (competition.overrides.route). `fresh` trains every unit anew in a staging folder that
    replaces the run folder only once finished (a failed or killed fresh run leaves the old run).
    Holds the run folder's lock: a second `train` of the same run is refused at once.
    `run_name` names the run folder (default: the model's name), so variants of one model sit side by side.
    `engine` runs the units (and the policy race); None: the config's (`engine:`, `ray:`, after the overrides),
    opened for this call before the data loads and before any folder is made, so a cluster that cannot be
    reached is said within seconds and leaves nothing behind (a finished run, then, opens it for nothing).
    Raises the first unit's `UserError` as it is; finished units stay on disk.
    """
    started = time.perf_counter()
    with _opened(engine, route(overrides, "train").apply_competition(cfg)) as running:
        plan = plan_run(cfg, model_name, profile, overrides, run_name)
        with run_lock(plan.run_dir):
            if fresh:  # train into a staging folder that replaces the run only when finished: a failed fresh run leaves the old one
                with replaced_folder(plan.run_dir) as staging:
                    _train_units(replace(plan, run_dir=staging), run_name, started, in_place=True, engine=running)
            else:
                recover_folder(plan.run_dir)
                shutil.rmtree(staging_path(plan.run_dir), ignore_errors=True)  # what a failed or killed --fresh left
                _train_units(plan, run_name, started, in_place=False, engine=running)
    console.print(f"[green]wrote[/] {plan.run_dir}/{{oof.csv,test.csv,meta.json,{CURVES_FILE}}}")
    return plan.run_dir


def _train_units(plan: Plan, run_name: str | None, started: float, in_place: bool, engine: Engine) -> None:
    """Train the units not finished in plan.run_dir (resuming) on `engine`, then write the run's tables and meta.json (see _finish)."""
    store.remove_leftovers(plan.run_dir)
    done = {u: r for u in plan.units if (r := store.read_unit(plan.run_dir, u, plan.prints)) is not None}
    todo = [u for u in plan.units if u not in done]
    if todo:
        plan = _run_units(plan, todo, done, engine, run_name)
    else:
        _announce(plan, len(done), run_name)
    _finish(plan, [done[u] for u in plan.units], todo, time.perf_counter() - started, in_place)


def _announce(plan: Plan, finished: int, run_name: str | None, note: str = "") -> None:
    """The run's first line: folder, model, profile, folds, units (how many already finished)."""
    console.print(
        f"[bold]{plan.run_dir.name}[/]{'' if run_name is None else f' ({plan.model_name})'}: profile {plan.chosen.name} ({plan.chosen.reason}), {plan.folds.describe()}, "
        f"{len(plan.units)} units ({finished} already finished){note}" + ("" if plan.scaled is None else f"; {plan.scaled}")
    )


def _opened(engine: Engine | None, cfg: CompetitionConfig) -> AbstractContextManager[Engine]:
    """`engine` as it is, or the config's opened for the block."""
    return nullcontext(engine) if engine is not None else open_engine(cfg.engine, cfg.ray)


def _run_units(plan: Plan, todo: list[store.Unit], done: dict[store.Unit, store.UnitResult], engine: Engine, run_name: str | None) -> Plan:
    """Settle the policy, then run every unit of `todo` as an engine task; each result is written (store.write_unit)
    and added to `done` as it lands. Returns the plan the units trained (the race's pick applied)."""
    shared = engine.share(plan)  # the images travel once, to the race and every unit
    decision = settle_policy(plan, engine, shared)
    plan = decided(plan, decision)
    _announce(plan, len(done), run_name, f", engine {engine.name}")

    def land(_task: Task[store.UnitResult], result: store.UnitResult) -> None:
        store.write_unit(plan.run_dir, result, plan.prints)
        done[result.unit] = result

    tasks = [unit_task(plan, unit.name, train_unit, (shared, unit, decision)) for unit in todo]
    engine.run(tasks, land, f"{plan.run_dir.name}: units")
    return plan


def _finish(plan: Plan, results: list[store.UnitResult], trained: list[store.Unit], wall_s: float, in_place: bool) -> None:
    """Assemble the OOF and test tables and meta.json from the unit results; print the per-unit table.

    `in_place`: plan.run_dir is a staging folder already (--fresh); else the tables go into a new
    folder beside the run, with the finished units hard-linked, that replaces the run whole.
    """
    import pandas as pd

    assert plan.train.labels is not None
    first = results[0]
    oof = store.build_oof(results, plan.train.ids)
    test = store.build_test(results, plan.test.ids, plan.test_ids, fill=float(np.mean(plan.train.labels)))
    cv = store.cv_logloss(oof, pd.Series(plan.train.labels, index=plan.train.ids))
    meta = {
        "model": plan.model_name,
        "run_name": plan.run_dir.name,
        "config": {
            "model": plan.model_cfg.model_dump(mode="json"),
            "profile": plan.profile.model_dump(mode="json"),
            "competition": plan.cfg.model_dump(mode="json"),
        },
        "config_hash": plan.prints.config_hash,
        "competition_config_hash": config_hash(plan.cfg),
        "profile": {"name": plan.chosen.name, "reason": plan.chosen.reason},
        "folds_fingerprint": plan.folds.fingerprint,
        "data_fingerprint": {"train": plan.train.fingerprint, "test": plan.test.fingerprint},
        "weight_source": first.weight_source,
        "policy": first.policy["name"],
        "policy_requested": first.policy["requested"],
        "policy_source": plan.policy_source,
        "epochs_scaled": plan.scaled,
        "policy_reason": first.policy["reason"],
        "policy_numbers": first.policy["numbers"],
        "policy_race": race_cost(results),
        "prefix_cache": first.prefix_cache,
        "augment": first.augment,
        "tta": list(plan.profile.tta),
        "test_rows_predicted": f"{len(plan.test)} of {len(plan.test_ids)}"
        + ("" if len(plan.test) == len(plan.test_ids) else " (unscored machine-generated rows get the training iceberg rate)"),
        "versions": {k: v for r in results for k, v in r.versions.items()} or versions(plan.model_cfg.framework),  # where the units trained
        "timings": {"units": {r.unit.name: r.timings for r in results}, "wall_s_this_run": wall_s},
        "trained_this_run": [u.name for u in trained],
        "units": [r.unit.name for r in sorted(results, key=lambda r: r.unit)],
        "fold_scores": [{**asdict(r.unit), "logloss": r.logloss, "best_epoch": r.best_epoch} for r in results],
        "cv_logloss": cv,
        "curves": {r.unit.name: r.history for r in results},
    }
    with nullcontext(plan.run_dir) if in_place else replaced_folder(plan.run_dir, link=[store.UNITS_DIR, policy_race.RACE_FILE]) as out:
        store.write_run(out, oof, test, meta)
        plot_curves(meta["curves"], out / CURVES_FILE, f"{plan.run_dir.name}: CV log loss {cv:.4f}")
    rows = [(r.unit.name, r.best_epoch, r.logloss, f"{r.timings['fit_s']:.1f}") for r in results]
    console.print(table(f"{plan.run_dir.name}: log loss per unit (CV {cv:.4f})", ["unit", "best epoch", "log loss", "fit s"], rows))


def race_cost(results: list[store.UnitResult]) -> dict[str, float | str] | None:
    """What the policy race cost against this run's units, in wall seconds (the units' timings of every phase; the race's
    `wall_s`, or its `race_s` when it was stored before its clock was recorded), or None when none ran."""
    race = results[0].policy["numbers"].get("race")
    if race is None:
        return None
    run_s = sum(sum(r.timings.values()) for r in results)
    race_s = race.get("wall_s", race["race_s"])
    return {"file": policy_race.RACE_FILE, "race_s": race_s, "units_s": round(run_s, 2), "fraction_of_units": round(race_s / run_s, 4)}


def augment_note(profile: Profile, cached: bool) -> str:
    """What augmentation the units actually saw (cached features allow only the flips/turns)."""
    a = profile.augment
    views = a.dihedral_support()
    dihedral_part = f"random dihedral view among {views}" if len(views) > 1 else "no flips/turns"
    if not cached:
        extra = [name for name in ("rotate", "shift", "zoom", "speckle") if getattr(a, name) > 0]
        return f"{dihedral_part}; {', '.join(extra) or 'no other ops'} (on images)"
    return f"{dihedral_part} (from the prefix cache; rotate/shift/zoom/speckle cannot apply to cached features)"
