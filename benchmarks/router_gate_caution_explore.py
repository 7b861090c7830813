"""Exploration, not a result: the conservative rule (`selection.Caution`) gated by the task stage's confidence,
on outer folds with raw estimates (no calibration, no selection).

    .venv/bin/python benchmarks/router_gate_caution_explore.py [--seed 0] [--splits leave-one-task-out,task-balanced]

Two earlier findings, put together. The conservative rule (step down from the prior choice, the expert with the
best mean training score, to a cheaper one only for a predicted gain above a margin κ) brought leave-one-task-out
(LOTO) best quality to the best single expert's, but cost the seen-task columns, because its margin applied to
every prompt alike (docs/router.md, "Conservative selection under uncertainty"). The task stage's confidence
c = max P(task | prompt) separates prompts of seen tasks (median 0.95) from unseen ones (0.66), which distance to
the training data never did. So the margin here is κ · (1 − c^p): nearly none where the stage knows the task,
nearly κ where it does not. Grid, declared before the run (2026-12-07 03:28 UTC), seeds 0–2 (in-sample for
them, and for LOTO at every seed: its outer folds are one per task, the same at any seed):

- `ens3`, `task4`: the previous and the packaged estimators (the stage blended in by c⁴), plain rule;
- `task4+κX`: the packaged estimator under the ungated rule, κ = 0.04, 0.08 (the earlier form, for reference);
- `task4+g4κX`: margin κ · (1 − c⁴), κ = 0.04, 0.08, 0.16, 0.32; `task4+g1κX`: κ · (1 − c), same κ;
- `task4+prior`: no margin, the ensemble's share shrunk halfway to the prior instead,
  w · stage + (1 − w) · (ens3 + prior) / 2, w = c⁴.

Outputs: benchmarks/results/router_gate_caution_explore_seed{0,1,2}.txt.
"""

from __future__ import annotations

import numpy as np

from _explore import fit_packaged, screen_fit_by_task

KAPPAS = (0.04, 0.08, 0.16, 0.32)


def fit_all(x, y, groups, rng):
    packaged = fit_packaged(x, y, groups, rng)
    prior_means = y.mean(axis=0)

    def predict(xt):
        p = packaged(xt)
        ens3, staged, confidence, w, task4 = p.ens3, p.staged, p.confidence, p.weight, p.task4
        prior = np.broadcast_to(prior_means, task4.shape)
        out = {"ens3": ens3, "task4": task4}
        for kappa in (0.04, 0.08):
            out[f"task4+κ{kappa:g}"] = (task4, prior, np.full((len(xt), 1), kappa))
        for label, gate in (("g4", w), ("g1", confidence[:, None])):
            for kappa in KAPPAS:
                out[f"task4+{label}κ{kappa:g}"] = (task4, prior, kappa * (1 - gate))
        out["task4+prior"] = w * staged + (1 - w) * (ens3 + prior) / 2
        return out

    return predict


def main() -> None:
    screen_fit_by_task(__doc__.splitlines()[0], fit_all)


if __name__ == "__main__":
    main()
