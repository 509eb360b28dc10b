"""Blenders on constructed inputs where the right answer is known; clipping's eps choice."""

from __future__ import annotations

import numpy as np
import pytest
from competition.stacking.blenders import (
    BLENDERS,
    CaruanaBlender,
    GeometricMeanBlender,
    LogitMeanBlender,
    MeanBlender,
    MedianBlender,
    MinMaxBestBaseBlender,
    RankMeanBlender,
    WeightedBlender,
)
from competition.stacking.clipping import choose_eps, clip
from competition.stacking.metrics import logloss, sigmoid

P = np.array([[0.2, 0.4, 0.9], [0.5, 0.5, 0.8], [0.1, 0.3, 0.2]])
Y = np.array([0, 1, 0])


@pytest.mark.parametrize(
    ("blender", "expected"),
    [
        (MeanBlender(), [0.5, 0.6, 0.2]),
        (MedianBlender(), [0.4, 0.5, 0.2]),
        (GeometricMeanBlender(), np.cbrt(P.prod(axis=1))),
        (LogitMeanBlender(), sigmoid(np.log(P / (1 - P)).mean(axis=1))),
    ],
)
def test_fixed_blenders_compute_their_formula(blender, expected):
    assert np.allclose(blender.fit(P, Y).predict_proba(P)[:, 1], expected)


def test_logit_mean_of_opposite_logits_is_one_half_and_geometric_mean_is_not_symmetric():
    X = np.array([[0.9, 0.1], [0.25, 1.0]])
    assert LogitMeanBlender().fit(X, [0, 1]).predict_proba(X)[0, 1] == pytest.approx(0.5)
    assert GeometricMeanBlender().fit(X, [0, 1]).predict_proba(X)[:, 1] == pytest.approx([0.3, 0.5])


def test_every_blender_returns_two_class_probabilities_per_row_and_refuses_other_widths():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    X = np.clip(0.5 + 0.3 * (2 * y[:, None] - 1) + rng.normal(0, 0.2, (200, 3)), 0.01, 0.99)
    for name, cls in BLENDERS.items():
        fitted = cls().fit(X, y)
        out = fitted.predict_proba(X[:7])
        assert out.shape == (7, 2) and np.all((out >= 0) & (out <= 1)) and np.allclose(out.sum(axis=1), 1.0), name
        assert fitted.predict(X[:7]).tolist() == (out[:, 1] > 0.5).astype(int).tolist(), name
        with pytest.raises(ValueError):
            fitted.predict_proba(X[:, :2])


def test_rank_mean_depends_only_on_ranks_and_is_calibrated():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 2000)
    score = y + rng.normal(0, 1.0, 2000)
    X = np.column_stack([sigmoid(score), sigmoid(3 * score + 1)])  # one signal, two monotone transforms
    X_same_ranks = np.column_stack([sigmoid(score), sigmoid(score)])
    a = RankMeanBlender().fit(X, y).predict_proba(X)[:, 1]
    b = RankMeanBlender().fit(X_same_ranks, y).predict_proba(X_same_ranks)[:, 1]
    assert np.allclose(a, b)
    assert abs(a.mean() - y.mean()) < 0.01  # Platt scaling makes the mean rank a probability


def test_minmax_bestbase_cut_logic_with_fixed_cuts():
    X = np.array(
        [
            [0.85, 0.90, 0.95],  # all above 0.8 -> max
            [0.10, 0.15, 0.05],  # all below 0.2 -> min
            [0.85, 0.70, 0.95],  # mixed -> best base
            [0.10, 0.25, 0.05],  # mixed -> best base
        ]
    )
    blender = MinMaxBestBaseBlender(lower=0.2, upper=0.8)
    y = np.array([1, 0, 1, 0])
    blender.fit(X, y)
    # column 2 is the best base on these rows (most confident in the right direction)
    assert blender.best_ == 2
    assert np.allclose(blender.predict_proba(X)[:, 1], [0.95, 0.05, 0.95, 0.05])
    blender.best_ = 1
    assert np.allclose(blender.predict_proba(X)[:, 1], [0.95, 0.05, 0.70, 0.25])


def test_minmax_bestbase_chooses_cuts_on_oof_and_can_decline_them():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 3000)
    # where all models agree strongly they are right: the cuts help
    X = np.clip(sigmoid(2.5 * (2 * y[:, None] - 1) + rng.normal(0, 1.5, (3000, 3))), 0.0, 1.0)
    fitted = MinMaxBestBaseBlender().fit(X, y)
    assert fitted.lower_ > 0 and fitted.upper_ < 1
    assert logloss(y, fitted.predict_proba(X)[:, 1]) < logloss(y, X[:, fitted.best_])
    # where unanimous confidence is wrong, the cuts would hurt: "never" (0, 1) is chosen
    flipped = np.where((X > 0.5).all(axis=1) | (X < 0.5).all(axis=1), 1 - y, y)
    declined = MinMaxBestBaseBlender().fit(X, flipped)
    assert (declined.lower_, declined.upper_) == (0.0, 1.0)


def test_weight_fit_recovers_a_planted_mixture():
    rng = np.random.default_rng(3)
    n = 40000
    X = rng.uniform(0.02, 0.98, (n, 4))
    planted = np.array([0.5, 0.3, 0.2, 0.0])
    y = (rng.random(n) < X @ planted).astype(int)
    w = WeightedBlender().fit(X, y).weights_
    assert w.sum() == pytest.approx(1.0) and np.all(w >= 0)
    assert np.allclose(w, planted, atol=0.05)


def test_caruana_selects_the_complementary_pair_and_ignores_noise():
    rng = np.random.default_rng(4)
    n = 4000
    y = rng.integers(0, 2, n)
    signal = 1.5 * (2 * y - 1)
    a = sigmoid(signal + rng.normal(0, 2, n))
    b = sigmoid(signal + rng.normal(0, 2, n))  # independent errors: averaging a and b helps
    junk = rng.uniform(0, 1, n)
    fitted = CaruanaBlender(iterations=20).fit(np.column_stack([a, junk, b]), y)
    assert fitted.counts_.sum() == 20 and fitted.counts_[1] == 0
    assert fitted.weights_[0] > 0.3 and fitted.weights_[2] > 0.3
    assert logloss(y, fitted.predict_proba(np.column_stack([a, junk, b]))[:, 1]) < min(logloss(y, a), logloss(y, b))


def test_choose_eps_prefers_clipping_only_when_confident_mistakes_exist():
    y = np.array([1, 0, 1, 0] * 25)
    careful = np.where(y == 1, 0.8, 0.2)
    assert choose_eps(careful, y, [1e-4, 1e-2, 2e-2]) == 1e-4  # ties: the smallest eps
    reckless = np.where(y == 1, 1.0, 0.0)
    reckless[:3] = 1 - reckless[:3]  # three confident mistakes
    assert choose_eps(reckless, y, [1e-4, 1e-3, 1e-2, 2e-2]) == 2e-2
    assert clip(reckless, 0.02).min() == 0.02 and clip(reckless, 0.02).max() == 0.98
