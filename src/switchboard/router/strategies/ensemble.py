"""kNN and MLP averaged: two estimators that fail differently under shift (the MLP extrapolates smoothly and
can be confidently wrong far from the data; the kNN falls back to its prior there), so their mean is steadier
than either on a task neither saw."""

from __future__ import annotations

import dataclasses

import numpy as np

from switchboard.router.strategies.base import QualityModel, StrategyName
from switchboard.router.strategies.knn import KnnModel
from switchboard.router.strategies.neural import MlpModel


@dataclasses.dataclass(frozen=True)
class EnsembleModel(QualityModel):
    name = StrategyName.ENSEMBLE
    knn: KnnModel
    mlp: MlpModel
    knn_share: float = 0.5

    def predict(self, x: np.ndarray) -> np.ndarray:
        share = float(self.knn_share)
        return (share * self.knn.predict(x) + (1.0 - share) * self.mlp.predict(x)).astype(np.float32)

    @classmethod
    def fit(cls, x, y, rng, knn_share: float = 0.5, num_neighbours: int = 100, prior_weight: float = 4.0,
            temperature: float = 0.05, hidden: int = 128, epochs: int = 40, weight_decay: float = 1e-4,
            relative: bool = False, groups: np.ndarray | None = None, prior_by_task: bool = False,
            task_objective: str | None = None, task_strength: float = 0.0) -> "EnsembleModel":
        """`relative`: the MLP learns scores relative to the prompt's mean over experts (`MlpModel.fit`); the kNN
        is left as it is, since subtracting a per-prompt constant from every expert never changes its choice.
        `groups` (a task id per row) with `prior_by_task` gives the kNN a task-averaged prior (`KnnModel.fit`),
        with `task_objective` trains the MLP across tasks (`strategies.robust`)."""
        knn = KnnModel.fit(x, y, rng, num_neighbours, prior_weight, temperature, groups, prior_by_task)
        mlp = MlpModel.fit(x, y, rng, hidden=hidden, epochs=epochs, weight_decay=weight_decay, relative=relative,
                           groups=groups, task_objective=task_objective, task_strength=task_strength)
        return cls(knn, mlp, knn_share)

    def arrays(self) -> dict[str, np.ndarray]:
        out = {f"knn.{k}": v for k, v in self.knn.arrays().items()}
        out.update({f"mlp.{k}": v for k, v in self.mlp.arrays().items()})
        out["knn_share"] = np.asarray(self.knn_share)
        return out

    @classmethod
    def from_arrays(cls, arrays) -> "EnsembleModel":
        def part(prefix: str) -> dict:
            return {k.removeprefix(prefix): v for k, v in arrays.items() if k.startswith(prefix)}

        return cls(KnnModel.from_arrays(part("knn.")), MlpModel.from_arrays(part("mlp.")),
                   float(np.asarray(arrays["knn_share"]).item()))
