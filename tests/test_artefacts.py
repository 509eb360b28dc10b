"""The typed owners of the JSON artefacts: each round-trips what today's writer writes, and every reader
refuses a missing or wrong-typed field with one line naming the file, the field and what to do."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from competition.errors import DataError, FingerprintError, MissingArtefactError, UserError
from competition.folds import FoldsMeta, ensure_folds, load_folds
from competition.stacking.collect import collect, run_dirs
from competition.stacking.crossval import CVResult
from competition.stacking.summary import MethodResult, StackSummary, read_summary, write_summary
from competition.submission import Sidecar, read_sidecar, write_submission
from competition.training import store
from competition.training.store import RunMeta, load_run

from stack_data import TEST_FP, make_competition, write_predictor


@pytest.fixture
def comp(tmp_path):
    return make_competition(tmp_path, n_train=40, n_test=12, k=2, repeats=1)


def _tamper(path: Path, drop: str | None = None, **changes: object) -> None:
    """Edit a JSON artefact in place, as an older version (a field missing) or a hand edit (a field changed) would."""
    data = json.loads(path.read_text())
    data.pop(drop, None) if drop else None
    path.write_text(json.dumps({**data, **changes}))


def _one_line(exc: pytest.ExceptionInfo[UserError]) -> str:
    text = str(exc.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def _trainer_meta(units: list[str]) -> dict[str, object]:
    """A meta.json as today's trainer writes it (the keys _finish records)."""
    return {
        "model": "m", "run_name": "m", "config": {"model": {"train": {"epochs": 2}}, "profile": {"seeds": 1}, "competition": {}},
        "config_hash": "cfg", "competition_config_hash": "comp", "profile": {"name": "cpu", "reason": "no GPU"},
        "folds_fingerprint": "folds", "data_fingerprint": {"train": "tr", "test": "te"}, "weight_source": "none",
        "policy": "head", "policy_requested": "auto", "policy_source": "command line", "policy_reason": "small data",
        "policy_numbers": {"divergence": 0.5}, "prefix_cache": None, "augment": "no flips/turns", "tta": ["id", "flip"],
        "test_rows_predicted": "4 of 4", "versions": {"python": "3.12"},
        "timings": {"units": {u: {"fit_s": 1.5, "cache_s": 0.5} for u in units}, "wall_s_this_run": 3.0},
        "trained_this_run": units, "units": units,
        "fold_scores": [{"repeat": 0, "fold": i, "seed": 0, "logloss": 0.3, "best_epoch": 1} for i, _ in enumerate(units)],
        "cv_logloss": 0.3, "curves": {u: {"train_loss": [0.7, 0.5], "val_loss": [0.6, 0.4]} for u in units},
    }  # fmt: skip


# -- run meta.json -------------------------------------------------------------------------------


def test_run_meta_round_trips_the_trainers_meta(comp):
    run_dir = write_predictor(comp, "a", 1.0, 1.0, seed=1)
    run = load_run(run_dir)
    meta = _trainer_meta(run.unit_columns)
    store.write_run(run_dir, run.oof, run.test, meta)
    raw = json.loads((run_dir / store.META_FILE).read_text())
    typed = load_run(run_dir).meta
    assert isinstance(typed, RunMeta) and typed.model_dump(mode="json", exclude_unset=True) == raw  # nothing lost or changed
    assert typed.data_fingerprint.test == "te" and typed.timings.units[run.unit_columns[0]]["fit_s"] == 1.5
    assert typed.policy_numbers == {"divergence": 0.5}  # a key without a field is kept
    assert set(store.REQUIRED_META) <= raw.keys()


@pytest.mark.parametrize("field", ["cv_logloss", "data_fingerprint", "units", "oof_fingerprint"])
def test_a_run_folder_missing_a_required_field_is_refused_in_one_line(comp, field):
    run_dir = write_predictor(comp, "a", 1.0, 1.0, seed=1)
    _tamper(run_dir / store.META_FILE, drop=field)
    with pytest.raises(FingerprintError) as info:
        load_run(run_dir)
    text = _one_line(info)
    assert text.startswith(f"{run_dir / store.META_FILE}: field '{field}' missing")
    assert f"run folder {run_dir}" in text and f"competition train a --name {run_dir.name} --fresh" in text


@pytest.mark.parametrize(("changes", "where"), [({"cv_logloss": "low"}, "cv_logloss"), ({"data_fingerprint": {"train": "x"}}, "data_fingerprint.test"),
                                                 ({"fold_scores": [{"repeat": 0}]}, "fold_scores.0.fold")])  # fmt: skip
def test_a_wrong_typed_run_meta_field_is_named(comp, changes, where):
    run_dir = write_predictor(comp, "a", 1.0, 1.0, seed=1)
    _tamper(run_dir / store.META_FILE, **changes)
    with pytest.raises(FingerprintError, match=f"field '{where}'") as info:
        load_run(run_dir)
    assert "--fresh" in _one_line(info)


def test_a_meta_json_that_is_not_json_is_refused(comp):
    run_dir = write_predictor(comp, "a", 1.0, 1.0, seed=1)
    (run_dir / store.META_FILE).write_text("{half")
    with pytest.raises(FingerprintError, match=r"meta\.json: not valid JSON \(line 1\): .*--fresh"):
        load_run(run_dir)


def test_the_writer_refuses_a_meta_the_readers_would_refuse(comp):
    run_dir = write_predictor(comp, "a", 1.0, 1.0, seed=1)
    run = load_run(run_dir)
    with pytest.raises(ValueError, match="cv_logloss"):  # a bug in the trainer, not a user error
        store.write_run(run_dir, run.oof, run.test, {k: v for k, v in _trainer_meta(run.unit_columns).items() if k != "cv_logloss"})


def test_every_reader_of_a_run_refuses_a_tampered_meta(comp, monkeypatch):
    from competition import pipeline, report

    write_predictor(comp, "a", 1.0, 1.0, seed=1)
    run_dir = write_predictor(comp, "b", 1.0, 1.0, seed=2)
    _tamper(run_dir / store.META_FILE, drop="data_fingerprint")
    readers = {
        "collect": lambda: collect(run_dirs(comp.cfg.runs_dir / "baseline", []), comp.folds, comp.test.ids, TEST_FP),
        "pipeline._cv": lambda: pipeline._cv(run_dir),
        "report._load_runs": lambda: report._load_runs(comp.cfg.runs_dir / "baseline"),
    }
    for read in readers.values():
        with pytest.raises(FingerprintError, match=r"field 'data_fingerprint' missing.*--fresh") as info:
            read()
        _one_line(info)
    (run_dir / store.META_FILE).unlink()
    assert pipeline._cv(comp.cfg.runs_dir / "baseline" / "a") == 0.0  # the untouched run reads (write_predictor records 0.0)


def test_quality_reads_its_runs_through_load_run(comp, monkeypatch):
    from competition.bench import quality
    from competition.training import trainer

    run_dir = write_predictor(comp, "a", 1.0, 1.0, seed=1)
    _tamper(run_dir / store.META_FILE, cv_logloss=None)
    monkeypatch.setattr(trainer, "train_isolated", lambda *args, **kwargs: run_dir)
    monkeypatch.setattr(quality, "budget_overrides", lambda budget, kind: [])
    budget, recipe = SimpleNamespace(profile="cpu"), SimpleNamespace(name="a", group="c", model="m", kind="head", overrides=[])
    with pytest.raises(FingerprintError, match="field 'cv_logloss'") as info:
        quality.train_recipe(comp.cfg, "baseline", recipe, budget, [])
    _one_line(info)


def _unit(tmp_path: Path) -> tuple[store.Unit, store.Fingerprints]:
    unit, prints = store.Unit(0, 1, 0), store.Fingerprints("cfg", "folds", "train", "test")
    result = store.UnitResult(unit=unit, oof_ids=np.array(["a", "b"]), oof=np.array([0.2, 0.7]), test=np.array([0.4]), logloss=0.5,
                              best_epoch=1, history={"train_loss": [0.7]}, timings={"fit_s": 1.0}, policy={"name": "head"})  # fmt: skip
    store.write_unit(tmp_path, result, prints)
    return unit, prints


def test_unit_record_round_trips_the_writers_output(tmp_path):
    unit, prints = _unit(tmp_path)
    raw = json.loads(store.unit_paths(tmp_path, unit)[1].read_text())
    assert store.UnitRecord.model_validate(raw).model_dump(mode="json") == raw
    back = store.read_unit(tmp_path, unit, prints)
    assert back is not None and back.augment == "none" and back.history == {"train_loss": [0.7]}


@pytest.mark.parametrize(("drop", "changes", "where"), [("augment", {}, "field 'augment' missing"), (None, {"fingerprints": {"folds": "f"}}, "field 'fingerprints.config_hash' missing")])  # fmt: skip
def test_a_finished_unit_from_another_version_is_refused_in_one_line(tmp_path, drop, changes, where):
    unit, prints = _unit(tmp_path)
    _tamper(store.unit_paths(tmp_path, unit)[1], drop=drop, **changes)
    with pytest.raises(FingerprintError) as info:
        store.read_unit(tmp_path, unit, prints)
    text = _one_line(info)
    assert text.startswith(f"{store.unit_paths(tmp_path, unit)[1]}: {where}") and f"delete {tmp_path} (or pass --fresh)" in text


# -- stack summary.json --------------------------------------------------------------------------


def _method(name: str, kind: str, score: float) -> MethodResult:
    scores = np.full((1, 2), score)
    cv = CVResult(raw=np.zeros((1, 4)), oof=np.zeros((1, 4)), scores=scores, eps=np.full((1, 2), 1e-3))
    return MethodResult(name=name, kind=kind, cv=cv, eps=1e-3, test=np.full(4, 0.5))


def _summary(folder: Path) -> StackSummary:
    results = [_method("single:a", "single", 0.3), _method("mean", "blend", 0.25), _method("lgbm", "stack", 0.2)]
    context = {"experiment": "baseline", "created": "2026-01-01T00:00:00", "runs": ["a"], "config_hash": "h", "folds_fingerprint": "f",
               "data_fingerprint": {"train": "tr", "test": "te"}, "data": {"kind": "simulated", "dir": "data", "train": "tr", "test": "te"}}  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    return write_summary(folder / "summary.json", results, results[2], folder / "sub.csv", context)


def test_stack_summary_round_trips_the_writers_output(tmp_path):
    written = _summary(tmp_path / "stack")
    raw = json.loads((tmp_path / "stack" / "summary.json").read_text())
    summary = read_summary(tmp_path / "stack")
    assert isinstance(summary, StackSummary) and summary.model_dump(mode="json", exclude_unset=True) == raw
    assert summary == written  # what run_stack returns is what the file holds
    assert summary.chosen.method == "lgbm" and summary.best_single is not None and summary.best_single.method == "single:a"
    assert summary.methods["mean"].kind == "blend" and summary.data is not None and summary.data.kind == "simulated"


def test_a_summary_written_before_the_data_was_recorded_still_reads(tmp_path):
    _summary(tmp_path / "stack")
    _tamper(tmp_path / "stack" / "summary.json", drop="data")
    assert read_summary(tmp_path / "stack").data is None


@pytest.mark.parametrize(("drop", "changes", "where"), [("chosen", {}, "field 'chosen' missing"), (None, {"eps": "small"}, "field 'eps'"),
                                                         (None, {"methods": {"x": {"kind": "other"}}}, "field 'methods.x.kind'")])  # fmt: skip
def test_a_malformed_summary_is_refused_in_one_line(tmp_path, drop, changes, where):
    _summary(tmp_path / "stack")
    _tamper(tmp_path / "stack" / "summary.json", drop=drop, **changes)
    with pytest.raises(FingerprintError) as info:
        read_summary(tmp_path / "stack")
    text = _one_line(info)
    assert text.startswith(f"{tmp_path / 'stack' / 'summary.json'}: {where}") and "run `make stack` again" in text


def test_a_missing_summary_says_to_stack(tmp_path):
    with pytest.raises(MissingArtefactError, match=r"summary\.json not found: run `make stack` first"):
        read_summary(tmp_path / "stack")


def test_the_report_refuses_a_tampered_summary(comp):
    from competition.report import build_report

    write_predictor(comp, "a", 1.0, 1.0, seed=1)
    _summary(comp.cfg.runs_dir / "baseline" / "stack")
    _tamper((comp.cfg.runs_dir / "baseline" / "stack") / "summary.json", drop="ranking")
    with pytest.raises(FingerprintError, match="field 'ranking' missing") as info:
        build_report(comp.cfg)
    _one_line(info)
    assert not ((comp.cfg.runs_dir / "baseline" / "report") / "index.html").exists()


# -- folds.json ----------------------------------------------------------------------------------


def test_folds_meta_round_trips_the_writers_output(comp):
    raw = json.loads(comp.cfg.folds_json.read_text())
    meta = FoldsMeta.model_validate(raw)
    assert meta.model_dump(mode="json") == raw and meta.params == comp.cfg.folds and meta.n_ids == len(comp.train)
    assert load_folds(comp.cfg, comp.train).fingerprint == meta.fingerprint


@pytest.mark.parametrize(("drop", "changes", "where"), [("csv_fingerprint", {}, "field 'csv_fingerprint' missing"),
                                                         (None, {"params": {"k": "five"}}, "field 'params.k'")])  # fmt: skip
def test_a_malformed_folds_file_is_refused_and_make_all_rewrites_it(comp, drop, changes, where):
    _tamper(comp.cfg.folds_json, drop=drop, **changes)
    with pytest.raises(FingerprintError) as info:
        load_folds(comp.cfg, comp.train)
    text = _one_line(info)
    assert text.startswith(f"{comp.cfg.folds_json}: {where}") and "run `make folds` again" in text
    folds, written = ensure_folds(comp.train, comp.cfg)  # what `make all` does with it: write a new one
    assert written and folds.fingerprint == comp.folds.fingerprint
    assert load_folds(comp.cfg, comp.train).fingerprint == comp.folds.fingerprint


# -- the submission's sidecar ----------------------------------------------------------------------


def _submission(comp) -> Path:
    sidecar = {"cv_std": 0.01, "eps": 0.001, "config_hash": "cafe", "folds_fingerprint": "ff", "data_fingerprint": {"train": "tr", "test": "te"},
               "data": {"kind": "simulated", "dir": "data", "train": "tr", "test": "te"}, "runs": ["a"]}  # fmt: skip
    return write_submission(comp.cfg.submissions_dir, comp.test.ids, np.full(len(comp.test), 0.4), comp.cfg.sample_submission, "exp", "lgbm", 0.2, sidecar)


def test_sidecar_round_trips_the_writers_output(comp):
    path = _submission(comp)
    raw = json.loads(path.with_suffix(".json").read_text())
    sidecar = read_sidecar(path)
    assert isinstance(sidecar, Sidecar) and sidecar.model_dump(mode="json", exclude_unset=True) == {k: v for k, v in raw.items() if k != "runs"}
    assert raw["runs"] == ["a"]  # written for people, ignored on reading
    assert sidecar.test_fingerprint() == "te" and sidecar.data_kind() == "simulated"


def test_a_missing_sidecar_means_cv_unknown_and_a_malformed_one_is_refused(comp):
    path = _submission(comp)
    path.with_suffix(".json").unlink()
    assert read_sidecar(path) is None
    path = _submission(comp)
    _tamper(path.with_suffix(".json"), drop="cv_mean")
    with pytest.raises(DataError) as info:
        read_sidecar(path)
    text = _one_line(info)
    assert text.startswith(f"{path.with_suffix('.json')}: field 'cv_mean' missing") and f"fix or remove the sidecar of {path.name}" in text


def test_the_writer_refuses_a_sidecar_the_reader_would_refuse(comp):
    with pytest.raises(ValueError, match="folds_fingerprint"):
        write_submission(comp.cfg.submissions_dir, comp.test.ids, np.full(len(comp.test), 0.4), comp.cfg.sample_submission, "e", "m", 0.2,
                         {"cv_std": 0.01, "config_hash": "h"})  # fmt: skip
    assert not list(comp.cfg.submissions_dir.glob("*.csv"))
