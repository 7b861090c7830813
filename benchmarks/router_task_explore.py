"""Exploration, not a result: category first, then expert (Composition of Experts), on outer folds with raw
estimates (no calibration, no selection).

    .venv/bin/python benchmarks/router_task_explore.py [--seed 0] [--splits leave-one-task-out,task-balanced]

The packaged router learns each expert's score from the prompt. Composition of Experts (Jain et al., 2024)
routes in two stages: which category is this prompt, then which expert is best for that category. Here the
first stage is a classifier of the training rows' task labels, the second the task's mean score per expert in
the training part, so an estimate is P(task | prompt) @ M[task, expert]: 14 × 9 means estimated from ~400
prompts each, instead of per-prompt regression. On a prompt of a task the router never saw (LOTO) the
classifier spreads it over the seen tasks it resembles, as the kNN does. The grid grew in three steps, each
declared before its run, all on seeds 0–2 (so every choice made here is in-sample for these seeds; the check is
`router_quality.py` on seeds 3–5, docs/router.md):

1. `taskpost-mlp`: a softmax MLP (128 hidden, as the score MLP) on the router's features; `taskpost-knn`: the
   kNN's neighbour weights (k = 100, τ = 0.05) voting for their tasks; `-t2`: the posterior flattened, P^(1/2)
   renormalised (hedging between tasks); `ens3`: the packaged estimator (kNN + score MLP + format MLP) as the
   baseline, and the means `ens3+…` (the four members alike) and `ens3|…` (half each).
2. After step 1 showed the stage far ahead task-balanced and behind under LOTO: `gate:` — the stage blended in by
   the classifier's confidence c = max P(task | prompt), weight c (and c², `gate2:`); `-uniform`: the posterior
   moved to a uniform task prior (label shift, Saerens et al., 2002).
3. After step 2: weights c⁴ and c⁸ (`gate4:`, `gate8:`) and a ramp from c = 0.8 to 0.95 (`gate-ramp:`).

Outputs: benchmarks/results/router_task_explore_seed{0,1,2}.txt (the step-3 script, every row).
"""

from __future__ import annotations


import numpy as np

from _explore import screen_fit_by_task
from switchboard.router.strategies.knn import KnnModel
from switchboard.router.strategies.neural import MlpModel
from switchboard.router.strategies.task_stage import TaskStage


def knn_task_votes(train_x, labels, num_classes, k=100, tau=0.05):
    unit = train_x / np.maximum(np.linalg.norm(train_x, axis=1, keepdims=True), 1e-9)

    def predict(xs):
        q = xs / np.maximum(np.linalg.norm(xs, axis=1, keepdims=True), 1e-9)
        sims = q @ unit.T
        top = np.argpartition(-sims, k, axis=1)[:, :k]
        out = np.zeros((len(xs), num_classes), np.float32)
        for i in range(len(xs)):
            w = np.exp((sims[i, top[i]] - 1.0) / tau)
            np.add.at(out[i], labels[top[i]], w)
        return out / np.maximum(out.sum(1, keepdims=True), 1e-12)

    return predict


def flatten(prob, t):
    q = prob ** (1.0 / t)
    return q / q.sum(1, keepdims=True)


CONFIDENCE: dict[str, list] = {"taskpost-mlp": [], "taskpost-knn": []}


def fit_all(x, y, groups, rng):
    num_tasks = int(groups.max()) + 1
    knn = KnnModel.fit(x, y, rng, 100, 4.0, 0.05)
    mlp = MlpModel.fit(x, y, rng)
    fmt = MlpModel.fit(x[:, -7:], y, rng)
    stage = TaskStage.fit(x, y, groups, rng)  # the softmax MLP and the task × expert means of the served stage
    means = stage.task_means
    votes = knn_task_votes(x, groups, num_tasks)
    task_share = np.bincount(groups, minlength=num_tasks) / len(groups)

    def predict(xt):
        k, m, f = knn.predict(xt), mlp.predict(xt), fmt.predict(xt[:, -7:])
        ens3 = (k + m + f) / 3
        pm, pk = stage.posterior(xt), votes(xt)
        out = {"knn": k, "ens3": ens3}
        for name, prob in (("taskpost-mlp", pm), ("taskpost-knn", pk)):
            for t in (1.0, 2.0):
                label = name if t == 1.0 else f"{name}-t2"
                est = (flatten(prob, t) @ means).astype(np.float32)
                out[label] = est
                out[f"ens3+{label}"] = (k + m + f + est) / 4
                out[f"ens3|{label}"] = (ens3 + est) / 2
            confidence = prob.max(1, keepdims=True)
            CONFIDENCE[name].append(confidence.ravel())
            est = (prob @ means).astype(np.float32)
            out[f"gate:{name}"] = confidence * est + (1 - confidence) * ens3
            for power in (2, 4, 8):
                w = confidence ** power
                out[f"gate{power}:{name}"] = w * est + (1 - w) * ens3
            w = np.clip((confidence - 0.8) / 0.15, 0.0, 1.0)
            out[f"gate-ramp:{name}"] = w * est + (1 - w) * ens3
            uniform = prob / task_share
            out[f"{name}-uniform"] = ((uniform / uniform.sum(1, keepdims=True)) @ means).astype(np.float32)
        return out

    return predict


def main() -> None:
    def confidence_quantiles(kind) -> None:
        for name, values in CONFIDENCE.items():
            print(kind.value, name, "max posterior quantiles 5/25/50/75%",
                  np.round(np.quantile(np.concatenate(values), [0.05, 0.25, 0.5, 0.75]), 3))
            values.clear()

    screen_fit_by_task(__doc__.splitlines()[0], fit_all, confidence_quantiles)


if __name__ == "__main__":
    main()
