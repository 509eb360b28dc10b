"""Frozen-prefix caching: run the frozen bottom of a network once per image and view, for all folds.

When a policy freezes the bottom `frozen_prefix()` blocks (in inference mode), their output
depends only on the image, so the trainer computes it once for every training and test image
and every dihedral view it needs (training augmentation views + TTA views), stores it under
`<data_dir>/cache/prefix/<model>-<key>/`, and trains only the blocks above on those features.
The key hashes everything the features depend on: the data fingerprints, the prefix-relevant
model config, the decided policy, the weight source and (for random init) the init seed.

Training augmentation on cached features picks, per sample, the cached view that the image
augmentation would have produced with the same random draws (flips/turns only).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from competition import fingerprint
from competition.atomic import atomic_path, write_json
from competition.data.dataset import IMAGE_SIZE
from competition.errors import FingerprintError
from competition.training import augment, dihedral

KEY_FILE = "key.json"


class PrefixCache:
    """One cache folder: `<split>_<view>.npy` per split and view, `key.json` with what it was made from."""

    def __init__(self, root: Path, model_name: str, key: dict[str, Any]) -> None:
        self.key = key
        self.dir = Path(root) / f"{model_name}-{fingerprint.of_json(key)}"

    def _check_key(self) -> None:
        key_path = self.dir / KEY_FILE
        if key_path.is_file():
            found = json.loads(key_path.read_text())
            if found != json.loads(json.dumps(self.key, default=str)):
                diff = sorted(k for k in set(found) | set(self.key) if found.get(k) != self.key.get(k))
                raise FingerprintError(f"{key_path}: cache was made with different {', '.join(diff)}; delete {self.dir}")
        else:
            write_json(key_path, self.key)

    def path(self, split: str, view: dihedral.Variant) -> Path:
        return self.dir / f"{split}_{view}.npy"

    def missing(self, split: str, views: Sequence[dihedral.Variant]) -> list[dihedral.Variant]:
        return [v for v in views if not self.path(split, v).is_file()]

    def fill(
        self,
        split: str,
        images: np.ndarray,
        views: Sequence[dihedral.Variant],
        compute: Callable[[np.ndarray], np.ndarray],
        on_view: Callable[[], None] | None = None,
    ) -> None:
        """Compute and store the features of every view not cached yet (each file written atomically)."""
        self._check_key()
        for view in self.missing(split, views):
            features = np.ascontiguousarray(compute(dihedral.apply(images, view)), dtype=np.float32)
            with atomic_path(self.path(split, view)) as tmp:
                np.save(tmp, features)
            if on_view is not None:
                on_view()

    def load(self, split: str, view: dihedral.Variant, n_rows: int) -> np.ndarray:
        """Features of one view (memory-mapped), refusing a file with the wrong number of rows."""
        self._check_key()
        path = self.path(split, view)
        features = np.load(path, mmap_mode="r")
        if len(features) != n_rows:
            raise FingerprintError(f"{path}: {len(features)} rows, expected {n_rows}; delete {self.dir}")
        return features


class FeatureAugmenter:
    """The `Augment` callable for cached features: a random cached view per sample.

    `views[i]` holds the features of view `names[i]` for every training image; `rows` maps the
    fit's row indices to those global rows. The draws are the image augmenter's, so the same rng
    picks the same view on both paths.
    """

    def __init__(self, cfg: augment.AugmentConfig, names: Sequence[dihedral.Variant], views: Sequence[np.ndarray], rows: np.ndarray) -> None:
        needed = set(cfg.dihedral_support())
        if not needed <= set(names):
            raise ValueError(f"cached views {list(names)} lack {sorted(needed - set(names))} needed by the augmentation")
        self.cfg = cfg
        self.position = {dihedral.index(n): i for i, n in enumerate(names)}
        self.views = views
        self.rows = rows

    def __call__(self, x: np.ndarray, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        d = augment.draw(self.cfg, len(rows), IMAGE_SIZE, rng)
        out = np.empty_like(x)
        global_rows = self.rows[rows]
        for element in np.unique(d.variant):
            take = np.flatnonzero(d.variant == element)
            out[take] = self.views[self.position[int(element)]][global_rows[take]]
        return out
