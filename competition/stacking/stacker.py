"""LightGBM stacker tuned by Optuna, with the scikit-learn estimator contract.

`fit(X, y)` sees only its own training rows (in nested CV: one outer training part). Inside it:
an inner stratified CV on which Optuna searches LightGBM's hyper-parameters (each trial reports
after every inner fold, so a hopeless trial is pruned early); the group iceberg rate computed
per inner split from that split's training labels only; then the honest inner-CV predictions
of the best trial (`oof_`, used to choose the clipping eps) and a final booster on all rows.
The study lives in SQLite when `storage` is given, so an interrupted search resumes: a rerun
only runs the trials still missing.

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
from sklearn.base import BaseEstimator
from sklearn.model_selection import StratifiedKFold

from competition.stacking.crossval import inner_folds_for
from competition.stacking.features import ANGLE, GroupLabelEncoder, group_folds_for, out_of_fold_group_labels
from competition.stacking.metrics import logloss

optuna.logging.set_verbosity(optuna.logging.WARNING)


class LGBMStacker(BaseEstimator):
    """Gradient-boosted stacker over a table of run predictions and side features.

    X: a DataFrame of label-free features (see competition.stacking.features.stack_tables);
    when `group_labels` is true and X has an `angle` column, the group iceberg-rate features
    are added inside fit/predict from the training labels only.
    predict_proba(X): 1-D probabilities of class 1, like every blender.
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
        storage: Path | None = None,
        study_name: str = "stacker",
        on_trial: Callable[[int], None] | None = None,
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

    # -- features that read labels -------------------------------------------------------
    def _uses_groups(self, X: pd.DataFrame) -> bool:
        return self.group_labels and ANGLE in X.columns

    def _design_fit(self, X: pd.DataFrame, y: np.ndarray) -> np.ndarray:
        """Training rows' matrix: group label features out of fold, so no row sees its own label."""
        if not self._uses_groups(X):
            return X.to_numpy(dtype=np.float64)
        groups = out_of_fold_group_labels(X[ANGLE].to_numpy(), y, self.group_folds, self.seed)
        used = group_folds_for(self.group_folds, len(y))
        self.group_folds_ = min(getattr(self, "group_folds_", used), used)
        return np.hstack([X.to_numpy(dtype=np.float64), groups.to_numpy()])

    def _design_apply(self, encoder: GroupLabelEncoder | None, X: pd.DataFrame) -> np.ndarray:
        """Matrix of rows to predict: group label features from the fitted training labels."""
        if encoder is None:
            return X.to_numpy(dtype=np.float64)
        return np.hstack([X.to_numpy(dtype=np.float64), encoder.transform(X[ANGLE].to_numpy()).to_numpy()])

    def _encoder(self, X: pd.DataFrame, y: np.ndarray) -> GroupLabelEncoder | None:
        return GroupLabelEncoder().fit(X[ANGLE].to_numpy(), y) if self._uses_groups(X) else None

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

    def _train_split(self, params: dict[str, Any], split: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]) -> tuple[np.ndarray, int]:
        """Held-out predictions of one inner split (early-stopped on it) and the rounds used."""
        X_fit, y_fit, X_val, y_val = split
        booster = lgb.train(
            {**self._fixed(), **params},
            lgb.Dataset(X_fit, y_fit),
            num_boost_round=self.max_rounds,
            valid_sets=[lgb.Dataset(X_val, y_val)],
            callbacks=[lgb.early_stopping(self.early_stopping_rounds, verbose=False)],
        )
        return booster.predict(X_val, num_iteration=booster.best_iteration), max(1, booster.best_iteration)

    # -- the search ---------------------------------------------------------------------
    def _study(self) -> optuna.Study:
        storage = None if self.storage is None else f"sqlite:///{Path(self.storage).resolve()}"
        if self.storage is not None:
            Path(self.storage).parent.mkdir(parents=True, exist_ok=True)
        return optuna.create_study(
            study_name=self.study_name,
            storage=storage,
            load_if_exists=True,
            direction="minimize",
            sampler=optuna.samplers.TPESampler(seed=self.seed),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1),
        )

    def _search(self, splits: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]) -> optuna.trial.FrozenTrial:
        study = self._study()
        finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        done = len(study.get_trials(deepcopy=False, states=finished))
        if self.on_trial is not None and done:
            self.on_trial(min(done, self.n_trials))

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
            if self.on_trial is not None:
                self.on_trial(1)

        if self.n_trials > done:
            study.optimize(objective, n_trials=self.n_trials - done, timeout=self.timeout_s, callbacks=[tick])
        return study.best_trial

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> LGBMStacker:
        X = X.reset_index(drop=True)
        y = np.asarray(y, dtype=np.int64)
        self.inner_folds_ = inner_folds_for(self.inner_folds, y)
        inner = StratifiedKFold(self.inner_folds_, shuffle=True, random_state=self.seed).split(np.zeros(len(y)), y)
        index_splits = list(inner)
        self.fit_rows_ = min(len(a) for a, _ in index_splits)
        if hasattr(self, "group_folds_"):
            del self.group_folds_
        splits = [
            (self._design_fit(X.iloc[a], y[a]), y[a], self._design_apply(self._encoder(X.iloc[a], y[a]), X.iloc[b]), y[b])
            for a, b in index_splits
        ]
        best = self._search(splits)
        self.params_ = dict(best.params)
        self.rounds_ = int(best.user_attrs["rounds"])
        self.search_score_ = float(best.value)
        self.oof_ = np.empty(len(y))
        for (_, held), split in zip(index_splits, splits, strict=True):
            self.oof_[held] = self._train_split(self.params_, split)[0]
        self.encoder_ = self._encoder(X, y)
        self.columns_ = list(X.columns)
        self.feature_names_ = self.columns_ + (["group_labelled", "group_rate"] if self.encoder_ is not None else [])
        self.booster_ = lgb.train({**self._fixed(), **self.params_}, lgb.Dataset(self._design_fit(X, y), y), num_boost_round=self.rounds_)
        return self

    @property
    def feature_importances_(self) -> pd.Series:
        """Total gain of each feature in the final booster (label-derived group features included)."""
        return pd.Series(self.booster_.feature_importance("gain"), index=self.feature_names_)

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """Probability of class 1 for each row (1-D)."""
        if list(X.columns) != self.columns_:
            raise ValueError(f"LGBMStacker: fitted on columns {self.columns_}, got {list(X.columns)}")
        return np.asarray(self.booster_.predict(self._design_apply(self.encoder_, X.reset_index(drop=True))))
