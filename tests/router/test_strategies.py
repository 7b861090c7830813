"""Every strategy learns a learnable synthetic task, predicts in [0, 1], and survives a save/load round trip."""

from __future__ import annotations

import numpy as np
import pytest

from switchboard.router.calibration import fit_calibration
from switchboard.router.strategies import STRATEGIES, StrategyName
from switchboard.router.training import cross_validated_quality, kfold_indices

from .helpers import synthetic_xy


@pytest.mark.parametrize("name", list(StrategyName))
def test_strategy_learns_and_round_trips(name, rng):
    x, y = synthetic_xy(rng, n=400)
    model = STRATEGIES[name].fit(x[:300], y[:300], np.random.default_rng(0))
    pred = model.predict(x[300:])
    assert pred.shape == (100, 3) and np.all((pred >= 0) & (pred <= 1))
    # Expert 0 succeeds when x0 > 0, expert 1 when x0 < 0: the estimates must order them accordingly.
    pos, neg = x[300:, 0] > 0.5, x[300:, 0] < -0.5
    assert pred[pos, 0].mean() > pred[pos, 1].mean() and pred[neg, 1].mean() > pred[neg, 0].mean()
    again = STRATEGIES[name].from_arrays(model.arrays())
    np.testing.assert_allclose(again.predict(x[300:]), pred, rtol=1e-6)


def test_fits_are_reproducible_from_the_seed(rng):
    x, y = synthetic_xy(rng, n=200)
    a = STRATEGIES[StrategyName.MLP].fit(x, y, np.random.default_rng(7)).predict(x)
    b = STRATEGIES[StrategyName.MLP].fit(x, y, np.random.default_rng(7)).predict(x)
    np.testing.assert_array_equal(a, b)


def test_calibration_is_monotone_and_bounded(rng):
    raw = rng.random((500, 2))
    y = (rng.random((500, 2)) < raw**2).astype(np.float32)
    cal = fit_calibration(raw, y)
    grid = np.linspace(-0.5, 1.5, 50)
    out = cal.apply(np.stack([grid, grid], axis=1))
    assert np.all(np.diff(out, axis=0) >= -1e-12) and out.min() >= 0 and out.max() <= 1


def test_kfold_covers_every_row_once(rng):
    folds = kfold_indices(103, 5, rng)
    assert sorted(np.concatenate(folds).tolist()) == list(range(103))


def test_cross_validated_estimates_are_out_of_fold(rng):
    # Labels are pure noise: an in-sample kNN with k=1 would reproduce them; out-of-fold estimates cannot.
    x = rng.normal(size=(200, 4)).astype(np.float32)
    y = (rng.random((200, 3)) < 0.5).astype(np.float32)
    oof = cross_validated_quality(StrategyName.KNN, x, y, seed=0, folds=4, calibration_folds=2)
    assert abs(np.corrcoef(oof.ravel(), y.ravel())[0, 1]) < 0.2


def test_shrunk_ensemble_falls_back_to_the_prior_far_from_the_training_data(rng):
    from switchboard.router.strategies.shrunk import ShrunkEnsembleModel

    x, y = synthetic_xy(rng, n=300)
    x[:, -1] = 4.0  # every training prompt leans the same way ...
    model = ShrunkEnsembleModel.fit(x, y, np.random.default_rng(0), familiarity_quantile=0.1)
    far = x[:5].copy()
    far[:, -1] = -4.0  # ... and these lean the other way: nothing like them was seen
    estimate, weight = model.predict_with_weight(far)
    assert np.all(weight < 0.01)
    np.testing.assert_allclose(estimate, np.broadcast_to(y.mean(axis=0), estimate.shape), atol=0.01)
    # On the training data itself most rows keep the ensemble (the centre is the 10% quantile of familiarity).
    _, seen = model.predict_with_weight(x)
    assert np.mean(seen > 0.5) >= 0.85


def test_relative_targets_are_undone_to_each_experts_prior_and_keep_the_differences(rng):
    from switchboard.router.strategies.base import relative_targets

    y = (rng.random((50, 4)) < np.linspace(0.2, 0.8, 4)).astype(np.float32)
    targets, mean_difficulty = relative_targets(y)
    assert targets.min() >= 0 and targets.max() <= 1
    undone = 2 * targets - 1 + mean_difficulty
    np.testing.assert_allclose(undone.mean(axis=0), y.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(undone[:, 1:] - undone[:, :1], y[:, 1:] - y[:, :1], atol=1e-6)  # who beats whom


def test_relative_mlp_learns_which_expert_wins_under_varying_difficulty_and_round_trips(rng):
    from switchboard.router.strategies.neural import MlpModel

    # Difficulty (x1) moves every expert together; which expert wins depends on x0 alone.
    x = rng.normal(size=(1200, 4)).astype(np.float32)
    base = 1 / (1 + np.exp(-2 * x[:, 1]))
    p = np.stack([base * (0.5 + 0.5 * (x[:, 0] > 0)), base * (0.5 + 0.5 * (x[:, 0] < 0)), 0.7 * base], axis=1)
    y = (rng.random(p.shape) < p).astype(np.float32)
    model = MlpModel.fit(x[:900], y[:900], np.random.default_rng(0), relative=True)
    assert model.out_scale == 2.0
    pred = model.predict(x[900:])
    pos, neg = x[900:, 0] > 0.5, x[900:, 0] < -0.5
    assert pred[pos, 0].mean() > pred[pos, 1].mean() + 0.1 and pred[neg, 1].mean() > pred[neg, 0].mean() + 0.1
    np.testing.assert_allclose(model.predict(x[:900]).mean(axis=0), y[:900].mean(axis=0), atol=0.05)
    np.testing.assert_allclose(MlpModel.from_arrays(model.arrays()).predict(x[900:]), pred, rtol=1e-6)


def test_an_mlp_saved_before_relative_targets_loads_as_raw_scores(rng):
    from switchboard.router.strategies.neural import MlpModel

    x, y = synthetic_xy(rng, n=200)
    model = MlpModel.fit(x, y, np.random.default_rng(0))
    old = {k: v for k, v in model.arrays().items() if k not in ("out_scale", "out_offset")}
    np.testing.assert_array_equal(MlpModel.from_arrays(old).predict(x), model.predict(x))
