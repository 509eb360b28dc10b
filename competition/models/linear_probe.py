"""The linear probe: a logistic regression on frozen pretrained features; no network is trained.

On about a hundred real SAR chips every fine-tuned CNN scored worse than the class prior, while
a logistic regression on frozen ImageNet features beat it (0.51 against 0.58 log loss): with so
few images the only thing that generalises is a linear read-out of pretrained features with its
strength chosen by cross-validation (docs/linear-probe.md).

Blocks, bottom to top:
- `backbone`: the timm network without its classifier (built, with its offline weights, by a
  `TimmModel` under policy `head`), always frozen and in inference mode;
- `dihedral_pool`: global average pooling, averaged over the 8 flips/turns of each image
  (competition.training.dihedral), so the features are the same for every view: TTA is inside them;
- `logistic_regression`: StandardScaler -> L2 logistic regression on the pooled features, the
  standardised angle and its missing flag, C picked from `probe.c_grid` by inner stratified CV on
  log loss (scikit-learn's GridSearchCV over C, the scaler fitted inside each inner fold).

The policy is always `head`, so `frozen_prefix()` is 2 and the trainer's prefix cache holds the
dihedral-mean features once per image for the whole run; `fit` and `predict` take those
features (`ModelInputs(is_features=True)`) or raw images, with the same predictions.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import make_scorer
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from competition.errors import ConfigError
from competition.metrics import logloss
from competition.models import policies
from competition.models.base import ImageModel, check_fit_inputs
from competition.models.registry import load_model
from competition.models.schema import PROBE_POLICIES, Augment, FitResult, ModelConfig, ModelInputs, PolicyDecision
from competition.models.timm_net import TimmModel
from competition.stacking.crossval import inner_folds_for
from competition.training import dihedral

BLOCKS = ["backbone", "dihedral_pool", "logistic_regression"]
BACKBONE_DIR = "backbone"  # the backbone, saved as a TimmModel inside the probe's folder
PIPELINE_FILE = "logistic_regression.npz"  # the fitted scaler and logistic regression as arrays (no pickle)
CHUNK_ROWS = 512  # images whose 8 views are in memory at once


def backbone_config(config: ModelConfig) -> ModelConfig:
    """The `TimmModel` config that builds the probe's backbone: same architecture, weights, channels, size,
    seed and device, policy `head`, no hidden layer (its head is never used). Weights resolve by architecture
    (competition.models.weights), so `<name>_probe` finds the same weight package as `<name>`."""
    data = config.model_dump(mode="json")
    data.update(framework="timm", policy="head", head={"hidden": []})
    return ModelConfig.model_validate(data)


def probe_for(config: ModelConfig) -> ModelConfig:
    """The linear probe on the backbone of the network `config`, for the `auto` policy race.

    Same architecture, weights (pretrained/none and `weights_file`), channels, image size, seed,
    device and precision as `config`; named `<name>_probe`, policy `head`, the `probe:` section's
    defaults (configs/models/<name>_probe.yaml, where there is one, may tune it: this does not read it).
    A probe config comes back unchanged. Raises ConfigError for a Keras network: the probe builds
    timm backbones only.
    """
    if config.framework == "probe":
        return config
    if config.framework != "timm":
        raise ConfigError(f"model '{config.name}': a linear probe needs a timm backbone, not framework {config.framework!r}")
    data = config.model_dump(mode="json", include={"architecture", "weights", "weights_file", "channels", "image_size", "seed", "device", "mixed_precision"})
    return ModelConfig.model_validate({**data, "name": f"{config.name}_probe", "framework": "probe", "policy": "head"})


class LinearProbe(ImageModel):
    """Frozen timm features (dihedral-mean, globally pooled) + angle -> a logistic regression with C chosen by inner CV.

    After `fit`, `selection` records the choice: the C kept, the inner folds used and the mean
    inner-CV log loss of every C in the grid (also saved with the model).
    """

    framework = "probe"
    divergence_measure = TimmModel.divergence_measure

    def __init__(self, config: ModelConfig, *, pretrained: bool = True) -> None:
        super().__init__(config)
        self._backbone = TimmModel(backbone_config(config), pretrained=pretrained)
        self._backbone.apply_policy("head")
        self.weight_source = self._backbone.weight_source
        self._pipeline: Pipeline | None = None
        self.selection: dict[str, Any] = {}

    @classmethod
    def computes_on_gpu(cls, config: ModelConfig) -> bool:
        """Where its timm backbone runs (`TimmModel.computes_on_gpu`); the logistic regression is on the CPU."""
        return TimmModel.computes_on_gpu(backbone_config(config))

    # --- blocks and policies --------------------------------------------------------------

    def blocks(self) -> list[str]:
        return list(BLOCKS)

    def apply_policy(self, policy: str, images: np.ndarray | None = None) -> PolicyDecision:
        """Always `head` (only the logistic regression is fitted); `auto` means head too, anything else is a ConfigError."""
        if policies.check_policy(policy) not in PROBE_POLICIES:
            raise ConfigError(f"model '{self.name}': key 'policy' is {policy!r}, but a linear probe only fits its logistic regression; use head or auto")
        decision = PolicyDecision(name="head", requested=policy, reason="linear probe: frozen pretrained features, only the logistic regression is fitted")
        self._trainable = policies.trainable_blocks("head", self.blocks())
        self.policy = decision
        return decision

    def _set_trainable(self, flags: list[bool]) -> None:
        """Nothing to switch: the backbone and the pooling always run frozen, the logistic regression is refitted by `fit`."""

    def trainable_parameter_names(self) -> list[str]:
        return ["logistic_regression.coef", "logistic_regression.intercept"]

    # --- features -------------------------------------------------------------------------

    def _net(self) -> TimmModel:
        """The backbone, reading images with this probe's input statistics (fitted by `prepare`, or restored by `load_dir`)."""
        self._backbone.inputs = self.inputs
        return self._backbone

    def domain_divergence(self, images: np.ndarray, *, rgb: bool = False) -> float:
        return self._net().domain_divergence(images, rgb=rgb)

    def prefix_features(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Globally average-pooled backbone features averaged over the 8 dihedral views: N x D float32.

        Invariant to flipping or turning an image (the mean runs over the whole group), up to float rounding.
        """
        net, out = self._net(), []
        for start in range(0, len(images), CHUNK_ROWS):
            chunk = images[start : start + CHUNK_ROWS]
            views = [net.prefix_features(dihedral.apply(chunk, v), batch_size).mean(axis=(2, 3), dtype=np.float64) for v in dihedral.VARIANTS]
            out.append(np.mean(views, axis=0).astype(np.float32))
        return np.concatenate(out) if out else np.empty((0, 0), np.float32)

    def _design(self, inputs: ModelInputs, batch_size: int) -> np.ndarray:
        """The logistic regression's input: features (cached or computed here), standardised angle, missing flag."""
        features = np.asarray(inputs.x) if inputs.is_features else self.prefix_features(inputs.x, batch_size)
        if features.ndim != 2:
            raise ValueError(f"a linear probe's features are N x D (prefix_features), got shape {features.shape}")
        return np.hstack([features, self.inputs.angles(inputs.angle)])

    # --- fitting and prediction -----------------------------------------------------------

    def fit(
        self,
        train: ModelInputs,
        valid: ModelInputs,
        *,
        epochs: int,
        batch_size: int,
        augment: Augment | None = None,
        seed: int = 0,
        patience: int | None = None,
        on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    ) -> FitResult:
        """Fit the scaler and the logistic regression on `train`, choosing C by inner stratified CV on log loss.

        No network trains, so `epochs` and `patience` are ignored, `batch_size` only batches the
        feature extraction and `augment` is ignored (the features already average all eight
        flips/turns). `seed` shuffles the inner folds, whose number is `probe.inner_folds` shrunk
        to the smaller class (competition.stacking.crossval.inner_folds_for). `valid` is only
        scored. The history is one "epoch": train/val log loss, the C kept and its inner-CV log loss.
        """
        check_fit_inputs(train, valid, augment)
        if not self.inputs.fitted:
            self.prepare(train.x, train.angle)
        if self.policy is None:
            self.apply_policy(self.config.policy)
        probe, y = self.config.probe, np.asarray(train.y, dtype=np.int64)
        folds = inner_folds_for(probe.inner_folds, y)
        search = GridSearchCV(  # scaling inside each inner fold; the API Kaggle's scikit-learn 1.6 shares with today's
            Pipeline([("scale", StandardScaler()), ("logreg", LogisticRegression(max_iter=probe.max_iter))]),
            {"logreg__C": list(probe.c_grid)},
            scoring=make_scorer(logloss, greater_is_better=False, response_method="predict_proba"),  # Kaggle's log loss
            cv=StratifiedKFold(folds, shuffle=True, random_state=seed % 2**32),
        )
        design = self._design(train, batch_size)
        # L-BFGS on a ~1,300 x 1,300 design is matrix-vector work: on a busy 2-core machine this fit took 304 s wall / 63 s CPU
        # with OpenBLAS's default threads against 31 s / 3.1 s on one (fold 0 of the simulated competition, 9 C x 5 inner folds)
        with threadpool_limits(limits=1, user_api="blas"):
            search.fit(design, y)
        self._pipeline = search.best_estimator_
        inner = -np.asarray(search.cv_results_["mean_test_score"], dtype=np.float64)  # per C, in c_grid's order
        best_c = float(search.best_params_["logreg__C"])
        self.selection = {"C": best_c, "inner_folds": folds, "c_grid": [float(c) for c in probe.c_grid], "inner_logloss": inner.tolist()}
        history = {
            "train_loss": [logloss(y, self._probability(design))],
            "val_loss": [logloss(np.asarray(valid.y), self.predict(valid, batch_size))],
            "C": [self.selection["C"]],
            "inner_cv_logloss": [float(inner.min())],
        }
        if on_epoch is not None:
            on_epoch(0, {"train_loss": history["train_loss"][0], "val_loss": history["val_loss"][0]})
        return FitResult(history=history, best_epoch=0)

    def predict(self, inputs: ModelInputs, batch_size: int = 64) -> np.ndarray:
        return self._probability(self._design(inputs, batch_size))

    def _probability(self, design: np.ndarray) -> np.ndarray:
        """P(iceberg) for rows of `_design`'s matrix, shape (N,)."""
        if self._pipeline is None:
            raise RuntimeError(f"linear probe '{self.name}' is not fitted: call fit first")
        return np.asarray(self._pipeline.predict_proba(design)[:, 1], dtype=np.float64)

    # --- persistence ----------------------------------------------------------------------

    def _save_weights(self, directory: Path) -> None:
        """The backbone (a TimmModel folder, so raw images can be predicted after loading) and the pipeline's arrays."""
        self._net().save(directory / BACKBONE_DIR)
        if self._pipeline is None:
            return
        scaler, logreg = self._pipeline.named_steps["scale"], self._pipeline.named_steps["logreg"]
        np.savez(
            directory / PIPELINE_FILE,
            mean=scaler.mean_,
            scale=scaler.scale_,
            var=scaler.var_,
            coef=logreg.coef_,
            intercept=logreg.intercept_,
            classes=logreg.classes_,
            selection=np.array(json.dumps(self.selection)),
        )

    def _load_weights(self, directory: Path) -> None:
        backbone = load_model(directory / BACKBONE_DIR)
        if not isinstance(backbone, TimmModel):
            raise ValueError(f"{directory / BACKBONE_DIR}: expected a timm backbone, found framework {backbone.framework!r}")
        self._backbone = backbone
        path = directory / PIPELINE_FILE
        if not path.is_file():
            return  # saved before fitting
        with np.load(path) as arrays:
            self.selection = json.loads(str(arrays["selection"]))
            scaler = StandardScaler()
            scaler.mean_, scaler.scale_, scaler.var_ = arrays["mean"], arrays["scale"], arrays["var"]
            logreg = LogisticRegression(C=self.selection["C"], max_iter=self.config.probe.max_iter)
            logreg.coef_, logreg.intercept_, logreg.classes_ = arrays["coef"], arrays["intercept"], arrays["classes"]
        scaler.n_features_in_ = logreg.n_features_in_ = len(scaler.mean_)
        self._pipeline = Pipeline([("scale", scaler), ("logreg", logreg)])
