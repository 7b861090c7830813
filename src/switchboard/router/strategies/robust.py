"""Training objectives across tasks for the neural strategies: worst-group (Group DRO) and invariant (V-REx).

The plain MLP minimises the loss averaged over training *prompts*, so it fits the common tasks' winners and
learns whatever separates those tasks; on a task it never saw that does not transfer. Two objectives from the
domain-generalisation literature use the task labels of the training rows instead:

- **Group DRO** (Sagawa et al., "Distributionally Robust Neural Networks for Group Shifts", ICLR 2020): minimise
  a weighted sum of per-task losses whose weights lean toward the tasks fitted worst, q_g ∝ exp(excess_g / τ)
  (the closed form of a KL-regularised worst case over task mixtures; τ → ∞ is task-balanced training).
- **V-REx** (Krueger et al., "Out-of-Distribution Generalization via Risk Extrapolation", ICML 2021): minimise
  the mean per-task loss plus β times their variance, whose gradient weighs task g by 1 + 2β (ℓ_g − mean ℓ)
  (negative weights allowed: that is the extrapolation).

Both act only through one per-row weight on the loss gradient (`TaskReweighting.row_scale`). A task's loss is
its *excess* over what knowing the task alone gives — the binary cross-entropy of predicting the task's mean
score per expert for each of its rows — so a task with noisy scores (irreducible loss) is not mistaken for one
fitted badly. Per-task losses are exponential moving averages over minibatches (a batch holds a few rows of a
small task), and the first quarter of the epochs is task-balanced training before the reweighting starts
(as V-REx's warm-up).
"""

from __future__ import annotations

import enum

import numpy as np


class TaskObjective(str, enum.Enum):
    DRO = "dro"
    VREX = "vrex"


def row_bce(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(n,) binary cross-entropy of estimates `p` against graded scores `y`, averaged over experts."""
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean(axis=1)


def task_ids(tasks) -> np.ndarray:
    """(n,) int task index per row (sorted task names), for `TaskReweighting`."""
    return np.unique(np.asarray(tasks, dtype=object).astype(str), return_inverse=True)[1].astype(np.int64)


def task_mean_scores(y: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """(G, m) each task's mean score per expert (zero rows for task ids with no rows)."""
    groups = np.asarray(groups, np.int64)
    num_groups = int(groups.max()) + 1
    total = np.zeros((num_groups, y.shape[1]))
    np.add.at(total, groups, y)
    return total / np.maximum(np.bincount(groups, minlength=num_groups), 1)[:, None]


class TaskReweighting:
    """Per-row gradient weights for one training run (stateful: the per-task moving-average losses)."""

    def __init__(self, objective: TaskObjective, strength: float, groups: np.ndarray, y: np.ndarray,
                 warmup_steps: int, momentum: float = 0.9) -> None:
        self.objective, self.strength = TaskObjective(objective), float(strength)
        self.groups = np.asarray(groups, np.int64)
        self.num_groups = int(self.groups.max()) + 1
        counts = np.bincount(self.groups, minlength=self.num_groups)
        task_mean = task_mean_scores(y, self.groups)
        # What the task's label alone achieves: its rows' loss when predicted by the task's mean scores.
        self.baseline = np.bincount(self.groups, row_bce(task_mean[self.groups], y), self.num_groups) / np.maximum(counts, 1)
        self.present = counts > 0
        self.loss = self.baseline.copy()  # moving average of each task's loss; starts at zero excess
        self.warmup_steps, self.momentum, self.step = int(warmup_steps), float(momentum), 0

    def task_weights(self) -> np.ndarray:
        """(G,) each task's weight in the objective's gradient, 1 on average over tasks (1 everywhere: balanced)."""
        if self.step <= self.warmup_steps:
            return np.where(self.present, 1.0, 0.0)
        excess = np.where(self.present, self.loss - self.baseline, 0.0)
        if self.objective is TaskObjective.DRO:
            z = np.where(self.present, excess / self.strength, -np.inf)
            q = np.exp(z - z.max())
            return q / q.sum() * self.present.sum()
        mean = excess[self.present].mean()
        return np.where(self.present, 1.0 + 2.0 * self.strength * (excess - mean), 0.0)

    def row_scale(self, idx: np.ndarray, row_loss: np.ndarray) -> np.ndarray:
        """(b,) factors for the rows `idx` of a minibatch whose per-row losses are `row_loss`: the batch's gradient
        becomes Σ over its tasks of weight_g · (the task's mean loss in the batch) / (tasks in the batch)."""
        self.step += 1
        g = self.groups[idx]
        counts = np.bincount(g, minlength=self.num_groups)
        seen = counts > 0
        batch_loss = np.bincount(g, row_loss, self.num_groups) / np.maximum(counts, 1)
        self.loss[seen] = self.momentum * self.loss[seen] + (1 - self.momentum) * batch_loss[seen]
        weight = self.task_weights()
        weight = weight / max(weight[seen].mean(), 1e-12) if self.objective is TaskObjective.DRO else weight
        return (weight[g] * len(idx) / (seen.sum() * counts[g])).astype(np.float32)
