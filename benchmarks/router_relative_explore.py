"""Exploration, not a result: relative targets and matrix factorisation on outer folds, raw estimates.

    .venv/bin/python benchmarks/router_relative_explore.py [--seed 0] [--round 1|2|3] [--exact-duplicates-only]

Each estimator is fitted on every outer fold's training part of the leave-one-task-out and task-balanced splits
and predicts its test part, with no calibration and no selection: a cheap look at which ideas deserve the nested
protocol of `router_quality.py` (docs/router.md, "Relative targets, matrix factorisation and near-duplicates").
Round 1: kNN, MLP, MF, each on raw and on relative targets (`strategies.base.relative_targets`), and their
means. Round 2: relative targets under other losses (squared error with a linear output, listwise softmax) and
longer training. Round 3: pairwise preferences (which expert beats which, Bradley–Terry as in RouteLLM's
preference-trained routers). The models of a fold share one random stream, so a row moves a little with the others in its
round. `--exact-duplicates-only` folds as before near-duplicates were grouped (how the docs' numbers were made).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

from switchboard.router.cache import DEFAULT_CACHE_DIR
from switchboard.router.curves import auc, sweep
from switchboard.router.data import load_shipped
from switchboard.router.embed import StaticEmbedder
from switchboard.router.evaluate import per_task_table
from switchboard.router.features import cheap_feature_matrix
from switchboard.router.objective import OBJECTIVE_COST_WEIGHTS, Objective
from switchboard.router.persist import builtin_static_dir
from switchboard.router.pipeline import embed_cached
from switchboard.router.protocol import SplitKind, make_folds, row_weights
from switchboard.router.strategies.base import Adam, minibatches, relative_targets
from switchboard.router.strategies.knn import KnnModel
from switchboard.router.strategies.mf import MfModel
from switchboard.router.strategies.neural import LinearModel, MlpModel


def _undo(model, mean_difficulty: float):
    return lambda x: 2 * model.predict(x) - 1 + mean_difficulty


def round_one(x, y, rng):
    knn = KnnModel.fit(x, y, rng, 100, 4.0, 0.05)
    mlp = MlpModel.fit(x, y, rng)
    targets, mean_difficulty = relative_targets(y)
    mlp_rel = _undo(MlpModel.fit(x, targets, rng), mean_difficulty)
    mf = MfModel.fit(x, y, rng)
    mf_rel = _undo(MfModel.fit(x, targets, rng), mean_difficulty)
    linear_rel = _undo(LinearModel.fit(x, targets, rng), mean_difficulty)

    def predict(xs):
        k, m, mr, fr = knn.predict(xs), mlp.predict(xs), mlp_rel(xs), mf_rel(xs)
        return {"knn": k, "mlp": m, "mlp-rel": mr, "ensemble": (k + m) / 2, "ensemble-rel": (k + mr) / 2,
                "mf": mf.predict(xs), "mf-rel": fr, "linear-rel": linear_rel(xs), "knn+mf-rel": (k + fr) / 2,
                "knn+mlp-rel+mf-rel": (k + mr + fr) / 3}
    return predict


def _train_head(x, targets, rng, loss: str, hidden=128, epochs=40, lr=1e-3, weight_decay=1e-4):
    """A one-hidden-layer net with a linear output under squared error ("mse") or pairwise logistic loss on
    score differences weighted by how much one expert beat the other ("pair"), or a softmax over experts under
    cross-entropy against a distribution ("list"); returns its prediction function (outputs or probabilities)."""
    d, m = x.shape[1], targets.shape[1]
    p = {"w1": rng.normal(0, np.sqrt(2 / d), (d, hidden)).astype(np.float32), "b1": np.zeros(hidden, np.float32),
         "w2": rng.normal(0, np.sqrt(1 / hidden), (hidden, m)).astype(np.float32),
         "b2": (targets.mean(0) if loss == "mse" else np.zeros(m)).astype(np.float32)}

    def forward(xs):
        h = np.maximum(xs @ p["w1"] + p["b1"], 0)
        z = h @ p["w2"] + p["b2"]
        if loss in ("mse", "pair"):
            return h, z
        e = np.exp(z - z.max(1, keepdims=True))
        return h, e / e.sum(1, keepdims=True)

    opt = Adam(p, lr, weight_decay)
    for _ in range(epochs):
        for idx in minibatches(len(x), 128, rng):
            h, out = forward(x[idx])
            if loss == "pair":
                margin = np.maximum(targets[idx][:, :, None] - targets[idx][:, None, :], 0)  # j beat k by this much
                g = -margin / (1 + np.exp(np.clip(out[:, :, None] - out[:, None, :], -30, 30)))
                dz = (g.sum(2) - g.sum(1)) / len(idx)
            else:
                dz = (out - targets[idx]) / len(idx)  # the gradient of both losses at the logits
            dh = (dz @ p["w2"].T) * (h > 0)
            opt.step({"w2": h.T @ dz, "b2": dz.sum(0), "w1": x[idx].T @ dh, "b1": dh.sum(0)})
    return lambda xs: forward(xs)[1]


def round_two(x, y, rng):
    knn = KnnModel.fit(x, y, rng, 100, 4.0, 0.05)
    mlp = MlpModel.fit(x, y, rng)
    row_mean = y.mean(1, keepdims=True)
    mean_difficulty, centred = float(row_mean.mean()), y - row_mean
    mse_rel = _train_head(x, centred, rng, "mse")
    mse_raw = _train_head(x, y, rng, "mse")
    total = y.sum(1, keepdims=True)
    listwise = _train_head(x, np.where(total > 0, y / np.maximum(total, 1e-9), 1 / y.shape[1]), rng, "list")
    spread = listwise(x) - 1 / y.shape[1]
    scale = float((spread * centred).sum() / (spread * spread).sum())  # least squares onto the centred scores
    long_rel = _undo(MlpModel.fit(x, relative_targets(y)[0], rng, epochs=80, lr=2e-3), mean_difficulty)

    def predict(xs):
        k, m = knn.predict(xs), mlp.predict(xs)
        mr, raw, lst = mse_rel(xs) + mean_difficulty, mse_raw(xs), scale * (listwise(xs) - 1 / y.shape[1]) + mean_difficulty
        lr_ = long_rel(xs)
        return {"ensemble": (k + m) / 2, "mlp-mse-rel": mr, "ens-mse-rel": (k + mr) / 2, "mlp-mse-raw": raw,
                "ens-mse-raw": (k + raw) / 2, "mlp-listnet": lst, "ens-listnet": (k + lst) / 2,
                "mlp-rel-80ep": lr_, "ens-rel-80ep": (k + lr_) / 2, "ens3-mlp+mse-rel": (k + m + mr) / 3}
    return predict


def _onto_centred(spread_of, x, centred):
    """`spread_of(x)` centred per row, scaled by least squares onto the centred scores (a quality-scale estimate)."""
    out = spread_of(x)
    spread = out - out.mean(1, keepdims=True)
    return float((spread * centred).sum() / (spread * spread).sum())


def round_three(x, y, rng):
    knn = KnnModel.fit(x, y, rng, 100, 4.0, 0.05)
    mlp = MlpModel.fit(x, y, rng)
    row_mean = y.mean(1, keepdims=True)
    mean_difficulty = float(row_mean.mean())
    pairwise = _train_head(x, y, rng, "pair")
    scale = _onto_centred(pairwise, x, y - row_mean)

    def predict(xs):
        k, m, z = knn.predict(xs), mlp.predict(xs), pairwise(xs)
        pw = scale * (z - z.mean(1, keepdims=True)) + mean_difficulty
        return {"ensemble": (k + m) / 2, "mlp-pairwise": pw, "ens-pairwise": (k + pw) / 2}
    return predict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--round", type=int, choices=(1, 2, 3), default=1)
    parser.add_argument("--exact-duplicates-only", action="store_true")
    args = parser.parse_args()
    shipped = load_shipped()
    texts, tasks, y, price, experts = shipped.texts, shipped.tasks, shipped.scores, shipped.usd_per_mtok, shipped.experts
    embedded = embed_cached(StaticEmbedder(builtin_static_dir()), texts, DEFAULT_CACHE_DIR.expanduser())
    x = np.concatenate([embedded, cheap_feature_matrix(texts)], axis=1).astype(np.float32)
    fit = {1: round_one, 2: round_two, 3: round_three}[args.round]
    balanced = OBJECTIVE_COST_WEIGHTS[Objective.BALANCED]
    for kind in (SplitKind.LEAVE_ONE_TASK_OUT, SplitKind.TASK_BALANCED):
        started = time.perf_counter()
        folds = make_folds(kind, texts, tasks, 5, np.random.default_rng([args.seed, 0]),
                           near_duplicates=not args.exact_duplicates_only)
        rng = np.random.default_rng([args.seed, 1])
        predictions: dict[str, np.ndarray] = {}
        with threadpool_limits(limits=1):
            for fold in folds:
                for name, pred in fit(x[fold.train], y[fold.train], rng)(x[fold.test]).items():
                    predictions.setdefault(name, np.zeros_like(y, dtype=np.float32))[fold.test] = pred
        weights = row_weights(kind, tasks, len(y))
        for name, pred in predictions.items():
            points = sweep(pred, y, price, experts, weights=weights)
            line = (f"{kind.value:20s} {name:20s} best {max(p.quality for p in points):.4f} "
                    f"auc {auc(points, float(price.min()), float(price.max())):.4f}")
            if kind is SplitKind.LEAVE_ONE_TASK_OUT:
                below = [sum(r.gap < -0.02 for r in per_task_table(pred, y, price, experts, tasks, lam)) for lam in (0.0, balanced)]
                line += f" tasks below at λ=0 {below[0]}, at balanced {below[1]}"
            print(line, flush=True)
        print(f"{kind.value}: {time.perf_counter() - started:.0f} s, load average {open('/proc/loadavg').read().split()[:3]}")


if __name__ == "__main__":
    main()
