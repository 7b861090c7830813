"""Exploration, not a result: learn how far to trust each estimate on *inner* folds (stacking), instead of the
hand-chosen gate (the task stage blended in by c⁴) and margin (κ · (1 − c), κ = 0.32) that the packaged router
took from outer leave-one-task-out (LOTO) folds.

    .venv/bin/python benchmarks/router_stack_explore.py [--seed 0] [--splits leave-one-task-out,task-balanced]

Stacked generalisation (Wolpert 1992): a second-level model fitted on out-of-fold predictions of the first. Here
the out-of-fold predictions come in two regimes, both inside each outer fold's training part only: *out of task*
(4 inner folds of whole tasks: a prompt predicted by members that never saw its task — the shift of LOTO) and
*in task* (3 random inner folds — the seen-task mix). Pooled, with the task stage's confidence c as an input, the
second level learns when each member can be trusted; no outer test row informs it. Per outer fold: 1 + 4 + 3 fits
of the packaged members (kNN, MLP, format MLP, task stage).

Grid, declared before the first run (2026-12-07 05:10 UTC), seeds 0–2 (in-sample for them, and LOTO in-sample at
every seed: its outer folds are one per task):

- `task4`, `task4+g1κ0.32`: the packaged estimator, plain and under the packaged gated rule (the references);
- `gate`: w(c) · stage + (1 − w(c)) · ens3 with w(c) = sigmoid(α + β·c), (α, β) by least squares over the
  pooled inner predictions (grid α ∈ −12..4, β ∈ 0..20);
- `stack`: per expert, a logistic regression (scikit-learn, C = 1, fractional scores as weighted 0/1 labels) of
  the score on logit(ens3), logit(stage), c, c·logit(ens3), c·logit(stage), and the member spread |kNN − MLP|;
- each of `gate` and `stack` also under the gated rule at κ = 0.16 and 0.32 (`+g1κX`).

Outputs: benchmarks/results/router_stack_explore_seed{0,1,2}.txt.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression

from _explore import fit_packaged, screen_fit_by_task

NUM_TASK_FOLDS = 4
NUM_ROW_FOLDS = 3
KAPPAS = (0.16, 0.32)


def _members(x, y, groups, rng):
    """The packaged members fitted on (x, y) (`_explore.fit_packaged`), with task ids made dense: an inner fold's
    training rows need not hold every task."""
    return fit_packaged(x, y, np.unique(groups, return_inverse=True)[1], rng)


def _inner(x, y, groups, rng):
    """Pooled inner out-of-fold member predictions, both regimes: (ens3, stage, c, spread, y) stacked."""
    parts = []
    tasks = np.unique(groups)
    task_fold = rng.permutation(len(tasks)) % NUM_TASK_FOLDS
    row_fold = rng.permutation(len(y)) % NUM_ROW_FOLDS
    folds = [np.isin(groups, tasks[task_fold == f]) for f in range(NUM_TASK_FOLDS)]
    folds += [row_fold == f for f in range(NUM_ROW_FOLDS)]
    for test in folds:
        p = _members(x[~test], y[~test], groups[~test], rng)(x[test])
        parts.append((p.ens3, p.staged, p.confidence, p.spread, y[test]))
    return [np.concatenate(p) for p in zip(*parts)]


def _logit(p):
    p = np.clip(p, 1e-3, 1 - 1e-3)
    return np.log(p / (1 - p))


def _stack_features(ens3, stage, c, spread, j):
    le, ls, cc = _logit(ens3[:, j]), _logit(stage[:, j]), c
    return np.column_stack([le, ls, cc, cc * le, cc * ls, spread[:, j]])


def _fit_gate(ens3, stage, c, y):
    best = None
    for alpha in np.arange(-12, 4.01, 0.5):
        for beta in np.arange(0, 20.01, 1.0):
            w = (1 / (1 + np.exp(-(alpha + beta * c))))[:, None]
            err = float(np.mean((w * stage + (1 - w) * ens3 - y) ** 2))
            if best is None or err < best[0]:
                best = (err, alpha, beta)
    return best[1], best[2]


def _fit_stack(ens3, stage, c, spread, y):
    models = []
    for j in range(y.shape[1]):
        f = _stack_features(ens3, stage, c, spread, j)
        xx = np.concatenate([f, f])
        label = np.concatenate([np.ones(len(f)), np.zeros(len(f))])
        weight = np.concatenate([y[:, j], 1 - y[:, j]])
        keep = weight > 0
        models.append(LogisticRegression(C=1.0, max_iter=1000).fit(xx[keep], label[keep], sample_weight=weight[keep]))
    return models


def fit_all(x, y, groups, rng):
    ens3_i, stage_i, c_i, spread_i, y_i = _inner(x, y, groups, rng)
    alpha, beta = _fit_gate(ens3_i, stage_i, c_i, y_i)
    stackers = _fit_stack(ens3_i, stage_i, c_i, spread_i, y_i)
    print(f"  fold: gate α {alpha:g} β {beta:g}", flush=True)
    full = _members(x, y, groups, rng)
    prior_means = y.mean(axis=0)

    def predict(xt):
        p = full(xt)
        ens3, staged, c, spread, task4 = p.ens3, p.staged, p.confidence, p.spread, p.task4
        wg = (1 / (1 + np.exp(-(alpha + beta * c))))[:, None]
        gate = wg * staged + (1 - wg) * ens3
        stack = np.column_stack([m.predict_proba(_stack_features(ens3, staged, c, spread, j))[:, 1]
                                 for j, m in enumerate(stackers)]).astype(np.float32)
        prior = np.broadcast_to(prior_means, task4.shape)
        margin = lambda kappa: kappa * (1 - c[:, None])  # noqa: E731
        out = {"task4": task4, "task4+g1κ0.32": (task4, prior, margin(0.32)), "gate": gate, "stack": stack}
        for kappa in KAPPAS:
            out[f"gate+g1κ{kappa:g}"] = (gate, prior, margin(kappa))
            out[f"stack+g1κ{kappa:g}"] = (stack, prior, margin(kappa))
        return out

    return predict


def main() -> None:
    screen_fit_by_task(__doc__.splitlines()[0], fit_all)


if __name__ == "__main__":
    main()
