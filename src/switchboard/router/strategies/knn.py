"""k nearest neighbours by cosine similarity, with a prior that takes over far from the training data.

An expert's estimate is a weighted mean of its scores on the k most similar training prompts, plus its global
mean as `prior_weight` pseudo-neighbours. With `temperature` = 0 every neighbour weighs 1 (the classic rule);
with `temperature` τ > 0 a neighbour at cosine similarity s weighs exp((s − 1) / τ) ≤ 1, so a prompt whose
neighbours are all far (an unseen kind of traffic) has little neighbour weight and its estimate shrinks towards
the prior — shrinkage by distance to the nearest neighbours, with no separate rule.
"""

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
    temperature: float = 0.0

    def predict(self, x: np.ndarray) -> np.ndarray:
        sims = _unit(np.asarray(x, np.float32)) @ self.points.astype(np.float32).T
        k = min(int(self.num_neighbours), sims.shape[1])
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        scores = self.scores.astype(np.float32)
        prior = scores.mean(axis=0)
        if self.temperature > 0:
            weight = np.exp((np.take_along_axis(sims, top, axis=1) - 1.0) / float(self.temperature))
        else:
            weight = np.ones(top.shape, np.float32)
        neighbour_sum = np.einsum("nk,nkm->nm", weight, scores[top])
        total = weight.sum(axis=1, keepdims=True) + self.prior_weight
        return ((neighbour_sum + self.prior_weight * prior) / total).astype(np.float32)

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, rng: np.random.Generator, num_neighbours: int = 40,
            prior_weight: float = 4.0, temperature: float = 0.0) -> "KnnModel":
        return cls(_unit(np.asarray(x, np.float32)).astype(np.float16), y.astype(np.float16), num_neighbours,
                   prior_weight, temperature)

    @classmethod
    def from_arrays(cls, arrays) -> "KnnModel":
        # Routers saved before `temperature` existed used the uniform rule.
        return super().from_arrays({"temperature": 0.0, **arrays})
