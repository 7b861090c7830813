"""Per-expert quality predictors trained jointly in numpy: a one-hidden-layer MLP (multi-task, one sigmoid
output per expert, Tryage-style) and its zero-hidden-layer special case, logistic regression. The loss is
binary cross-entropy against the graded score, so fractional scores are fine. With `relative=True` the MLP
learns each expert's score relative to the prompt's mean over experts (`base.relative_targets`) and maps it back
(`out_scale`, `out_offset`); its estimates may then leave [0, 1] by a little."""

from __future__ import annotations

import dataclasses

import numpy as np

from switchboard.router.selection import SelectionRule
from switchboard.router.strategies.base import Adam, QualityModel, StrategyName, minibatches, relative_targets, sigmoid
from switchboard.router.strategies.robust import TaskObjective, TaskReweighting, row_bce


BATCH_SIZE = 128


def _train_mlp(x, y, rng, hidden: int, epochs: int, lr: float, weight_decay: float, batch_size: int = BATCH_SIZE,
               reweighting: TaskReweighting | None = None):
    """`reweighting`: per-row gradient weights from per-task losses (`strategies.robust`); None: every row alike."""
    d, m = x.shape[1], y.shape[1]
    params: dict[str, np.ndarray] = {"b2": np.log(np.clip(y.mean(0), 1e-3, 1 - 1e-3) / np.clip(1 - y.mean(0), 1e-3, 1))}
    if hidden:
        params["w1"] = rng.normal(0, np.sqrt(2.0 / d), (d, hidden)).astype(np.float32)
        params["b1"] = np.zeros(hidden, np.float32)
        params["w2"] = rng.normal(0, np.sqrt(1.0 / hidden), (hidden, m)).astype(np.float32)
    else:
        params["w2"] = np.zeros((d, m), np.float32)
    params["b2"] = params["b2"].astype(np.float32)
    opt = Adam(params, lr, weight_decay)
    for _ in range(epochs):
        for idx in minibatches(len(x), batch_size, rng):
            xb, yb = x[idx], y[idx]
            h = np.maximum(xb @ params["w1"] + params["b1"], 0) if hidden else xb
            out = sigmoid(h @ params["w2"] + params["b2"])
            dz = (out - yb) / len(idx)
            if reweighting is not None:
                dz *= reweighting.row_scale(idx, row_bce(out, yb))[:, None]
            grads = {"w2": h.T @ dz, "b2": dz.sum(0)}
            if hidden:
                dh = (dz @ params["w2"].T) * (h > 0)
                grads["w1"], grads["b1"] = xb.T @ dh, dh.sum(0)
            opt.step(grads)
    return params


@dataclasses.dataclass(frozen=True)
class MlpModel(QualityModel):
    name = StrategyName.MLP
    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray
    out_scale: float = 1.0  # estimate = out_scale · sigmoid(...) + out_offset: (2, d̄ − 1) for relative targets
    out_offset: float = 0.0

    def predict(self, x: np.ndarray) -> np.ndarray:
        h = np.maximum(np.asarray(x, np.float32) @ self.w1 + self.b1, 0)
        return (float(self.out_scale) * sigmoid(h @ self.w2 + self.b2) + float(self.out_offset)).astype(np.float32)

    @classmethod
    def fit(cls, x, y, rng, hidden: int = 128, epochs: int = 40, lr: float = 1e-3, weight_decay: float = 1e-4,
            relative: bool = False, groups: np.ndarray | None = None, task_objective: str | None = None,
            task_strength: float = 0.0):
        """`groups` (an int task id per row, `robust.task_ids`) with `task_objective` ("dro", τ = `task_strength`;
        "vrex", β = `task_strength`) trains across tasks (`strategies.robust`); the objective needs the groups."""
        targets, scale, offset = y.astype(np.float32), 1.0, 0.0
        if relative:
            targets, mean_difficulty = relative_targets(targets)
            scale, offset = 2.0, mean_difficulty - 1.0
        reweighting = None
        if task_objective is not None:
            if groups is None:
                raise ValueError(f"task_objective={task_objective!r} needs a task id per training row (groups)")
            steps_per_epoch = -(-len(x) // BATCH_SIZE)
            reweighting = TaskReweighting(TaskObjective(task_objective), task_strength, groups, targets,
                                          warmup_steps=(epochs // 4) * steps_per_epoch)
        p = _train_mlp(np.asarray(x, np.float32), targets, rng, hidden, epochs, lr, weight_decay, reweighting=reweighting)
        return cls(p["w1"], p["b1"], p["w2"], p["b2"], scale, offset)

    @classmethod
    def from_arrays(cls, arrays) -> "MlpModel":
        # Routers saved before relative targets existed learned raw scores.
        return super().from_arrays({"out_scale": 1.0, "out_offset": 0.0, **arrays})


@dataclasses.dataclass(frozen=True)
class CascadeModel(MlpModel):
    """The MLP's estimates with the cascade selection rule: climb the price ladder and stop at the first
    expert whose utility is at least that of the best-quality one (no answer-time check: the check is the
    predicted success)."""

    name = StrategyName.CASCADE
    selection_rule = SelectionRule.CASCADE


@dataclasses.dataclass(frozen=True)
class LinearModel(QualityModel):
    name = StrategyName.LINEAR
    w2: np.ndarray
    b2: np.ndarray

    def predict(self, x: np.ndarray) -> np.ndarray:
        return sigmoid(np.asarray(x, np.float32) @ self.w2 + self.b2).astype(np.float32)

    @classmethod
    def fit(cls, x, y, rng, epochs: int = 40, lr: float = 3e-3, weight_decay: float = 1e-4):
        p = _train_mlp(np.asarray(x, np.float32), y.astype(np.float32), rng, 0, epochs, lr, weight_decay)
        return cls(p["w2"], p["b2"])
