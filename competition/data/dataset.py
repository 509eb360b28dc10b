"""The in-memory form of one competition JSON file, shared by every later step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

IMAGE_SIZE = 75
BANDS = ("band_1", "band_2")  # HH, HV in dB
Split = Literal["train", "test"]  # which competition file a Dataset comes from


@dataclass(frozen=True)
class Dataset:
    """Arrays of one split; `labels` is None for the test split.

    images: float32, N x 75 x 75 x 2 (HH, HV in dB), row-major as in the JSON.
    angle: float64, N, NaN where the JSON says "na".
    angle_decimals: int8, N, decimals of the angle as written (machine-generated test rows have >4).
    fingerprint: content hash of the source file, recorded by every artefact made from it.
    """

    ids: np.ndarray
    images: np.ndarray
    angle: np.ndarray
    angle_decimals: np.ndarray
    labels: np.ndarray | None
    fingerprint: str

    def __post_init__(self) -> None:
        n = len(self.ids)
        assert self.images.shape == (n, IMAGE_SIZE, IMAGE_SIZE, len(BANDS)), self.images.shape
        assert self.angle.shape == (n,) and self.angle_decimals.shape == (n,)
        assert self.labels is None or self.labels.shape == (n,)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def angle_missing(self) -> np.ndarray:
        """True where the angle was "na" (only ships, on the real data)."""
        return np.isnan(self.angle)

    @property
    def machine_generated(self) -> np.ndarray:
        """The community rule for unscored test images: the angle has more than 4 decimals."""
        return self.angle_decimals > 4

    def subset(self, index: np.ndarray) -> Dataset:
        """Rows `index` (integer positions or a boolean mask) as a new Dataset."""
        return Dataset(
            ids=self.ids[index],
            images=self.images[index],
            angle=self.angle[index],
            angle_decimals=self.angle_decimals[index],
            labels=None if self.labels is None else self.labels[index],
            fingerprint=self.fingerprint,
        )
