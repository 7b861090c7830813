"""kNN and MLP averaged: two estimators that fail differently under shift (the MLP extrapolates smoothly and
can be confidently wrong far from the data; the kNN falls back to its prior there), so their mean is steadier
than either on a task neither saw."""

from __future__ import annotations

import dataclasses

import numpy as np

from switchboard.router.strategies.base import QualityModel, StrategyName
from switchboard.router.strategies.knn import KnnModel
from switchboard.router.strategies.neural import MlpModel
from switchboard.router.strategies.task_stage import TaskStage


@dataclasses.dataclass(frozen=True)
class EnsembleModel(QualityModel):
    name = StrategyName.ENSEMBLE
    knn: KnnModel
    mlp: MlpModel
    knn_share: float = 0.5
    mlp_columns: int = 0
    """> 0: the MLP reads only the last `mlp_columns` feature columns — the cheap format features (length, code,
    maths, multiple choice…; `features.py`), not the embedding. 0: every column."""
    format_mlp: MlpModel | None = None
    """A third member, an MLP on the last `format_columns` columns only; the estimate is then the mean of the three
    (`knn_share` unused)."""
    format_columns: int = 0
    task_stage: TaskStage | None = None
    """Category first, then expert (`strategies.task_stage`): its estimate P(task | prompt) @ M[task, expert] is
    blended in with weight c ** `task_gate_power`, c = max P(task | prompt), the classifier's confidence."""
    task_gate_power: float = 0.0

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.predict_with_confidence(x)[0]

    def predict_with_confidence(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The estimates and, with a task stage, its confidence c = max P(task | prompt); None without one."""
        if self.format_mlp is not None:
            members = self.knn.predict(x) + self.mlp.predict(self._mlp_view(x))
            out = (members + self.format_mlp.predict(_last_columns(x, int(self.format_columns)))) / 3.0
        else:
            share = float(self.knn_share)
            out = share * self.knn.predict(x) + (1.0 - share) * self.mlp.predict(self._mlp_view(x))
        if self.task_stage is None:
            return out.astype(np.float32), None
        staged, confidence = self.task_stage.predict(x)
        weight = (confidence ** float(self.task_gate_power))[:, None]
        return (weight * staged + (1.0 - weight) * out).astype(np.float32), confidence

    @property
    def uses_tasks(self) -> bool:
        return self.task_stage is not None

    def _mlp_view(self, x: np.ndarray) -> np.ndarray:
        return _last_columns(x, int(self.mlp_columns))

    @classmethod
    def fit(cls, x, y, rng, knn_share: float = 0.5, num_neighbours: int = 100, prior_weight: float = 4.0,
            temperature: float = 0.05, hidden: int = 128, epochs: int = 40, weight_decay: float = 1e-4,
            relative: bool = False, groups: np.ndarray | None = None, prior_by_task: bool = False,
            task_objective: str | None = None, task_strength: float = 0.0, mlp_columns: int = 0,
            format_columns: int = 0, task_gate_power: float = 0.0) -> "EnsembleModel":
        """`relative`: the MLP learns scores relative to the prompt's mean over experts (`MlpModel.fit`); the kNN
        is left as it is, since subtracting a per-prompt constant from every expert never changes its choice.
        `groups` (a task id per row) with `prior_by_task` gives the kNN a task-averaged prior (`KnnModel.fit`),
        with `task_objective` trains the MLP across tasks (`strategies.robust`). `mlp_columns` as the field;
        `format_columns` > 0 adds the third member (`format_mlp`). `task_gate_power` > 0 with `groups` adds the task
        stage (`task_stage`, blended in by its confidence to that power); without `groups`, or with one task only,
        there is none, so rows without task labels train the ensemble alone."""
        knn = KnnModel.fit(x, y, rng, num_neighbours, prior_weight, temperature, groups, prior_by_task)
        mlp = MlpModel.fit(_last_columns(x, mlp_columns), y, rng, hidden=hidden, epochs=epochs,
                           weight_decay=weight_decay, relative=relative, groups=groups, task_objective=task_objective,
                           task_strength=task_strength)
        format_mlp = None
        if format_columns > 0:
            format_mlp = MlpModel.fit(_last_columns(x, format_columns), y, rng, hidden=hidden, epochs=epochs,
                                      weight_decay=weight_decay)
        stage = None
        if task_gate_power > 0 and groups is not None and len(np.unique(groups)) >= 2:
            stage = TaskStage.fit(x, y, groups, rng, hidden=hidden, epochs=epochs, weight_decay=weight_decay)
        return cls(knn, mlp, knn_share, int(mlp_columns), format_mlp, int(format_columns), stage,
                   float(task_gate_power) if stage is not None else 0.0)

    def fit_params(self) -> dict:
        """The members' shape: kNN size, weighting and prior weight, the MLP's columns, the format member, the task
        stage's power (only when there is one, so earlier recipes keep their keys). Training
        settings a saved model does not carry (epochs, relative targets, task objectives) come back as `fit`'s
        defaults."""
        return {"knn_share": float(self.knn_share), "num_neighbours": int(self.knn.num_neighbours),
                "prior_weight": float(self.knn.prior_weight), "temperature": float(self.knn.temperature),
                "mlp_columns": int(self.mlp_columns), "format_columns": int(self.format_columns),
                **({"task_gate_power": float(self.task_gate_power)} if self.task_stage is not None else {})}

    def arrays(self) -> dict[str, np.ndarray]:
        out = {f"knn.{k}": v for k, v in self.knn.arrays().items()}
        out.update({f"mlp.{k}": v for k, v in self.mlp.arrays().items()})
        out["knn_share"] = np.asarray(self.knn_share)
        out["mlp_columns"] = np.asarray(self.mlp_columns)
        if self.format_mlp is not None:
            out.update({f"format_mlp.{k}": v for k, v in self.format_mlp.arrays().items()})
            out["format_columns"] = np.asarray(self.format_columns)
        if self.task_stage is not None:
            out.update({f"task_stage.{k}": v for k, v in self.task_stage.arrays().items()})
            out["task_gate_power"] = np.asarray(self.task_gate_power)
        return out

    @classmethod
    def from_arrays(cls, arrays) -> "EnsembleModel":
        def part(prefix: str) -> dict:
            return {k.removeprefix(prefix): v for k, v in arrays.items() if k.startswith(prefix)}

        def scalar(key: str) -> int:  # routers saved before these fields fed the MLP every column, no third member
            return int(np.asarray(arrays.get(key, 0)).item())

        format_mlp = MlpModel.from_arrays(part("format_mlp.")) if scalar("format_columns") else None
        # Routers saved before the task stage have none.
        stage = TaskStage.from_arrays(part("task_stage.")) if "task_gate_power" in arrays else None
        return cls(KnnModel.from_arrays(part("knn.")), MlpModel.from_arrays(part("mlp.")),
                   float(np.asarray(arrays["knn_share"]).item()), scalar("mlp_columns"), format_mlp,
                   scalar("format_columns"), stage, float(np.asarray(arrays.get("task_gate_power", 0.0)).item()))


def _last_columns(x: np.ndarray, num_columns: int) -> np.ndarray:
    return np.asarray(x)[:, -num_columns:] if num_columns > 0 else x
