"""How alike the online corrections think prompts are: cosine similarity of the context vectors `OnlineLearner`
compares, between prompts of one task and of different tasks (docs/online-learning.md, "Mixed traffic").

    .venv/bin/python benchmarks/online_similarity.py [--tasks math,commonsense_qa,natural_qa,human_eval] [--weights 0,1,2]

Part 1, every task: the share of same-task and cross-task pairs at or above a similarity threshold, on the router's
feature rows (what `min_similarity` cuts; where 0.5 and 0.6 were taken from). Part 2, per held-out task T: a task
stage trained without T (as the online benchmark's routers are), and the similarity with its posterior appended at
weight α (`task_context_weight`; α = 0 is the feature row alone) between prompts of T, between T and other tasks,
and between other tasks' prompts of one task and of different tasks (where α = 1 was taken from). Samples are
seeded; the numbers do not depend on the machine.
"""

from __future__ import annotations

import argparse

import numpy as np

from online_learning import load_routing_data
from switchboard.router.strategies.robust import task_ids
from switchboard.router.strategies.task_stage import TaskStage


def _unit_rows(z: np.ndarray) -> np.ndarray:
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="math,commonsense_qa,natural_qa,human_eval")
    parser.add_argument("--weights", default="0,1,2")
    args = parser.parse_args()
    x, y, _, tasks, _, _ = load_routing_data()
    u = _unit_rows(x)
    rng = np.random.default_rng(0)
    sample = rng.choice(len(x), 1500, replace=False)
    sims = u[sample] @ u[sample].T
    same = tasks[sample][:, None] == tasks[sample][None, :]
    off_diagonal = ~np.eye(len(sample), dtype=bool)
    print("feature rows, 1500 prompts: share of pairs at or above the threshold")
    for threshold in (0.3, 0.4, 0.5, 0.6, 0.7):
        print(f"  ≥ {threshold:.1f}: same task {(sims[same & off_diagonal] >= threshold).mean():.2f}, "
              f"different tasks {(sims[~same] >= threshold).mean():.2f}")
    for held_out in args.tasks.split(","):
        train, test = np.nonzero(tasks != held_out)[0], np.nonzero(tasks == held_out)[0]
        stage = TaskStage.fit(x[train], y[train], task_ids(list(tasks[train])), np.random.default_rng(1))
        others = rng.choice(train, 600, replace=False)
        own = rng.choice(test, min(150, len(test)), replace=False)
        posterior = stage.posterior(x)
        for weight in (float(w) for w in args.weights.split(",")):
            z = _unit_rows(np.concatenate([u, weight * posterior], axis=1))
            within, across = z[own] @ z[own].T, z[own] @ z[others].T
            rest = z[others] @ z[others].T
            rest_same = tasks[others][:, None] == tasks[others][None, :]
            print(f"{held_out:15s} α={weight:g}: median T–T {np.median(within):.2f}, T–other {np.median(across):.2f}, "
                  f"others same task {np.median(rest[rest_same]):.2f}, different {np.median(rest[~rest_same]):.2f}; "
                  f"≥ 0.3: T–T {(within >= 0.3).mean():.2f}, T–other {(across >= 0.3).mean():.2f}, "
                  f"others different {(rest[~rest_same] >= 0.3).mean():.2f}")


if __name__ == "__main__":
    main()
