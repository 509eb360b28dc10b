"""`competition stack`: collect the runs, compare every method by nested CV, submit the one chosen
by configs/stack.yaml's `choice` rule (competition.stacking.choice; default: `hedge`, the mean of the methods
within one paired standard error of the best, recorded as a method of its own).

Reads the folds file, the runs of one experiment and the train/test data (labels, angles, and
images for band statistics); writes runs/<experiment>/stack/{oof.csv, test.csv, cv_scores.png,
importances.csv, optuna.sqlite, summary.json} and one validated submission, all or nothing
(see run_stack). Imports neither torch nor TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from competition import fingerprint
from competition.atomic import atomic_path, replaced_folder
from competition.config import CompetitionConfig, config_hash
from competition.console import console, progress
from competition.data import files
from competition.data.dataset import Dataset
from competition.engine import Engine, LocalEngine, Resources, Task, open_engine
from competition.folds import load_folds
from competition.locks import stack_lock
from competition.stacking import study_storage
from competition.stacking.blenders import BLENDERS
from competition.stacking.choice import choose
from competition.stacking.clipping import choose_eps, clip
from competition.stacking.collect import Collection, collect, run_dirs
from competition.stacking.crossval import STACK_POOL, Estimator, evaluate
from competition.stacking.features import PRED, pred_columns, stack_tables
from competition.stacking.settings import StackConfig
from competition.stacking.summary import MethodResult, StackSummary, plot_results, results_table, write_summary
from competition.submission import write_submission

if TYPE_CHECKING:
    from competition.stacking.stacker import LGBMStacker

SINGLE = "single:"
STUDY_FILE = "optuna.sqlite"  # the Optuna studies, in the stack folder; carried into each new one


def _positions(ids: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Row of each id of `order` in `ids` (the folds file and the data hold the same ids)."""
    return pd.Index(ids).get_indexer(order)


def _tables(coll: Collection, train: Dataset, test: Dataset, scfg: StackConfig) -> tuple[list[pd.DataFrame], list[pd.DataFrame]]:
    """One label-free feature table of the training rows and of the test rows per repeat."""
    pos = _positions(train.ids, coll.train_ids)
    bands_train = bands_test = None
    if scfg.features.band_stats:
        from competition.image_stats import image_statistics

        bands_train, bands_test = image_statistics(train.images[pos]), image_statistics(test.images)
    pairs = [
        stack_tables(coll.names, coll.oof[r], coll.test, train.angle[pos], test.angle, coll.fold[r], coll.test_by_fold[r], bands_train, bands_test,
                     scfg.features.angle_groups)
        for r in range(coll.oof.shape[0])
    ]  # fmt: skip
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _blender(method: str, params: dict[str, Any]) -> Callable[[int, int | None], Estimator]:
    """A factory of fresh `method` blenders built with `params` (the repeat and fold do not matter to them)."""

    def make(_repeat: int, _fold: int | None) -> Estimator:
        return BLENDERS[method](**params)

    return make


def _evaluate(
    name: str,
    kind: str,
    make: Callable[[int, int | None], Estimator],
    tables: list[pd.DataFrame],
    tests: list[pd.DataFrame],
    y: np.ndarray,
    coll: Collection,
    scfg: StackConfig,
    engine: Engine,
    title: str = "nested CV",
) -> tuple[MethodResult, pd.Series | None]:
    """Nested CV on the outer folds and the final models (one batch of `engine` tasks), eps chosen on
    the resulting OOF, then the clipped test prediction; and the final models' mean importances, if any."""
    evaluation = evaluate(make, tables, y, coll.fold, scfg.eps_grid, scfg.inner_folds, scfg.seed, tests, engine, name, title)
    cv, test = evaluation.cv, evaluation.test
    if test is None:
        raise RuntimeError(f"{name}: the final models predicted no test rows")
    eps = choose_eps(cv.raw.ravel(), np.tile(y, coll.fold.shape[0]), scfg.eps_grid)
    return MethodResult(name, kind, cv, eps, clip(test, eps)), evaluation.importances


def _study_key(coll: Collection, scfg: StackConfig) -> str:
    """Names the Optuna studies: a changed input or search setting starts new studies, a rerun resumes.
    (`trial_workers` enters the names as `study_name`'s `-tw{N}` suffix instead, see `study_name`.)"""
    return fingerprint.of_json(
        {"oof": fingerprint.of_array(coll.oof), "test": fingerprint.of_array(coll.test), "folds": coll.folds_fingerprint,
         "features": scfg.features.model_dump(), "stacker": scfg.stacker.model_dump(exclude={"timeout_s", "trial_workers"}), "seed": scfg.seed}
    )  # fmt: skip


def study_name(key: str, repeat: int, fold: int | None, trial_workers: int) -> str:
    """The study of outer `fold` (None: the final model) of `repeat`: `{key}-r{repeat}-f{fold}|full`,
    plus `-tw{N}` when N > 1 tasks search it at once (not reproducible), so that a sequential run
    never resumes a study searched in parallel, nor the reverse; sequential names are unchanged."""
    return f"{key}-r{repeat}-" + ("full" if fold is None else f"f{fold}") + (f"-tw{trial_workers}" if trial_workers > 1 else "")


def evaluate_methods(
    coll: Collection,
    tables: list[pd.DataFrame],
    tests: list[pd.DataFrame],
    y: np.ndarray,
    scfg: StackConfig,
    out_dir: Path,
    engine: Engine,
    cluster_address: str | None = None,
) -> list[MethodResult]:
    """Every single run, every configured blender and the LightGBM stacker, each by nested CV.

    Single runs and blenders fit in milliseconds, so their tasks run here, in the driver (a Ray task
    costs about 2 s of worker start-up); the stacker's studies, seconds to minutes each, run on
    `engine` (`cluster_address`: the Ray cluster's, to serve the studies' storage where its workers
    reach it). `scfg` as `searchable` returns it for `engine`.
    """
    preds = pred_columns(coll.names)
    here = LocalEngine()

    def view(columns: list[str]) -> tuple[list[pd.DataFrame], list[pd.DataFrame]]:
        return [t[columns] for t in tables], [t[columns] for t in tests]

    cheap: list[tuple[str, str, Callable[[int, int | None], Estimator], list[str]]] = [
        (SINGLE + name, "single", _blender("mean", {}), [PRED + name]) for name in coll.names
    ]
    for method in scfg.methods:
        if method in BLENDERS:
            params = {"iterations": scfg.caruana_iterations} if method == "caruana" else {}
            cheap.append((method, "blend", _blender(method, params), preds))
    results = []
    with progress() as bar:
        done = bar.add_task("single runs and blenders", total=len(cheap))
        for name, kind, make, columns in cheap:
            results.append(_evaluate(name, kind, make, *view(columns), y, coll, scfg, here)[0])
            bar.advance(done)
    if "lgbm" in scfg.methods:
        results.append(_stacker(coll, tables, tests, y, scfg, out_dir, engine, cluster_address))
    return results


def _stacker(
    coll: Collection,
    tables: list[pd.DataFrame],
    tests: list[pd.DataFrame],
    y: np.ndarray,
    scfg: StackConfig,
    out_dir: Path,
    engine: Engine,
    cluster_address: str | None,
) -> MethodResult:
    """The LightGBM stacker: one Optuna study per outer fold and repeat and one per final model, each a
    task of `engine`; the studies live in the stack folder's SQLite file (served over gRPC to the
    workers of a Ray engine, competition.stacking.study_storage) and resume from it."""
    from competition.stacking.stacker import LGBMStacker

    st = scfg.stacker
    repeats, k = coll.fold.shape[0], int(coll.fold.max()) + 1
    studies = repeats * (k + 1)
    key = _study_key(coll, scfg)
    with study_storage.for_engine(engine.name, out_dir / STUDY_FILE, cluster_address) as storage:

        def make(r: int, f: int | None) -> Estimator:
            return LGBMStacker(
                n_trials=st.n_trials, timeout_s=None if st.timeout_s is None else st.timeout_s / studies,
                inner_folds=st.inner_folds, group_folds=st.group_folds, group_labels=scfg.features.angle_groups,
                max_rounds=st.max_rounds, early_stopping_rounds=st.early_stopping_rounds, threads=st.threads, seed=scfg.seed,
                storage=storage, study_name=study_name(key, r, f, st.trial_workers),
            )  # fmt: skip

        if st.trial_workers > 1:
            console.print(
                f"[yellow]note[/] lgbm: {st.trial_workers} tasks search each study at once (stacker.trial_workers): "
                "NOT reproducible, and kept apart from sequential studies (their names end in "
                f"-tw{st.trial_workers})"
            )
            _search_in_parallel(make, tables, y, coll.fold, st.trial_workers, engine)
        result, importances = _evaluate("lgbm", "stack", make, tables, tests, y, coll, scfg, engine, "Optuna search, one study per task")
    if importances is None:
        raise RuntimeError("lgbm: the final models reported no feature importances")
    with atomic_path(out_dir / "importances.csv") as tmp:
        importances.rename_axis("feature").rename("gain").to_csv(tmp)
    return result


def search_study(stacker: LGBMStacker, table: pd.DataFrame, y: np.ndarray, rows: np.ndarray) -> float:
    """One of the tasks that search one study at once (an engine task): the stacker's trials on `rows`
    of `table` until its study holds `n_trials` (`LGBMStacker.search`); the best score so far."""
    return stacker.search(table.iloc[rows], y[rows])


def _search_in_parallel(
    make: Callable[[int, int | None], Any], tables: list[pd.DataFrame], y: np.ndarray, fold: np.ndarray, workers: int, engine: Engine
) -> None:
    """The opt-in trial-parallel search (`stacker.trial_workers` > 1, not reproducible): `workers` tasks
    per study run its trials at once through the shared storage, before the fits, which then find
    their studies complete."""
    shared = [engine.share(t) for t in tables]
    tasks: list[Task[float]] = []
    for r in range(fold.shape[0]):
        for f in [*range(int(fold.max()) + 1), None]:
            rows = np.arange(len(y)) if f is None else np.flatnonzero(fold[r] != f)
            study = f"lgbm r{r} " + ("final" if f is None else f"f{f}")
            for w in range(workers):
                stacker = make(r, f)
                tasks.append(
                    Task(f"{study} search {w + 1}/{workers}", search_study, (stacker, shared[r], y, rows), Resources(cpus=float(stacker.threads)), STACK_POOL)
                )
    engine.run(tasks, lambda task, best: None, f"Optuna search, {workers} tasks per study (lgbm)")


def searchable(scfg: StackConfig, engine: Engine) -> StackConfig:
    """`scfg` as `engine` can search it: `stacker.trial_workers` > 1 only where tasks run at the same time (Ray).

    The local engine runs tasks one after another, so N tasks per study would only repeat the
    sequential search (its first task runs every trial), slower and under `-tw{N}` names: there the
    studies are searched sequentially, as with trial_workers=1 (same names, same summary.json, one note).
    """
    workers = scfg.stacker.trial_workers
    if workers == 1 or engine.name != "local" or "lgbm" not in scfg.methods:
        return scfg
    console.print(
        f"[yellow]note[/] lgbm: stacker.trial_workers={workers} ignored: it needs engine=ray (the local engine runs one task "
        "at a time); each study is searched sequentially, as with trial_workers=1"
    )
    return scfg.model_copy(update={"stacker": scfg.stacker.model_copy(update={"trial_workers": 1})})


def _write_tables(out_dir: Path, coll: Collection, results: list[MethodResult]) -> None:
    """stack/oof.csv (id, repeat, fold, one clipped column per method) and stack/test.csv (id, one per method)."""
    repeats = coll.fold.shape[0]
    oof = pd.DataFrame({"id": np.tile(coll.train_ids, repeats), "repeat": np.repeat(np.arange(repeats), len(coll.train_ids)), "fold": coll.fold.ravel()})
    for m in results:
        oof[m.name] = m.cv.oof.ravel()
    test = pd.DataFrame({"id": coll.test_ids, **{m.name: m.test for m in results}})
    for name, frame in (("oof.csv", oof), ("test.csv", test)):
        with atomic_path(out_dir / name) as tmp:
            frame.to_csv(tmp, index=False, float_format="%.8g")


def run_stack(
    cfg: CompetitionConfig, scfg: StackConfig, train: Dataset | None = None, test: Dataset | None = None, engine: Engine | None = None
) -> StackSummary:
    """The whole step; `train`/`test` default to the cached competition data of `cfg`.

    The stacker's studies run as tasks of `engine` (default: `cfg.engine`, opened for this call when
    the stacker is among the methods; the blenders always run here, see `evaluate_methods`).

    Holds the stack folder's lock throughout (a second `stack` of the experiment is refused at
    once); builds the new folder beside the old one and swaps it in whole, after the submission
    is written; a failure at any point leaves the old folder and no new submission. The Optuna
    study travels from the old folder into the new one, and a failed attempt's study is kept for
    the next, so an interrupted search resumes. The engine opens first: a Ray head that cannot be
    reached is said before the lock makes runs/<experiment>/.
    """
    out_dir = cfg.stack_dir
    with _engine(cfg, scfg, engine) as opened, stack_lock(out_dir):
        return _run_stack(cfg, scfg, out_dir, train, test, opened)


def _engine(cfg: CompetitionConfig, scfg: StackConfig, engine: Engine | None) -> AbstractContextManager[Engine]:
    """`engine` as given, or `cfg.engine` opened for the step (the local one when no stacker runs: nothing else needs Ray)."""
    if engine is not None:
        return nullcontext(engine)
    return open_engine(cfg.engine if "lgbm" in scfg.methods else "local", cfg.ray)


def _run_stack(cfg: CompetitionConfig, scfg: StackConfig, out_dir: Path, train: Dataset | None, test: Dataset | None, engine: Engine) -> StackSummary:
    if train is None or test is None:
        from competition.data.loader import load_competition

        train, test = load_competition(cfg)
    folds = load_folds(cfg, train)
    sample = files.sample_submission(cfg)  # before the search: a missing file is said at once
    coll = collect(run_dirs(cfg.experiment_dir, scfg.runs), folds, test.ids, test.fingerprint)
    console.print(f"stacking {len(coll.names)} runs of '{cfg.experiment}' on {folds.describe()}: {', '.join(coll.names)}")
    y = np.asarray(train.labels, dtype=np.int64)[_positions(train.ids, coll.train_ids)]
    tables, tests = _tables(coll, train, test, scfg)
    scfg = searchable(scfg, engine)
    submission: Path | None = None
    try:
        with replaced_folder(out_dir, carry=[STUDY_FILE], keep_on_failure=[STUDY_FILE + "*"]) as work:
            results = evaluate_methods(coll, tables, tests, y, scfg, work, engine, cfg.ray.address)
            choice = choose(results, scfg.choice, y, coll.fold)
            chosen = choice.chosen
            if chosen.name not in {m.name for m in results}:  # the hedge rule's mean of several methods: recorded beside them
                results = [*results, chosen]
            stack_hash = fingerprint.of_json({"stack": config_hash(scfg), "runs": coll.config_hashes})
            _write_tables(work, coll, results)
            plot_results(results, work / "cv_scores.png", chosen.name)
            data = files.describe(cfg, train.fingerprint, test.fingerprint)
            context = {"experiment": cfg.experiment, "created": datetime.now().isoformat(timespec="seconds"), "runs": coll.names,
                       "config_hash": stack_hash, "folds_fingerprint": coll.folds_fingerprint, "data_fingerprint": coll.data_fingerprint,
                       "data": data, "trial_workers": scfg.stacker.trial_workers}  # fmt: skip
            submission = write_submission(
                cfg.submissions_dir, coll.test_ids, chosen.test, sample, cfg.experiment, chosen.name, chosen.cv.mean,
                {"cv_std": chosen.cv.std, "eps": chosen.eps, "config_hash": stack_hash, "folds_fingerprint": coll.folds_fingerprint,
                 "data_fingerprint": coll.data_fingerprint, "data": data, "runs": coll.names},
            )  # fmt: skip
            summary = write_summary(work / "summary.json", results, chosen, submission, context, choice.record())
    except BaseException:
        if submission is not None:  # written, but its stack folder did not make it: no submission without its record
            submission.unlink(missing_ok=True)
            submission.with_suffix(".json").unlink(missing_ok=True)
        raise
    console.print(results_table(results, cfg.experiment, choice.record()))
    console.print(
        f"[green]wrote[/] {submission} ({chosen.name}, CV {chosen.cv.mean:.4f} +- {chosen.cv.std:.4f}, eps {chosen.eps:g}; "
        f"chosen by {choice.rule}: {choice.reason}); summary in {out_dir / 'summary.json'}"
    )
    return summary
