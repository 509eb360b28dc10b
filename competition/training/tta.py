"""Test-time augmentation: average P(iceberg) over dihedral variants of each image.

Ships and icebergs have no preferred orientation in a SAR chip, so every flip/rotation is a
valid view; averaging the views' probabilities lowers the variance of each prediction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from competition.models.base import ImageModel
from competition.models.schema import ModelInputs
from competition.training import dihedral


def average(views: Sequence[dihedral.Variant], predict_view: Callable[[dihedral.Variant], np.ndarray]) -> np.ndarray:
    """Mean of `predict_view(v)` over the views (probabilities, shape N)."""
    if not views:
        raise ValueError("TTA needs at least one view (e.g. ['id'])")
    return np.mean([predict_view(v) for v in views], axis=0)


def predict_images(model: ImageModel, inputs: ModelInputs, views: Sequence[dihedral.Variant], batch_size: int) -> np.ndarray:
    """TTA on raw images: transform the batch per view, predict, average."""
    return average(views, lambda v: model.predict(ModelInputs(dihedral.apply(inputs.x, v), inputs.angle), batch_size))


def predict_features(
    model: ImageModel, features: Callable[[dihedral.Variant], np.ndarray], angle: np.ndarray, views: Sequence[dihedral.Variant], batch_size: int
) -> np.ndarray:
    """TTA on cached prefix features: `features(v)` gives the prefix output of view v."""
    return average(views, lambda v: model.predict(ModelInputs(features(v), angle, is_features=True), batch_size))
