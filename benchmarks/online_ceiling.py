"""What online learning could reach at best: the issue-13 target under full information, per estimator.

    .venv/bin/python benchmarks/online_ceiling.py [--seeds 0,1,2] [--cost-weights 0,0.05,0.1] [--events 300]

The same leave-one-task-out routers and the same stream/test split as `benchmarks/online_learning.py`, but no
bandit: every expert's score on every stream prompt is known. Each estimator predicts every expert's quality on
the test part from the stream, the test part is routed on it (quality − λ·USD/Mtok, the router's rule), and the
target is checked as there (test quality ≥ the best single expert's, at no more than its price). Whatever an
estimator misses here, no exploration rule can win back: this is its ceiling.

Estimators:
- `oracle fixed`: the expert best on the *test part itself* under the λ objective. Whether any context-free rule
  (one expert per tenant and task) can meet the target at that λ: where the λ-best expert is a cheaper, worse
  one, the target asks for more quality than the objective does.
- `fixed`: the expert best on the stream (mean score − λ·price): a per-tenant, context-free correction.
- `router`: no learning.
- `kernel (defaults)`, `kernel (slope var 0.1)`, `kernel (slope 0)`: `OnlineLearner`'s posterior mean (the
  shipped correction), fed all nine experts' scores on the stream; with the defaults, with the slope's prior
  variance at 0.1 (the defaults before 2026-12-06), and with the slope held at 0 (`slope_prior_var` 0).
- contextual corrections on the router's features: per-expert ridge regression of the router's residual
  (score − prediction) around its stream mean, `ridge residual α`; ridge regression of the score itself around
  the stream mean (the router dropped), `ridge score α`; the mean score of the k most similar stream prompts
  blended with the router's prediction by count (k events against 2), `kNN k`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from online_learning import load_routing_data, loto_routers, split_task  # noqa: E402

from switchboard.config.schema import OnlineLearningConfig  # noqa: E402
from switchboard.online import OnlineLearner  # noqa: E402

Estimator = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]
"""(stream features, stream scores (every expert), the router's stream predictions, test features, the router's test
predictions) → predicted quality on the test part (n_test, m)."""


def unit_rows(a: np.ndarray) -> np.ndarray:
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def fixed(xs, ys, ps, xt, pt):
    return np.broadcast_to(ys.mean(axis=0), pt.shape)


def router(xs, ys, ps, xt, pt):
    return pt


def ridge_residual(alpha: float) -> Estimator:
    def estimate(xs, ys, ps, xt, pt):
        residual, centre = ys - ps, xs.mean(axis=0)
        xc = xs - centre
        w = np.linalg.solve(xc.T @ xc + alpha * np.eye(xs.shape[1]), xc.T @ (residual - residual.mean(axis=0)))
        return pt + residual.mean(axis=0) + (xt - centre) @ w
    return estimate


def ridge_score(alpha: float) -> Estimator:
    def estimate(xs, ys, ps, xt, pt):
        centre = xs.mean(axis=0)
        xc = xs - centre
        w = np.linalg.solve(xc.T @ xc + alpha * np.eye(xs.shape[1]), xc.T @ (ys - ys.mean(axis=0)))
        return ys.mean(axis=0) + (xt - centre) @ w
    return estimate


def knn(k: int, prior_events: float = 2.0) -> Estimator:
    def estimate(xs, ys, ps, xt, pt):
        nearest = np.argsort(-(unit_rows(xt) @ unit_rows(xs).T), axis=1)[:, :k]
        return (k * ys[nearest].mean(axis=1) + prior_events * pt) / (k + prior_events)
    return estimate


def kernel(overrides: dict) -> Estimator:
    def estimate(xs, ys, ps, xt, pt):
        num_experts = ys.shape[1]
        settings = OnlineLearningConfig(**{"max_events_per_tenant": len(xs) * num_experts, **overrides})
        learner = OnlineLearner(_Experts(num_experts), settings, np.random.default_rng(0))
        for i in range(len(xs)):
            for j in range(num_experts):
                learner.add_event("t", xs[i], j, ps[i], float(ys[i, j]))
        return np.stack([learner.posterior_mean("t", xt[i], pt[i]) for i in range(len(xt))])
    return estimate


class _Experts:
    """All `OnlineLearner.add_event` and `posterior_mean` need of a router: its experts' names."""

    def __init__(self, num_experts: int) -> None:
        self.experts = tuple(f"e{j}" for j in range(num_experts))


ESTIMATORS: dict[str, Estimator] = {
    "fixed": fixed,
    "router": router,
    "kernel (defaults)": kernel({}),
    "kernel (slope var 0.1)": kernel({"slope_prior_var": 0.1}),
    "kernel (slope 0)": kernel({"slope_prior_var": 0.0}),
    **{f"ridge residual {a:g}": ridge_residual(a) for a in (10.0, 100.0, 1000.0)},
    **{f"ridge score {a:g}": ridge_score(a) for a in (100.0, 1000.0)},
    **{f"kNN {k}": knn(k) for k in (30, 100)},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--cost-weights", default="0,0.05,0.1")
    args = parser.parse_args()
    x, y, price, tasks, experts, embedder = load_routing_data()
    wanted = sorted(set(tasks))
    routers, _ = loto_routers(x, y, tasks, wanted, price, experts, embedder)
    weights = [float(w) for w in args.cost_weights.split(",")]
    names = ["oracle fixed", *ESTIMATORS]
    met = {(n, w): 0 for n in names for w in weights}
    gap = {(n, w): [] for n in names for w in weights}
    num_runs = 0
    for task in wanted:
        rows = np.nonzero(tasks == task)[0]
        predicted = routers[task].predict_quality_from_features(x[rows]).astype(np.float64)
        at = {r: i for i, r in enumerate(rows)}
        for seed in [int(s) for s in args.seeds.split(",")]:
            stream, test = split_task(rows, seed, args.events)
            ps, pt = predicted[[at[r] for r in stream]], predicted[[at[r] for r in test]]
            single = y[test].mean(axis=0)
            best = int(np.argmax(single))
            num_runs += 1
            for name in names:
                q = np.broadcast_to(single, pt.shape) if name == "oracle fixed" else ESTIMATORS[name](x[stream], y[stream], ps, x[test], pt)
                for w in weights:
                    chosen = np.argmax(q - w * price, axis=1)
                    quality, usd = float(y[test, chosen].mean()), float(price[chosen].mean())
                    met[name, w] += quality >= single[best] - 1e-9 and usd <= price[best] + 1e-9
                    gap[name, w].append(quality - single[best])
    print(f"\nRuns meeting the target with every expert's score on the stream known ({num_runs} task×seed runs per λ;"
          " gap: mean test quality − the best single expert's)")
    print("| estimator | " + " | ".join(f"λ = {w:g}: met / gap" for w in weights) + " |")
    print("|---|" + "---|" * len(weights))
    for name in names:
        print(f"| {name} | " + " | ".join(f"{met[name, w]}/{num_runs}, {np.mean(gap[name, w]):+.4f}" for w in weights) + " |")


if __name__ == "__main__":
    main()
