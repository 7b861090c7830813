"""k nearest neighbours by cosine similarity; an expert's estimate is its mean score over the neighbours,
shrunk towards its global mean (a prior worth `prior_weight` neighbours) so sparse regions stay sane."""

from __future__ import annotations

import dataclasses

import numpy as np

from switchboard.router.strategies.base import QualityModel, StrategyName


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclasses.dataclass(frozen=True)
class KnnModel(QualityModel):
    name = StrategyName.KNN
    points: np.ndarray  # (n, d) float16, unit rows
    scores: np.ndarray  # (n, m) float16
    num_neighbours: int = 40
    prior_weight: float = 4.0

    def predict(self, x: np.ndarray) -> np.ndarray:
        sims = _unit(np.asarray(x, np.float32)) @ self.points.astype(np.float32).T
        k = min(int(self.num_neighbours), sims.shape[1])
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        neighbour_sum = self.scores.astype(np.float32)[top].sum(axis=1)
        prior = self.scores.astype(np.float32).mean(axis=0)
        return ((neighbour_sum + self.prior_weight * prior) / (k + self.prior_weight)).astype(np.float32)

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, rng: np.random.Generator, num_neighbours: int = 40) -> "KnnModel":
        return cls(_unit(np.asarray(x, np.float32)).astype(np.float16), y.astype(np.float16), num_neighbours)
