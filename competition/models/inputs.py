"""From raw SAR arrays to what a pretrained network expects, for Keras and timm alike.

Images: bands (HH, HV, optional third) are built and standardised per channel with statistics
fitted on training images only, then mapped affinely into the network's pretraining input
space (a z-score of 0 +- 1 becomes an ImageNet-like pixel mean +- std, then the network's own
normalisation), so pretrained filters see inputs on the scale they were trained on.
Angle: standardised with training statistics; missing angles become 0 plus a missing flag of 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from competition.data.channels import Standardizer

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


def network_affine(net_mean: tuple[float, ...], net_std: tuple[float, ...], n_channels: int) -> tuple[np.ndarray, np.ndarray]:
    """(scale, offset) with x_net = z * scale + offset, for a network expecting (pixel - net_mean) / net_std."""
    mean, std = np.asarray(net_mean, float), np.asarray(net_std, float)
    if n_channels != 3:  # an adapted stem mixes the three colour filters: use the colour-averaged statistics
        mean, std = np.full(n_channels, mean.mean()), np.full(n_channels, std.mean())
        pix_mean, pix_std = np.full(n_channels, IMAGENET_MEAN.mean()), np.full(n_channels, IMAGENET_STD.mean())
    else:
        pix_mean, pix_std = IMAGENET_MEAN, IMAGENET_STD
    return (pix_std / std).astype(np.float32), ((pix_mean - mean) / std).astype(np.float32)


def photo_network_input(rgb: np.ndarray, net_mean: tuple[float, ...], net_std: tuple[float, ...], n_channels: int, bgr: bool = False) -> np.ndarray:
    """RGB photos in [0, 1] (N x H x W x 3) as the network's input: its own normalisation; grey bands for a non-RGB stem."""
    rgb = np.asarray(rgb, np.float32)
    mean, std = np.asarray(net_mean, np.float32), np.asarray(net_std, np.float32)
    if n_channels != 3:
        grey = rgb.mean(axis=-1, keepdims=True)
        return np.repeat((grey - mean.mean()) / std.mean(), n_channels, axis=-1)
    x = (rgb - mean) / std
    return x[..., ::-1].copy() if bgr else x


@dataclass
class InputPipeline:
    """Fitted input statistics of one model; `fit` on training data, then transform anything."""

    channels: list[str]
    standardizer: Standardizer | None = None
    angle_mean: float = 0.0
    angle_std: float = 1.0

    @property
    def fitted(self) -> bool:
        return self.standardizer is not None

    def fit(self, images: np.ndarray, angle: np.ndarray | None = None) -> InputPipeline:
        """Fit channel and angle statistics on training rows (never validation or test rows)."""
        from competition.data.channels import Standardizer, build_channels

        self.standardizer = Standardizer().fit(build_channels(images, self.channels))
        known = angle[~np.isnan(angle)] if angle is not None else np.empty(0)
        if known.size >= 2:
            self.angle_mean, self.angle_std = float(known.mean()), float(known.std() or 1.0)
        return self

    def images(self, images: np.ndarray) -> np.ndarray:
        """Standardised channels, N x H x W x C float32."""
        from competition.data.channels import build_channels

        if self.standardizer is None:
            raise RuntimeError("input statistics are not fitted: call model.prepare(train_images) or fit() first")
        return self.standardizer.transform(build_channels(images, self.channels)).astype(np.float32, copy=False)

    def angles(self, angle: np.ndarray) -> np.ndarray:
        """N x 2 float32: standardised angle (0 where missing) and the missing flag."""
        angle = np.asarray(angle, dtype=np.float64)
        missing = np.isnan(angle)
        z = np.where(missing, 0.0, (np.where(missing, 0.0, angle) - self.angle_mean) / self.angle_std)
        return np.stack([z, missing.astype(np.float64)], axis=1).astype(np.float32)

    def state(self) -> dict[str, Any]:
        """JSON-able fitted state (saved beside the weights)."""
        std = None if self.standardizer is None else {"mean": self.standardizer.mean_.tolist(), "scale": self.standardizer.scale_.tolist()}
        return {"channels": self.channels, "standardizer": std, "angle_mean": self.angle_mean, "angle_std": self.angle_std}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> InputPipeline:
        from competition.data.channels import Standardizer

        pipeline = cls(list(state["channels"]), None, float(state["angle_mean"]), float(state["angle_std"]))
        if state["standardizer"] is not None:  # restore the fitted attributes, as unpickling a scikit-learn estimator does
            std = pipeline.standardizer = Standardizer()
            std.mean_, std.scale_ = np.asarray(state["standardizer"]["mean"]), np.asarray(state["standardizer"]["scale"])
            std.n_channels_ = len(std.mean_)
        return pipeline
