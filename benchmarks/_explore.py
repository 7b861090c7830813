"""The outer-fold screen shared by the router explorations (`router_dro_explore.py`, `router_task_explore.py`):
the shipped data's serving-path features, raw estimates on the outer folds of `router_quality.py` (no calibration,
no selection), and one line per estimator — best quality over the λ grid, AUC, quality and mean USD/Mtok at the `balanced` preset
(added 2026-12-07 05:16 UTC; earlier outputs lack it), the mean USD/Mtok of the cheapest grid point reaching the
issue's 0.563 and quality and USD at the `cost` preset (added 2026-12-07 07:04 UTC), and under LOTO the tasks more than 0.02 below their best
single expert at λ = 0 and at `balanced`. An exploration, never a result."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
from threadpoolctl import threadpool_limits

from switchboard.router.cache import DEFAULT_CACHE_DIR
from switchboard.router.curves import auc, cost_to_reach, sweep
from switchboard.router.data import load_shipped
from switchboard.router.embed import StaticEmbedder
from switchboard.router.evaluate import per_task_table
from switchboard.router.features import cheap_feature_matrix
from switchboard.router.objective import OBJECTIVE_COST_WEIGHTS, Objective
from switchboard.router.persist import builtin_static_dir
from switchboard.router.pipeline import embed_cached
from switchboard.router.protocol import SplitKind, make_folds, row_weights
from switchboard.router.selection import Caution, Challengers
from switchboard.router.strategies.knn import KnnModel
from switchboard.router.strategies.neural import MlpModel
from switchboard.router.strategies.task_stage import TaskStage

FitFold = Callable[[np.ndarray, np.random.Generator], Callable[[np.ndarray], dict[str, np.ndarray | tuple]]]
"""(training row indices, rng) → predict(test row indices) → estimator name → (n_test, m) raw estimates, or a
tuple (estimates, prior (n_test, m), margin (n_test, 1)[, challengers]) to select under the conservative rule
(`selection.Caution`; `Challengers.CHEAPER` unless a fourth item names another scope)."""

TARGET_QUALITY = 0.563  # issue 13's reference: the best single expert's quality on the owners' held-out set


@dataclass(frozen=True)
class Shipped:
    texts: list[str]
    tasks: list[str]
    y: np.ndarray
    price: np.ndarray
    experts: list[str]
    x: np.ndarray  # the serving path's features: static-table embedding + the 7 cheap features (last columns)


def parse_args(description: str) -> argparse.Namespace:
    """The explorations' command line: `--seed` (the outer folds' and fits' seed) and `--splits`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--splits", default="leave-one-task-out,task-balanced")
    return parser.parse_args()


def shipped_features() -> Shipped:
    shipped = load_shipped()
    embedded = embed_cached(StaticEmbedder(builtin_static_dir()), shipped.texts, DEFAULT_CACHE_DIR.expanduser())
    x = np.concatenate([embedded, cheap_feature_matrix(shipped.texts)], axis=1).astype(np.float32)
    return Shipped(shipped.texts, shipped.tasks, shipped.scores, shipped.usd_per_mtok, shipped.experts, x)


def screen(data: Shipped, splits: str, seed: int, fit_fold: FitFold,
           after_folds: Callable[[SplitKind], None] = lambda _: None) -> None:
    """For each split of `splits` (comma-separated `SplitKind` values): every estimator's out-of-fold estimates,
    one printed line each; `after_folds(kind)` runs once the folds are done, before the lines."""
    balanced = OBJECTIVE_COST_WEIGHTS[Objective.BALANCED]
    cost = OBJECTIVE_COST_WEIGHTS[Objective.COST]
    for kind in (SplitKind(s) for s in splits.split(",")):
        started, cpu_started = time.perf_counter(), time.process_time()
        folds = make_folds(kind, data.texts, data.tasks, 5, np.random.default_rng([seed, 0]))
        rng = np.random.default_rng([seed, 1])
        predictions: dict[str, np.ndarray] = {}
        cautions: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        scopes: dict[str, Challengers] = {}
        with threadpool_limits(limits=1):
            for fold in folds:
                predict = fit_fold(fold.train, rng)
                for name, pred in predict(fold.test).items():
                    if isinstance(pred, tuple):
                        pred, prior, margin, *scope = pred
                        scopes[name] = scope[0] if scope else Challengers.CHEAPER
                        stored = cautions.setdefault(name, (np.zeros(data.y.shape), np.zeros((len(data.y), 1))))
                        stored[0][fold.test], stored[1][fold.test] = prior, margin
                    predictions.setdefault(name, np.zeros_like(data.y, dtype=np.float32))[fold.test] = pred
        after_folds(kind)
        weights = row_weights(kind, data.tasks, len(data.y))
        for name, pred in predictions.items():
            caution = Caution(*cautions[name], challengers=scopes[name]) if name in cautions else None
            points = sweep(pred, data.y, data.price, data.experts, weights=weights, caution=caution)
            preset, cheap = sweep(pred, data.y, data.price, data.experts, cost_weights=(balanced, cost), weights=weights,
                                  caution=caution)
            reach = cost_to_reach(points, TARGET_QUALITY)
            line = (f"{kind.value:20s} {name:26s} best {max(p.quality for p in points):.4f} "
                    f"auc {auc(points, float(data.price.min()), float(data.price.max())):.4f} "
                    f"balanced {preset.quality:.4f} ${preset.usd_per_mtok:.3f} "
                    f"$@{TARGET_QUALITY} {'none' if reach is None else f'{reach:.3f}'} "
                    f"cost {cheap.quality:.4f} ${cheap.usd_per_mtok:.3f}")
            if kind is SplitKind.LEAVE_ONE_TASK_OUT:
                below = [sum(r.gap < -0.02 for r in per_task_table(pred, data.y, data.price, data.experts, data.tasks, lam,
                                                                   caution=caution))
                         for lam in (0.0, balanced)]
                line += f" tasks below at λ=0 {below[0]}, at balanced {below[1]}"
            print(line, flush=True)
        print(f"{kind.value}: {time.perf_counter() - started:.0f} s wall, {time.process_time() - cpu_started:.0f} s CPU, "
              f"load average {open('/proc/loadavg').read().split()[:3]}", flush=True)


@dataclass(frozen=True)
class PackagedEstimates:
    """The packaged estimator's parts on some rows: the three-member mean, the task stage's estimate and confidence
    c, the stage's weight c⁴, and their blend (what `ensemble-format3-task` predicts, raw)."""

    ens3: np.ndarray
    staged: np.ndarray
    confidence: np.ndarray
    weight: np.ndarray  # (n, 1)
    task4: np.ndarray
    spread: np.ndarray  # |kNN − MLP|, the two members' disagreement


def fit_packaged(x: np.ndarray, y: np.ndarray, groups: np.ndarray, rng: np.random.Generator
                 ) -> Callable[[np.ndarray], PackagedEstimates]:
    """The packaged estimator's members fitted on (x, y) — kNN (k = 100, τ = 0.05), MLP, format MLP, task stage, in
    that order from `rng`, as the explorations have always drawn them — and `predict(x_test)`."""
    knn = KnnModel.fit(x, y, rng, 100, 4.0, 0.05)
    mlp = MlpModel.fit(x, y, rng)
    fmt = MlpModel.fit(x[:, -7:], y, rng)
    stage = TaskStage.fit(x, y, groups, rng)

    def predict(xt: np.ndarray) -> PackagedEstimates:
        k, m = knn.predict(xt), mlp.predict(xt)
        ens3 = (k + m + fmt.predict(xt[:, -7:])) / 3
        staged, confidence = stage.predict(xt)
        w = (confidence ** 4)[:, None]
        return PackagedEstimates(ens3, staged, confidence, w, w * staged + (1 - w) * ens3, np.abs(k - m))

    return predict


def screen_fit_by_task(description: str, fit_all: Callable,
                       after_folds: Callable[[SplitKind], None] = lambda _: None) -> None:
    """The whole command line of an exploration whose fits take the rows' task ids: `--seed` and `--splits`
    parsed, the shipped features loaded, and `screen` run with `fit_all(x, y, task ids, rng)` → `predict(x_test)`
    → estimator name → estimates."""
    from switchboard.router.strategies.robust import task_ids

    args = parse_args(description)
    data = shipped_features()

    def fit_fold(train: np.ndarray, rng: np.random.Generator):
        predict = fit_all(data.x[train], data.y[train], task_ids([data.tasks[i] for i in train]), rng)
        return lambda test: predict(data.x[test])

    screen(data, args.splits, args.seed, fit_fold, after_folds)
