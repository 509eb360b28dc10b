"""Sea clutter: the background reflectivity of each chip before speckle, in linear power.

Sea backscatter falls with incidence angle and rises with wind (the scene's sea state); the
cross-polarised return is about ten dB below the co-polarised one and sits close to the
sensor's noise floor, so HV clutter is mostly thermal noise and varies less than HH. Swell and
wind streaks modulate both bands together at scales of a few hundred metres.
"""

from __future__ import annotations

import numpy as np

from competition.simulate.fields import smooth_field

HH_DB = (-2.75, -0.46)  # HH sea clutter (dB) = a + b * angle + sea state (real background: -2.5 - 0.46 angle)
CROSS_POL_DB = (10.5, 2.0)  # HV clutter sits this far below HH: mean and image-to-image spread (dB)
NOISE_FLOOR_DB = (-28.8, 1.3, -0.2)  # HV noise-equivalent sigma zero at 39.3 deg, its spread, and slope per degree
SWELL_SD = (0.05, 0.35)  # range of the log-amplitude of swell texture, calm to rough
SWELL_SCALE = 5.0  # correlation length of the swell texture (pixels, 10 m each)


def db_to_power(db: np.ndarray) -> np.ndarray:
    return np.power(10.0, np.asarray(db) / 10.0)


def sea_levels(angle: np.ndarray, sea_state: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image HH clutter, HV clutter and HV noise floor (linear power, shape N)."""
    hh_db = HH_DB[0] + HH_DB[1] * angle + sea_state
    hv_db = hh_db - rng.normal(*CROSS_POL_DB, len(angle))
    noise_db = rng.normal(NOISE_FLOOR_DB[0], NOISE_FLOOR_DB[1], len(angle)) + NOISE_FLOOR_DB[2] * (angle - 39.3)
    return db_to_power(hh_db), db_to_power(hv_db), db_to_power(noise_db)


def swell(n: int, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative texture with mean one, shared by both bands (N x 75 x 75)."""
    sd = rng.uniform(*SWELL_SD, (n, 1, 1))
    log_amp = sd * smooth_field(n, SWELL_SCALE, rng)
    return np.exp(log_amp - sd**2 / 2)
