"""The stacking estimators keep the scikit-learn contract they claim: every blender, the LightGBM
stacker and the group target encoder pass scikit-learn's estimator checks, and the classifiers work
in `cross_val_predict(method="predict_proba")`, `CalibratedClassifierCV` and a `neg_log_loss` scorer."""

from __future__ import annotations

import sqlite3

import numpy as np
import pandas as pd
import pytest
from competition.stacking.blenders import BLENDERS
from competition.stacking.features import GroupTargetEncoder
from competition.stacking.stacker import LGBMStacker
from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.exceptions import NotFittedError
from sklearn.metrics import get_scorer
from sklearn.model_selection import StratifiedKFold, cross_val_predict, cross_val_score
from sklearn.utils.estimator_checks import parametrize_with_checks

FAST_STACKER = {"n_trials": 2, "inner_folds": 2, "max_rounds": 20, "early_stopping_rounds": 5}

CROSS_FITTED = (
    "fit_transform is cross-fitted (inner OOF) by design, like TargetEncoder's, so it is not "
    "fit(X, y).transform(X) on the same rows; on the checks' data every value is its own group, "
    "so no row has a labelled neighbour out of fold"
)


def _expected_failed(estimator):
    """Checks an estimator fails by design, each with its reason (none for the classifiers)."""
    if isinstance(estimator, GroupTargetEncoder):
        return {"check_transformer_general": CROSS_FITTED, "check_transformer_data_not_an_array": CROSS_FITTED}
    return {}


ESTIMATORS = [cls() for cls in BLENDERS.values()] + [LGBMStacker(**FAST_STACKER), GroupTargetEncoder()]


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=_expected_failed)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def _probabilities(n: int = 240, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Three noisy runs' probabilities of class 1, and an angle whose exact-value groups share a label."""
    rng = np.random.default_rng(seed)
    scene = np.arange(n) // 4
    angle = np.where(rng.random(n) < 0.9, 30 + scene * 0.25, np.nan)
    y = rng.integers(0, 2, scene.max() + 1)[scene] ^ (rng.random(n) < 0.1)
    P = np.clip(0.5 + 0.25 * (2 * y[:, None] - 1) + rng.normal(0, 0.2, (n, 3)), 0.01, 0.99)
    X = pd.DataFrame(P, columns=["pred_a", "pred_b", "pred_c"]).assign(angle=angle)
    return X, y.astype(np.int64)


CLASSIFIERS = [pytest.param(cls(), id=name) for name, cls in BLENDERS.items()] + [pytest.param(LGBMStacker(**FAST_STACKER), id="lgbm")]


def _inputs(estimator, X: pd.DataFrame) -> pd.DataFrame:
    return X if isinstance(estimator, LGBMStacker) else X[["pred_a", "pred_b", "pred_c"]]


@pytest.mark.parametrize("estimator", CLASSIFIERS)
def test_classifiers_work_in_sklearns_model_selection_calibration_and_scoring(estimator):
    X, y = _probabilities()
    X = _inputs(estimator, X)
    cv = StratifiedKFold(3, shuffle=True, random_state=0)
    with pytest.raises(NotFittedError):
        clone(estimator).predict_proba(X)
    oof = cross_val_predict(clone(estimator), X, y, cv=cv, method="predict_proba")
    assert oof.shape == (len(y), 2) and np.allclose(oof.sum(axis=1), 1.0)
    scores = cross_val_score(clone(estimator), X, y, cv=cv, scoring="neg_log_loss")
    assert np.isfinite(scores).all() and (scores < 0).all() and scores.mean() > -0.69  # better than a coin
    calibrated = CalibratedClassifierCV(clone(estimator), cv=3).fit(X, y)
    assert calibrated.predict_proba(X).shape == (len(y), 2)
    fitted = clone(estimator).fit(X, y)
    assert fitted.classes_.tolist() == [0, 1] and fitted.n_features_in_ == X.shape[1]
    assert fitted.feature_names_in_.tolist() == list(X.columns)
    assert get_scorer("neg_log_loss")(fitted, X, y) < 0
    assert fitted.predict(X).tolist() == (fitted.predict_proba(X)[:, 1] > 0.5).astype(int).tolist()


@pytest.mark.parametrize("estimator", CLASSIFIERS)
def test_string_labels_and_class_order(estimator):
    """Any two labels: classes_ sorted, predict_proba's column 1 is classes_[1] (here "ship", so the
    same as 0/1 labels with ship as 1)."""
    X, y = _probabilities(n=120)
    X = _inputs(estimator, X)
    names = np.array(["iceberg", "ship"])[1 - y]  # class 1 (iceberg) is names' first in sorted order
    fitted = clone(estimator).fit(X, names)
    assert fitted.classes_.tolist() == ["iceberg", "ship"]
    numeric = clone(estimator).fit(X, 1 - y).predict_proba(X)
    assert np.allclose(fitted.predict_proba(X), numeric)


def test_stacker_takes_arrays_with_the_angle_named_by_position():
    """An array has no column names: `angle_column` as a position gives the group features, and the same
    predictions as the DataFrame with its `angle` column; the default name finds none in an array."""
    X, y = _probabilities(n=160)
    frame = LGBMStacker(**FAST_STACKER).fit(X, y)
    by_position = LGBMStacker(**FAST_STACKER, angle_column=3).fit(X.to_numpy(), y)
    assert np.array_equal(frame.predict_proba(X), by_position.predict_proba(X.to_numpy()))
    assert "group_rate" in frame.feature_names_ and "group_rate" in by_position.feature_names_
    plain = LGBMStacker(**FAST_STACKER).fit(X.to_numpy(), y)
    assert "group_rate" not in plain.feature_names_ and not hasattr(plain, "feature_names_in_")
    with pytest.raises(ValueError, match="angle_column=7"):
        LGBMStacker(**FAST_STACKER, angle_column=7).fit(X.to_numpy(), y)


def _trials(storage) -> dict[str, int]:
    with sqlite3.connect(storage) as db:
        rows = db.execute(
            "select s.study_name, count(t.trial_id) from studies s left join trials t on t.study_id = s.study_id group by s.study_name"
        ).fetchall()
    return dict(rows)


def test_a_stored_study_follows_the_data_and_the_search(tmp_path):
    """Other labels under the same storage and name: a new study, new trials. The same data and search
    again: the stored study resumes and runs nothing; more trials asked for: only the missing ones."""
    X, y = _probabilities(n=160)
    storage = tmp_path / "optuna.sqlite"
    kw = {**FAST_STACKER, "n_trials": 3, "storage": storage, "study_name": "s"}
    first = LGBMStacker(**kw).fit(X, y)
    assert _trials(storage) == {first.study_name_: 3}

    y_perm = np.random.default_rng(1).permutation(y)
    other = LGBMStacker(**kw).fit(X, y_perm)
    assert other.study_name_ != first.study_name_ and other.study_name_.startswith("s-")
    assert _trials(storage) == {first.study_name_: 3, other.study_name_: 3}
    assert other.search_score_ != first.search_score_

    ticks: list[int] = []
    again = LGBMStacker(**kw, on_trial=ticks.append).fit(X, y)
    assert again.study_name_ == first.study_name_ and _trials(storage)[first.study_name_] == 3 and ticks == [3]
    assert again.params_ == first.params_
    assert np.array_equal(again.predict_proba(X), first.predict_proba(X))

    more = LGBMStacker(**{**kw, "n_trials": 5}).fit(X, y)  # an interrupted or extended search resumes
    assert more.study_name_ == first.study_name_ and _trials(storage)[first.study_name_] == 5

    searched_otherwise = LGBMStacker(**{**kw, "max_rounds": 30}).fit(X, y)
    assert searched_otherwise.study_name_ not in (first.study_name_, other.study_name_)


def test_group_target_encoder_cross_fits_in_fit_transform_and_uses_all_labels_in_transform():
    angle = np.array([30.0, 30.0, 30.0, 41.5, 41.5, np.nan])[:, None]
    y = np.array([1, 1, 0, 1, 0, 0])
    full = GroupTargetEncoder().fit(angle, y).transform(angle)
    assert full[:, 0].tolist() == [3, 3, 3, 2, 2, 0]
    assert np.allclose(full[:, 1], [2 / 3, 2 / 3, 2 / 3, 0.5, 0.5, np.nan], equal_nan=True)
    # one fold per row (leave-one-out): each row sees its group mates' labels only
    oof = GroupTargetEncoder(cv=6).fit_transform(angle, y)
    assert oof[:, 0].tolist() == [2, 2, 2, 1, 1, 0]
    assert np.allclose(oof[:, 1], [0.5, 0.5, 1.0, 0.0, 1.0, np.nan], equal_nan=True)
    encoder = GroupTargetEncoder(cv=6)
    encoder.fit_transform(angle, y)
    assert encoder.n_splits_ == 6 and np.allclose(encoder.transform(angle), full, equal_nan=True)
    assert encoder.get_feature_names_out().tolist() == ["group_labelled", "group_rate"]
    assert GroupTargetEncoder().fit_transform(angle[:1], y[:1]).tolist()[0][0] == 0  # a single row has no neighbours out of fold
