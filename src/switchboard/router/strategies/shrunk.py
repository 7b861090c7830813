"""The kNN+MLP ensemble, shrunk toward the prior when a prompt is far from the training data.

Per expert, estimate = w · ensemble + (1 − w) · prior, where the prior is the expert's mean training score (its
argmax is the best single expert) and w = sigmoid((familiarity − centre) / scale) falls with the distance to the
training data: familiarity is the mean cosine similarity of the prompt's 10 nearest training prompts. The centre
is a quantile of the training prompts' own familiarity (each against the others), so "far" is measured against
how close the training prompts are to each other, not in absolute cosine; the quantile and scale are
hyper-parameters chosen on inner folds (`pipeline.SHRINK_CANDIDATES`), like any other.

The idea is empirical-Bayes shrinkage (James & Stein, 1961; Efron & Morris, 1975) with a per-prompt weight: a
prompt of a kind the router never saw should get the best single expert, not a confident extrapolation.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from switchboard.router.strategies.base import QualityModel, StrategyName, sigmoid
from switchboard.router.strategies.ensemble import EnsembleModel
from switchboard.router.strategies.knn import KnnModel
from switchboard.router.strategies.neural import MlpModel

NUM_NEAREST = 10
"""Neighbours whose mean similarity is a prompt's familiarity."""


def self_familiarity(points: np.ndarray, num_nearest: int = NUM_NEAREST, chunk_rows: int = 1024) -> np.ndarray:
    """(n,) familiarity of each unit row of `points` against the other rows (itself left out), in chunks so the
    n × n similarity matrix never sits in memory whole."""
    points = np.ascontiguousarray(points, np.float32)
    k = min(num_nearest, len(points) - 1)
    out = np.empty(len(points), np.float32)
    for start in range(0, len(points), chunk_rows):
        sims = points[start : start + chunk_rows] @ points.T
        rows = np.arange(len(sims))
        sims[rows, start + rows] = -np.inf
        out[start : start + len(sims)] = -np.partition(-sims, k - 1, axis=1)[:, :k].mean(axis=1)
    return out


@dataclasses.dataclass(frozen=True)
class ShrunkEnsembleModel(QualityModel):
    name = StrategyName.SHRUNK
    knn: KnnModel
    mlp: MlpModel
    familiarity_centre: float  # cosine similarity at which w = 1/2
    familiarity_scale: float  # cosine similarity over which w goes from 0.27 to 0.73
    knn_share: float = 0.5

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.predict_with_weight(x)[0]

    def predict_with_weight(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """((n, m) shrunk estimates, (n,) the weight w of the ensemble in them)."""
        knn, familiarity = self.knn.predict_with_familiarity(x, NUM_NEAREST)
        share = float(self.knn_share)
        local = share * knn + (1.0 - share) * self.mlp.predict(x)
        weight = sigmoid((familiarity - float(self.familiarity_centre)) / float(self.familiarity_scale))
        prior = self.knn.prior()
        return (weight[:, None] * local + (1.0 - weight[:, None]) * prior).astype(np.float32), weight

    @classmethod
    def fit(cls, x, y, rng, familiarity_quantile: float = 0.1, familiarity_scale: float = 0.03, knn_share: float = 0.5,
            num_neighbours: int = 100, prior_weight: float = 4.0, temperature: float = 0.05, hidden: int = 128,
            epochs: int = 40, weight_decay: float = 1e-4) -> "ShrunkEnsembleModel":
        ensemble = EnsembleModel.fit(x, y, rng, knn_share, num_neighbours, prior_weight, temperature, hidden, epochs,
                                     weight_decay)
        centre = float(np.quantile(self_familiarity(ensemble.knn.points), familiarity_quantile))
        return cls(ensemble.knn, ensemble.mlp, centre, float(familiarity_scale), float(knn_share))

    def arrays(self) -> dict[str, np.ndarray]:
        out = {f"knn.{k}": v for k, v in self.knn.arrays().items()}
        out.update({f"mlp.{k}": v for k, v in self.mlp.arrays().items()})
        out.update(knn_share=np.asarray(self.knn_share), familiarity_centre=np.asarray(self.familiarity_centre),
                   familiarity_scale=np.asarray(self.familiarity_scale))
        return out

    @classmethod
    def from_arrays(cls, arrays) -> "ShrunkEnsembleModel":
        def part(prefix: str) -> dict:
            return {k.removeprefix(prefix): v for k, v in arrays.items() if k.startswith(prefix)}

        def scalar(key: str) -> float:
            return float(np.asarray(arrays[key]).item())

        return cls(KnnModel.from_arrays(part("knn.")), MlpModel.from_arrays(part("mlp.")), scalar("familiarity_centre"),
                   scalar("familiarity_scale"), scalar("knn_share"))
