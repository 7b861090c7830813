"""Category first, then expert (Composition of Experts, Jain et al., 2024): a classifier of the training rows' task
labels, P(task | prompt), and each task's mean score per expert in the training rows, M[task, expert]; the stage's
estimate is P @ M. Learning 14 classes from thousands of prompts and 14 × 9 means from hundreds each has far
less variance than learning each expert's score per prompt, so on prompts of tasks the router was trained on it
is the better estimate (docs/router.md, "Category first, then expert").

It knows nothing of a task it never saw: such a prompt is spread over the seen tasks it resembles, often with
confidence. The classifier's confidence, max P(task | prompt), is itself the best sign found of a prompt from a
seen task (median 0.95 on seen tasks against 0.66 on unseen ones, on the shipped data), so the ensemble blends
the stage in by that confidence to a power (`EnsembleModel.task_gate_power`), and an unfamiliar prompt keeps
the per-prompt estimate.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from switchboard.router.strategies.base import Adam, minibatches


@dataclasses.dataclass(frozen=True)
class TaskStage:
    w1: np.ndarray  # (d, hidden)
    b1: np.ndarray
    w2: np.ndarray  # (hidden, num_tasks)
    b2: np.ndarray
    task_means: np.ndarray  # (num_tasks, m) each task's mean score per expert in the training rows

    def posterior(self, x: np.ndarray) -> np.ndarray:
        """(n, num_tasks) P(task | prompt), rows summing to 1."""
        h = np.maximum(np.asarray(x, np.float32) @ self.w1 + self.b1, 0)
        z = h @ self.w2 + self.b2
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """((n, m) the stage's estimates P @ M, (n,) its confidence max P(task | prompt))."""
        prob = self.posterior(x)
        return (prob @ self.task_means).astype(np.float32), prob.max(axis=1)

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, groups: np.ndarray, rng: np.random.Generator, hidden: int = 128,
            epochs: int = 40, lr: float = 1e-3, weight_decay: float = 1e-4) -> "TaskStage":
        """A softmax MLP (one hidden ReLU layer, cross-entropy, Adam; the score MLP's settings) on (x, task id),
        and the task means of y. `groups`: an int task id per row, 0..G−1 (`robust.task_ids`); needs ≥ 2 tasks."""
        groups = np.asarray(groups, np.int64)
        num_tasks = int(groups.max()) + 1
        if num_tasks < 2:
            raise ValueError("a task stage needs training rows from at least 2 tasks")
        x = np.asarray(x, np.float32)
        d = x.shape[1]
        target = np.eye(num_tasks, dtype=np.float32)[groups]
        p = {"w1": rng.normal(0, np.sqrt(2.0 / d), (d, hidden)).astype(np.float32), "b1": np.zeros(hidden, np.float32),
             "w2": rng.normal(0, np.sqrt(1.0 / hidden), (hidden, num_tasks)).astype(np.float32),
             "b2": np.zeros(num_tasks, np.float32)}
        opt = Adam(p, lr, weight_decay)
        for _ in range(epochs):
            for idx in minibatches(len(x), 128, rng):
                h = np.maximum(x[idx] @ p["w1"] + p["b1"], 0)
                z = h @ p["w2"] + p["b2"]
                e = np.exp(z - z.max(axis=1, keepdims=True))
                dz = (e / e.sum(axis=1, keepdims=True) - target[idx]) / len(idx)
                dh = (dz @ p["w2"].T) * (h > 0)
                opt.step({"w2": h.T @ dz, "b2": dz.sum(0), "w1": x[idx].T @ dh, "b1": dh.sum(0)})
        means = np.zeros((num_tasks, y.shape[1]), np.float32)
        for g in range(num_tasks):
            rows = groups == g
            # A task id with no rows (ids need not be dense) keeps the overall mean: it is never predicted anyway.
            means[g] = y[rows].mean(axis=0) if rows.any() else y.mean(axis=0)
        return cls(p["w1"], p["b1"], p["w2"], p["b2"], means)

    def arrays(self) -> dict[str, np.ndarray]:
        return {f.name: np.asarray(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_arrays(cls, arrays) -> "TaskStage":
        return cls(**{f.name: np.asarray(arrays[f.name]) for f in dataclasses.fields(cls)})
