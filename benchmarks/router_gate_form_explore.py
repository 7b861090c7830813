"""Exploration, not a result: a margin that bites less on seen-task prompts, so the `balanced` preset stops paying
for caution where the task stage knows the task.

    .venv/bin/python benchmarks/router_gate_form_explore.py [--seed 0] [--splits leave-one-task-out,task-balanced]

The packaged router's conservative rule asks a cheaper expert than the prior choice to gain κ · (1 − c), κ = 0.32,
c = the task stage's confidence (docs/router.md, "The conservative rule, gated"). It made the `balanced` preset
(λ = 0.025, what `auto` uses) about 10% dearer on the training tasks' mix for no quality there: a median seen-task
prompt (c ≈ 0.95) still carries a margin of ~0.016, a quarter of them (c ≤ 0.81) ~0.06. A steeper gate,
κ · (1 − c)^p with p = 2 or 3, keeps about the same margin on a median unseen-task prompt (c ≈ 0.66) and far less on
seen ones. Grid, declared before the first run (2026-12-07 05:17 UTC), seeds 0–2 (in-sample for them; LOTO
in-sample at every seed: its outer folds are one per task):

- `task4`, `task4+g1κ0.32`: the packaged estimator, plain and under the packaged rule (the references);
- `task4+g2κX`, κ · (1 − c)², κ = 0.5, 1, 2;
- `task4+g3κX`, κ · (1 − c)³, κ = 1.5, 3, 6.

Choice rule, declared with the grid: among the variants whose mean over the 3 seeds is within 0.0005 of the
packaged rule's on both LOTO and task-balanced best quality, the one with the lowest task-balanced `balanced`
preset USD/Mtok; it goes to a check with the full nested protocol only if that cost is at least 5% below the
packaged rule's.

Outputs: benchmarks/results/router_gate_form_explore_seed{0,1,2}.txt.
"""

from __future__ import annotations

import numpy as np

from _explore import fit_packaged, screen_fit_by_task

GRID = {2: (0.5, 1.0, 2.0), 3: (1.5, 3.0, 6.0)}


def fit_all(x, y, groups, rng):
    packaged = fit_packaged(x, y, groups, rng)
    prior_means = y.mean(axis=0)

    def predict(xt):
        p = packaged(xt)
        task4, confidence = p.task4, p.confidence
        prior = np.broadcast_to(prior_means, task4.shape)
        doubt = 1 - confidence[:, None]
        out = {"task4": task4, "task4+g1κ0.32": (task4, prior, 0.32 * doubt)}
        for power, kappas in GRID.items():
            for kappa in kappas:
                out[f"task4+g{power}κ{kappa:g}"] = (task4, prior, kappa * doubt ** power)
        return out

    return predict


def main() -> None:
    screen_fit_by_task(__doc__.splitlines()[0], fit_all)


if __name__ == "__main__":
    main()
