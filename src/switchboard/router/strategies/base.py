"""The strategy interface: one abstract method, `predict`, from feature rows to each expert's raw score estimate.

A strategy is a frozen dataclass whose fields are numpy arrays plus plain scalars, so saving and loading are
shared (`arrays` / `from_arrays`). Training is a classmethod, `fit(x, y, rng)`, taking its randomness from the
caller. Turning raw estimates into calibrated expected scores, and estimates into a choice, is not a strategy's
business: see `calibration.py` and `selection.py`.
"""

from __future__ import annotations

import dataclasses
import enum
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from switchboard.router.selection import SelectionRule


class StrategyName(str, enum.Enum):
    KNN = "knn"
    LINEAR = "linear"
    MLP = "mlp"
    MF = "mf"
    CASCADE = "cascade"
    ENSEMBLE = "ensemble"  # kNN and MLP averaged
    SHRUNK = "shrunk"  # the ensemble shrunk toward the prior far from the training data


@dataclasses.dataclass(frozen=True)
class QualityModel(ABC):
    name: ClassVar[StrategyName]
    selection_rule: ClassVar[SelectionRule] = SelectionRule.ARGMAX

    @abstractmethod
    def predict(self, x: np.ndarray) -> np.ndarray:
        """(n, m) float32 raw estimates of each expert's score for the (n, d) feature rows `x`."""

    def predict_with_confidence(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(`predict(x)`, (n,) how sure the model is that each row is of a task it was trained on, in [0, 1], or
        None when the model cannot tell): what the conservative rule gated by confidence reads
        (`selection.gated_margin`)."""
        return self.predict(x), None

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> "QualityModel":
        """Trains on features (n, d) and scores (n, m) in [0, 1]."""
        raise NotImplementedError

    def fit_params(self) -> dict[str, Any]:
        """Keyword arguments of `fit` that retrain a model of this shape (the recipe a saved model carries); the
        fit's defaults for everything not listed."""
        return {}

    @property
    def uses_tasks(self) -> bool:
        """Whether retraining this model's recipe (`fit_params`) needs each row's task id (`groups`)."""
        return False

    def arrays(self) -> dict[str, np.ndarray]:
        return {f.name: np.asarray(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, Any]) -> "QualityModel":
        values = {}
        for field in dataclasses.fields(cls):
            value = np.asarray(arrays[field.name])
            values[field.name] = value.item() if value.ndim == 0 else value
        return cls(**values)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


def relative_targets(y: np.ndarray) -> tuple[np.ndarray, float]:
    """Relative targets in [0, 1] for a learner with sigmoid outputs: t = (y − the prompt's mean over experts + 1)
    / 2, and d̄, the mean over rows of the prompts' means. `2 t̂ − 1 + d̄` undoes the map: each expert's mean
    estimate over the training rows is then its mean training score (its prior), while the prompt's difficulty
    (its mean over experts), which never changes which expert is best, is not learned."""
    row_mean = y.mean(axis=1, keepdims=True)
    return ((y - row_mean + 1.0) / 2.0).astype(np.float32), float(row_mean.mean())


class Adam:
    """Plain Adam over a dict of parameter arrays (in place)."""

    def __init__(self, params: dict[str, np.ndarray], lr: float, weight_decay: float) -> None:
        self.params, self.lr, self.weight_decay, self.step_count = params, lr, weight_decay, 0
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}

    def step(self, grads: dict[str, np.ndarray]) -> None:
        self.step_count += 1
        b1, b2 = 0.9, 0.999
        for k, g in grads.items():
            if self.params[k].ndim > 1:
                g = g + self.weight_decay * self.params[k]
            self.m[k] = b1 * self.m[k] + (1 - b1) * g
            self.v[k] = b2 * self.v[k] + (1 - b2) * g * g
            m_hat = self.m[k] / (1 - b1**self.step_count)
            v_hat = self.v[k] / (1 - b2**self.step_count)
            self.params[k] -= self.lr * m_hat / (np.sqrt(v_hat) + 1e-8)


def minibatches(n: int, batch_size: int, rng: np.random.Generator):
    order = rng.permutation(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]
