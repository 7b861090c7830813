"""Exploration, not a result: calibrate the ensemble for unseen tasks, on inner folds that hold tasks out.

    .venv/bin/python benchmarks/router_unseen_calibration_explore.py [--seed 0] [--splits leave-one-task-out,task-balanced]

Under leave-one-task-out (LOTO) the packaged estimator over-predicts the cheap experts that fail whole tasks on
format: on seed 0's outer folds, the rows it sends to qwen2.5-7b at λ = 0.1 are predicted 0.69 and score 0.47 (the
same rows score 0.66 on nemotron-51b); qwen2.5-7b scores 0.17 on MMLU and 0.86 on commonsense QA, and an unseen
task's neighbours are the seen tasks of its format. The packaged router's calibration (isotonic, chosen on inner
folds) is fitted on all inner predictions alike and is almost never chosen. Here the calibration is fitted on
*task-held-out* inner out-of-fold predictions only — what each member's estimate is worth on a task it never saw —
and applied to the ensemble's share of the blend, the share that the task stage's confidence gives to prompts
unlike any trained task: c⁴ · stage + (1 − c⁴) · iso(ens3). Nothing is chosen on outer rows. Unlike the stacking
exploration (`router_stack_explore.py`: one logistic regression per expert on pooled in-task and out-of-task inner
predictions, which lost the per-prompt ranking), the map is monotone per expert, so it keeps each expert's ranking
of prompts and changes only how experts compare.

Grid, declared before the first run (2026-12-07 07:07 UTC), seeds 0–2 (in-sample for them; LOTO in-sample at every
seed: its outer folds are one per task), inner folds: 4 of whole tasks of the outer training part:

- `task4`, `task4+g1κ0.32`: the packaged estimator, plain and under the packaged rule (the references);
- `iso-ens`, `iso-ens+g1κ0.32`: c⁴ · stage + (1 − c⁴) · iso(ens3), iso per expert on inner task-held-out ens3;
- `iso-task4`, `iso-task4+g1κ0.32`: c⁴ · task4 + (1 − c⁴) · iso(task4), iso on inner task-held-out task4.

Choice rule, declared with the grid, against `task4+g1κ0.32` (means of the 3 seeds): a variant passes if its LOTO
best quality is at least 0.002 higher and its task-balanced best quality no more than 0.0005 lower, or if both best
qualities are within 0.0005 and its LOTO USD/Mtok to reach 0.563 is at least 20% lower. Of those passing, the one
with the highest LOTO best quality goes to a check with the full nested protocol on fresh seeds (12–14); none
passing, nothing changes.

Outputs: benchmarks/results/router_unseen_calibration_explore_seed{0,1,2}.txt.
"""

from __future__ import annotations

import numpy as np

from _explore import fit_packaged, screen_fit_by_task
from switchboard.router.calibration import fit_calibration

NUM_TASK_FOLDS = 4


def _unseen_oof(x, y, groups, rng):
    """Inner out-of-fold (ens3, task4, y) on folds of whole tasks: each row predicted by members that never saw its
    task (task ids made dense: an inner training part need not hold every task)."""
    tasks = np.unique(groups)
    task_fold = rng.permutation(len(tasks)) % NUM_TASK_FOLDS
    parts = []
    for f in range(NUM_TASK_FOLDS):
        test = np.isin(groups, tasks[task_fold == f])
        p = fit_packaged(x[~test], y[~test], np.unique(groups[~test], return_inverse=True)[1], rng)(x[test])
        parts.append((p.ens3, p.task4, y[test]))
    return [np.concatenate(p) for p in zip(*parts)]


def fit_all(x, y, groups, rng):
    ens3_i, task4_i, y_i = _unseen_oof(x, y, groups, rng)
    iso_ens, iso_task4 = fit_calibration(ens3_i, y_i), fit_calibration(task4_i, y_i)
    full = fit_packaged(x, y, groups, rng)
    prior_means = y.mean(axis=0)

    def predict(xt):
        p = full(xt)
        w = p.weight
        iso_e = w * p.staged + (1 - w) * iso_ens.apply(p.ens3)
        iso_t = w * p.task4 + (1 - w) * iso_task4.apply(p.task4)
        prior = np.broadcast_to(prior_means, p.task4.shape)
        margin = 0.32 * (1 - p.confidence[:, None])
        return {"task4": p.task4, "task4+g1κ0.32": (p.task4, prior, margin),
                "iso-ens": iso_e, "iso-ens+g1κ0.32": (iso_e, prior, margin),
                "iso-task4": iso_t, "iso-task4+g1κ0.32": (iso_t, prior, margin)}

    return predict


def main() -> None:
    screen_fit_by_task(__doc__.splitlines()[0], fit_all)


if __name__ == "__main__":
    main()
