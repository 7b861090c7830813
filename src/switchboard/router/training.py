"""Fitting and cross-validating strategies on feature rows; every split comes from a seeded generator.

`fit_calibrated` trains a strategy on all rows and calibrates it on out-of-fold estimates from an inner split.
`residual_correlation` is the correlation between experts of a router's errors, shipped for online learning's
correlated prior. `cross_validated_quality` gives the outer out-of-fold calibrated estimates for every row, the input of all the
CV numbers we report (no row is ever scored by a model that saw its answer).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from switchboard.router.calibration import Calibration, fit_calibration
from switchboard.router.strategies import STRATEGIES, QualityModel, StrategyName

Progress = Callable[[int], None]
"""Called with the number of model fits just completed."""


def kfold_indices(num_rows: int, num_folds: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Disjoint validation index sets covering every row once."""
    if not 2 <= num_folds <= num_rows:
        raise ValueError(f"need 2 ≤ folds ≤ rows, got folds={num_folds}, rows={num_rows}")
    return np.array_split(rng.permutation(num_rows), num_folds)


def residual_correlation(predicted: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(m, m) the correlation between experts of the router's per-prompt residuals (score − prediction) on
    `scores` (n, m) — computed at `router train` time and shipped with the router, it is the correlated prior's
    shape (`router.online.expert_correlation`). An expert whose residual does not vary correlates with nothing."""
    residual = np.asarray(scores, np.float64) - np.asarray(predicted, np.float64)
    residual = residual - residual.mean(axis=0)
    sd = np.sqrt((residual ** 2).mean(axis=0))
    safe = np.where(sd > 0, sd, 1.0)
    corr = (residual.T @ residual) / len(residual) / np.outer(safe, safe)
    corr[sd == 0, :] = corr[:, sd == 0] = 0.0
    np.fill_diagonal(corr, 1.0)
    return np.clip(corr, -1.0, 1.0)


def fits_per_calibrated_model(calibration_folds: int) -> int:
    return calibration_folds + 1


def fit_calibrated(
    strategy: StrategyName,
    x: np.ndarray,
    y: np.ndarray,
    rng: np.random.Generator,
    calibration_folds: int = 3,
    progress: Progress = lambda _: None,
    params: Mapping[str, Any] | None = None,
    groups: np.ndarray | None = None,
) -> tuple[QualityModel, Calibration]:
    """`STRATEGIES[strategy].fit(x, y, rng, **params)` on all rows, with isotonic calibration fitted on its
    out-of-fold estimates from `calibration_folds` random folds. `groups` (a task id per row), when given, goes
    to every fit as `groups=` (the rows' own ids on each fold)."""
    cls, params = STRATEGIES[strategy], dict(params or {})

    def rows(idx):
        return {} if groups is None else {"groups": np.asarray(groups)[idx]}

    raw = np.zeros_like(y, dtype=np.float32)
    with _single_threaded():
        for val in kfold_indices(len(x), calibration_folds, rng):
            train = np.setdiff1d(np.arange(len(x)), val)
            raw[val] = cls.fit(x[train], y[train], rng, **params, **rows(train)).predict(x[val])
            progress(1)
        calibration = fit_calibration(raw, y)
        model = cls.fit(x, y, rng, **params, **rows(slice(None)))
    progress(1)
    return model, calibration


def fit_calibrated_like(recipe: QualityModel, x: np.ndarray, y: np.ndarray, rng: np.random.Generator,
                        calibration_folds: int = 3, tasks=None) -> tuple[QualityModel, Calibration]:
    """`fit_calibrated` of the recipe a trained model carries — its strategy and fit parameters
    (`QualityModel.fit_params`) — on (x, y): how the simulator's cross-fitted routers and the benchmarks retrain
    "the packaged router" on other rows (the strategy alone would drop, e.g., the ensemble's format member).
    `tasks`: each row's task label, which a recipe with a task stage (`uses_tasks`) trains on; without a label on
    every row (or with one task only) it trains as `router train` does on such rows, without the stage."""
    groups = None
    if recipe.uses_tasks and tasks is not None and all(tasks):
        from switchboard.router.strategies.robust import task_ids

        groups = task_ids(tasks)
    # Without groups the recipe's own fit leaves the stage out (`EnsembleModel.fit`): no separate recipe needed.
    return fit_calibrated(recipe.name, x, y, rng, calibration_folds, params=recipe.fit_params(), groups=groups)


def _single_threaded():
    # The fits multiply small matrices: one BLAS thread per fit is ~10x faster than a pool fighting
    # over two shared cores (measured), and leaves the other core to the gateway.
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def cross_validated_quality(
    strategy: StrategyName,
    x: np.ndarray,
    y: np.ndarray,
    seed: int,
    folds: int = 5,
    calibration_folds: int = 3,
    progress: Progress = lambda _: None,
) -> np.ndarray:
    """(n, m) calibrated out-of-fold estimates. The outer split depends only on `seed`, so every strategy
    is scored on the same folds."""
    outer = kfold_indices(len(x), folds, np.random.default_rng(seed))
    rng = np.random.default_rng([seed, 1])
    out = np.zeros_like(y, dtype=np.float32)
    for val in outer:
        train = np.setdiff1d(np.arange(len(x)), val)
        model, calibration = fit_calibrated(strategy, x[train], y[train], rng, calibration_folds, progress)
        out[val] = calibration.apply(model.predict(x[val]))
    return out
