"""LightGBM stacker tuned by Optuna, with the scikit-learn estimator contract.

`fit(X, y)` sees only its own training rows (in nested CV: one outer training part). Inside it:
an inner stratified CV on which Optuna searches LightGBM's hyper-parameters (each trial reports
after every inner fold, so a hopeless trial is pruned early); the group iceberg rate computed
per inner split from that split's training labels only; then the honest inner-CV predictions
of the best trial (`oof_`, used to choose the clipping eps) and a final booster on all rows.
The study lives in `storage` when given (an SQLite file, or `grpc://HOST:PORT`: a driver's SQLite
served to a worker on another node, see competition.stacking.study_storage), so an interrupted
search resumes: a rerun only runs the trials still missing. A study belongs to its data and its
search: its name is `study_name` plus a fingerprint of X (values and feature names), y and the
search settings (`search_key`; `n_trials`, `timeout_s`, `storage` and `on_trial` aside, so a search
asked for more trials, or cut short by a timeout, resumes), so other data or settings start a new
study. Each finished trial is reported through `competition.engine.report_step` (the progress of
the engine task that runs the fit) and to `on_trial`.

X is an array or a DataFrame. The group target-encoding features read the angle column,
`angle_column`: a name (found among a DataFrame's columns; an array has no names, so none) or a
position (arrays and DataFrames alike); None, a name X lacks, or `group_labels=False`: no group
features.

Small data: the inner folds are min(inner_folds, smallest class count), at least 2 (recorded as
`inner_folds_`), the group-label folds at most one per row (`group_folds_`), and the search range
of `min_data_in_leaf` shrinks with the rows an inner split fits on, so a few rows still grow trees.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import optuna
import pandas as pd
from sklearn.model_selection import StratifiedKFold
from sklearn.utils.validation import check_is_fitted, validate_data

from competition import fingerprint
from competition.engine import report_step
from competition.stacking import study_storage
from competition.stacking.blenders import BinaryClassifier, binary_targets, two_columns
from competition.stacking.crossval import inner_folds_for
from competition.stacking.features import ANGLE, GROUP_TARGET_FEATURES, GroupTargetEncoder, group_folds_for
from competition.stacking.metrics import logloss

optuna.logging.set_verbosity(optuna.logging.WARNING)

Split = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # one inner split: X_fit, y_fit, X_val, y_val (design matrices)


class LGBMStacker(BinaryClassifier):
    """Gradient-boosted stacker over a table of run predictions and side features: a scikit-learn
    binary classifier, like every blender.

    X: an array or DataFrame of label-free features (see competition.stacking.features.stack_tables;
    NaN allowed, LightGBM splits on it); when `group_labels` is true and X has the angle column
    (`angle_column`, see the module docstring), the group target-encoding features are added inside
    fit/predict from the training labels only (`GroupTargetEncoder`).
    predict_proba(X): shape (n, 2) in the order of `classes_`; predict(X): the likelier class.
    """

    inner_label = "inner folds of the LightGBM stacker"  # how crossval's notes name these inner folds
    group_label = "group-rate folds of the LightGBM stacker"  # and the out-of-fold group encoding's folds
    MIN_DATA_IN_LEAF = (5, 60)  # search range on data of ordinary size; shrunk for tiny inner splits

    def __init__(
        self,
        n_trials: int = 30,
        timeout_s: float | None = None,
        inner_folds: int = 3,
        group_folds: int = 5,
        group_labels: bool = True,
        max_rounds: int = 2000,
        early_stopping_rounds: int = 50,
        threads: int = 1,
        seed: int = 0,
        storage: str | Path | None = None,
        study_name: str = "stacker",
        on_trial: Callable[[int], None] | None = None,
        angle_column: str | int | None = ANGLE,
    ) -> None:
        self.n_trials = n_trials
        self.timeout_s = timeout_s
        self.inner_folds = inner_folds
        self.group_folds = group_folds
        self.group_labels = group_labels
        self.max_rounds = max_rounds
        self.early_stopping_rounds = early_stopping_rounds
        self.threads = threads
        self.seed = seed
        self.storage = storage
        self.study_name = study_name
        self.on_trial = on_trial
        self.angle_column = angle_column

    # -- features that read labels -------------------------------------------------------
    def _angle_index(self, names: list[str] | None, n_features: int) -> int | None:
        """Position of the angle column in X, or None: no group target-encoding features."""
        col = self.angle_column
        if not self.group_labels or col is None:
            return None
        if isinstance(col, (int, np.integer)) and not isinstance(col, bool):
            if not -n_features <= int(col) < n_features:
                raise ValueError(f"LGBMStacker: angle_column={col} is not a column of X ({n_features} features)")
            return int(col) % n_features
        return names.index(col) if names is not None and col in names else None

    def _angle(self, X: np.ndarray) -> np.ndarray:
        """The angle column of X, as the group target encoder's one-column input."""
        column = self.angle_index_
        if column is None:
            raise RuntimeError("LGBMStacker: no angle column to encode")
        return X[:, [column]]

    def _design_fit(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Training rows' matrix: group target encoding cross-fitted (inner OOF), so no row sees its own label."""
        if self.angle_index_ is None:
            return X
        encoder = GroupTargetEncoder(cv=self.group_folds, random_state=self.seed)
        groups = encoder.fit_transform(self._angle(X), y)
        used = group_folds_for(self.group_folds, len(y))
        self.group_folds_ = min(getattr(self, "group_folds_", used), used)
        return np.hstack([X, groups])

    def _design_apply(self, encoder: GroupTargetEncoder | None, X: np.ndarray) -> np.ndarray:
        """Matrix of rows to predict: group target encoding from the fitted training labels."""
        if encoder is None:
            return X
        return np.hstack([X, encoder.transform(self._angle(X))])

    def _encoder(self, X: np.ndarray, y: np.ndarray) -> GroupTargetEncoder | None:
        if self.angle_index_ is None:
            return None
        return GroupTargetEncoder(cv=self.group_folds, random_state=self.seed).fit(self._angle(X), y)

    # -- LightGBM -----------------------------------------------------------------------
    def _leaf_range(self) -> tuple[int, int]:
        """min_data_in_leaf's search range: at most half the rows of the smallest inner fit part
        (so a split stays possible), at least 1; the usual 5-60 once there are 120 rows."""
        low, high = self.MIN_DATA_IN_LEAF
        top = max(1, min(high, getattr(self, "fit_rows_", 2 * high) // 2))
        return min(low, top), top

    def _params(self, trial: optuna.trial.BaseTrial) -> dict[str, Any]:
        leaf_low, leaf_high = self._leaf_range()
        return {
            "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.3, log=True),
            "num_leaves": trial.suggest_int("num_leaves", 2, 32, log=True),
            "min_data_in_leaf": trial.suggest_int("min_data_in_leaf", leaf_low, leaf_high, log=True),
            "feature_fraction": trial.suggest_float("feature_fraction", 0.4, 1.0),
            "bagging_fraction": trial.suggest_float("bagging_fraction", 0.5, 1.0),
            "lambda_l1": trial.suggest_float("lambda_l1", 1e-4, 10.0, log=True),
            "lambda_l2": trial.suggest_float("lambda_l2", 1e-4, 10.0, log=True),
        }

    def _fixed(self) -> dict[str, Any]:
        return {
            "objective": "binary",
            "bagging_freq": 1,
            "verbosity": -1,
            "num_threads": self.threads,
            "seed": self.seed,
            "deterministic": True,
            "force_col_wise": True,
            "feature_pre_filter": False,
        }

    def _train_split(self, params: dict[str, Any], split: Split) -> tuple[np.ndarray, int]:
        """Held-out predictions of one inner split (early-stopped on it) and the rounds used."""
        X_fit, y_fit, X_val, y_val = split
        booster = lgb.train(
            {**self._fixed(), **params},
            lgb.Dataset(X_fit, y_fit),
            num_boost_round=self.max_rounds,
            valid_sets=[lgb.Dataset(X_val, y_val)],
            callbacks=[lgb.early_stopping(self.early_stopping_rounds, verbose=False)],
        )
        held_out = booster.predict(X_val, num_iteration=booster.best_iteration)
        if not isinstance(held_out, np.ndarray):
            raise RuntimeError(f"LGBMStacker: the booster predicted a {type(held_out).__name__}, expected an array")
        return held_out, max(1, booster.best_iteration)

    # -- the search ---------------------------------------------------------------------
    SEARCH_SETTINGS = ("inner_folds", "group_folds", "group_labels", "angle_column", "max_rounds", "early_stopping_rounds", "threads", "seed")

    def search_key(self, X: np.ndarray, y: np.ndarray) -> str:
        """Fingerprint of what a study's trials depend on: X (values and feature names), y, the search
        settings, the search space. Not `n_trials` or `timeout_s`: more trials, or a search cut short,
        resume the same study."""
        names = getattr(self, "feature_names_in_", None)
        settings = {k: getattr(self, k) for k in self.SEARCH_SETTINGS}
        space = {"min_data_in_leaf": list(self._leaf_range()), "features": None if names is None else [str(n) for n in names]}
        return fingerprint.of_json(
            {"X": fingerprint.of_array(np.ascontiguousarray(X)), "y": fingerprint.of_array(np.ascontiguousarray(y)), "settings": settings, "space": space}
        )

    def _study(self, key: str, storage: optuna.storages.BaseStorage | str | None) -> optuna.Study:
        self.study_name_ = f"{self.study_name}-{key[:16]}"
        return optuna.create_study(
            study_name=self.study_name_,
            storage=storage,
            load_if_exists=True,
            direction="minimize",
            sampler=optuna.samplers.TPESampler(seed=self.seed),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1),
        )

    def _search(self, splits: list[Split], key: str) -> optuna.trial.FrozenTrial:
        with study_storage.opened(self.storage) as storage:
            return self._run_study(self._study(key, storage), splits)

    def _run_study(self, study: optuna.Study, splits: list[Split]) -> optuna.trial.FrozenTrial:
        """Run the trials `study` still lacks of `n_trials` (one after another, seeded: reproducible) and return the best."""
        finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        done = len(study.get_trials(deepcopy=False, states=finished))
        if self.on_trial is not None and done:
            self.on_trial(min(done, self.n_trials))
        report_step(min(done, self.n_trials), self.n_trials)

        def objective(trial: optuna.Trial) -> float:
            params = self._params(trial)
            losses, rounds = [], []
            for step, split in enumerate(splits):
                pred, used = self._train_split(params, split)
                losses.append(logloss(split[3], pred))
                rounds.append(used)
                trial.report(float(np.mean(losses)), step)
                if trial.should_prune():
                    raise optuna.TrialPruned()
            trial.set_user_attr("rounds", round(float(np.mean(rounds))))
            return float(np.mean(losses))

        def tick(_: optuna.Study, __: optuna.trial.FrozenTrial) -> None:
            nonlocal done
            done += 1
            report_step(min(done, self.n_trials), self.n_trials)
            if self.on_trial is not None:
                self.on_trial(1)

        if self.n_trials > done:
            enough = optuna.study.MaxTrialsCallback(self.n_trials, states=finished)  # searching with others: stop at n_trials in all
            study.optimize(objective, n_trials=self.n_trials - done, timeout=self.timeout_s, callbacks=[tick, enough])
        return study.best_trial

    def _prepare(self, X: Any, y: Any) -> tuple[np.ndarray, np.ndarray, list[tuple[np.ndarray, np.ndarray]], list[Split]]:
        """Validated X and y, the inner CV's row indices, and each inner split's matrices (group features cross-fitted)."""
        X, y = validate_data(self, X, y, dtype=np.float64, ensure_all_finite="allow-nan")
        y = binary_targets(self, y)
        self.angle_index_ = self._angle_index(self._names(), X.shape[1])
        self.inner_folds_ = inner_folds_for(self.inner_folds, y)
        inner = StratifiedKFold(self.inner_folds_, shuffle=True, random_state=self.seed).split(np.zeros(len(y)), y)
        index_splits = list(inner)
        self.fit_rows_ = min(len(a) for a, _ in index_splits)
        if hasattr(self, "group_folds_"):
            del self.group_folds_
        splits = [(self._design_fit(X[a], y[a]), y[a], self._design_apply(self._encoder(X[a], y[a]), X[b]), y[b]) for a, b in index_splits]
        return X, y, index_splits, splits

    def _names(self) -> list[str] | None:
        return None if not hasattr(self, "feature_names_in_") else [str(n) for n in self.feature_names_in_]

    def search(self, X: Any, y: Any) -> float:
        """Only the study `fit(X, y)` would run: its missing trials, no model; the best score so far.

        For the opt-in trial-parallel search (configs/stack.yaml `stacker.trial_workers`): several
        processes call this at once on one shared storage, each stopping once the study holds
        `n_trials` finished trials (a few more when trials were still running elsewhere); which trial
        saw which sampler state then depends on timing, so the study is not reproducible (Optuna FAQ,
        optuna#4412). The `fit` that follows finds the study complete and only refits the best trial.
        """
        X, y, _, splits = self._prepare(X, y)
        best = self._search(splits, self.search_key(X, y))
        return float("nan") if best.value is None else float(best.value)

    def fit(self, X: Any, y: Any) -> LGBMStacker:
        X, y, index_splits, splits = self._prepare(X, y)
        names = self._names()
        best = self._search(splits, self.search_key(X, y))
        self.params_ = dict(best.params)
        self.rounds_ = int(best.user_attrs["rounds"])
        if best.value is None:
            raise RuntimeError("LGBMStacker: the best trial of the search has no score")
        self.search_score_ = float(best.value)
        self.oof_ = np.empty(len(y))
        for (_, held), split in zip(index_splits, splits, strict=True):
            self.oof_[held] = self._train_split(self.params_, split)[0]
        self.encoder_ = self._encoder(X, y)
        self.columns_ = names if names is not None else [f"x{i}" for i in range(X.shape[1])]
        self.feature_names_ = self.columns_ + (GROUP_TARGET_FEATURES if self.encoder_ is not None else [])
        self.booster_ = lgb.train({**self._fixed(), **self.params_}, lgb.Dataset(self._design_fit(X, y), y), num_boost_round=self.rounds_)
        return self

    @property
    def feature_importances_(self) -> pd.Series:
        """Total gain of each feature in the final booster (label-derived group features included)."""
        check_is_fitted(self)
        return pd.Series(self.booster_.feature_importance("gain"), index=self.feature_names_)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Probabilities of `classes_[0]` and `classes_[1]`, shape (n, 2)."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, ensure_all_finite="allow-nan", reset=False)
        return two_columns(np.asarray(self.booster_.predict(self._design_apply(self.encoder_, X))))

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags
