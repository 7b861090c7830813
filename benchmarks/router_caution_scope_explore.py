"""Exploration, not a result: which experts the conservative rule's margin applies to.

    .venv/bin/python benchmarks/router_caution_scope_explore.py [--seed 0] [--splits leave-one-task-out,task-balanced]

The packaged rule asks only experts priced *below* the prior choice (the best by mean training score net of λ) to
gain κ · (1 − c) over it, κ = 0.32, c = the task stage's confidence (docs/router.md, "The conservative rule,
gated"). Experts priced the same as the prior choice move freely: at λ = 0 the prior is nemotron-51b ($0.90) and
its $0.90 peers (nemotron-super-49b, chatqa-70b) need no margin; at the `cost` preset (λ = 0.1) the prior is
llama-3.1-8b ($0.20) and its $0.20 peers (qwen2.5-7b, mistral-7b, codegemma-7b, chatqa-8b) need none either — and
those peers fail whole tasks on format (qwen2.5-7b 0.17 on MMLU, 0.86 on commonsense QA). Under LOTO the router
needs $0.70/Mtok to reach the issue's 0.563, where sending a task-weighted 15% of traffic from llama-3.1-8b (0.554,
$0.20) to nemotron-51b (0.615, $0.90) would get there for about $0.30: the curve falls below the single experts'
hull at the cheap end. An ungated margin on every challenger was measured before the task stage existed and lost
on the seen tasks (docs/router.md, "Conservative selection under uncertainty"); gated by c it has not been.

Grid, declared before the first run (2026-12-07 07:04 UTC), seeds 0–2 (in-sample for them; LOTO in-sample at every
seed: its outer folds are one per task):

- `task4`, `task4+cheaperκ0.32`: the packaged estimator, plain and under the packaged rule (the references);
- `task4+notdearerκX`: the gated margin on every expert priced at or below the prior choice, κ = 0.08, 0.16, 0.32;
- `task4+everyκX`: on every expert but the prior choice, κ = 0.08, 0.16, 0.32.

Choice rule, declared with the grid: a variant passes if, over the means of the 3 seeds, its LOTO and its
task-balanced best quality are each no more than 0.0005 below the packaged rule's, and its LOTO USD/Mtok to reach
0.563 is at least 20% below the packaged rule's. Of those passing, the one with the lowest LOTO USD to reach 0.563
goes to a check with the full nested protocol on fresh seeds (12–14); none passing, the packaged rule stays.

Outputs: benchmarks/results/router_caution_scope_explore_seed{0,1,2}.txt.
"""

from __future__ import annotations

import numpy as np

from _explore import fit_packaged, screen_fit_by_task
from switchboard.router.selection import Challengers

KAPPAS = (0.08, 0.16, 0.32)
SCOPES = {"notdearer": Challengers.NOT_DEARER, "every": Challengers.EVERY}


def fit_all(x, y, groups, rng):
    packaged = fit_packaged(x, y, groups, rng)
    prior_means = y.mean(axis=0)

    def predict(xt):
        p = packaged(xt)
        prior = np.broadcast_to(prior_means, p.task4.shape)
        doubt = 1 - p.confidence[:, None]
        out = {"task4": p.task4, "task4+cheaperκ0.32": (p.task4, prior, 0.32 * doubt)}
        for label, scope in SCOPES.items():
            for kappa in KAPPAS:
                out[f"task4+{label}κ{kappa:g}"] = (p.task4, prior, kappa * doubt, scope)
        return out

    return predict


def main() -> None:
    screen_fit_by_task(__doc__.splitlines()[0], fit_all)


if __name__ == "__main__":
    main()
