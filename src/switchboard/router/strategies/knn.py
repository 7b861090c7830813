"""k nearest neighbours by cosine similarity, with a prior that takes over far from the training data.

An expert's estimate is a weighted mean of its scores on the k most similar training prompts, plus its global
mean as `prior_weight` pseudo-neighbours. With `temperature` = 0 every neighbour weighs 1 (the classic rule);
with `temperature` τ > 0 a neighbour at cosine similarity s weighs exp((s − 1) / τ) ≤ 1, so a prompt whose
neighbours are all far (an unseen kind of traffic) has little neighbour weight and its estimate shrinks towards
the prior — shrinkage by distance to the nearest neighbours, with no separate rule.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from switchboard.router.strategies.base import QualityModel, StrategyName
from switchboard.router.strategies.robust import task_mean_scores


@functools.cache
def _blas_controller():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()  # introspects the loaded BLAS once per process, on first use


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
    prior_scores: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.float32))
    """(m,) the prior the estimates fall back to; empty: each expert's mean over the training prompts."""

    def __post_init__(self) -> None:
        # float16 on disk, float32 to compute: converted once here, not per request (~50 ms under load).
        object.__setattr__(self, "_points32", np.ascontiguousarray(self.points, np.float32))
        object.__setattr__(self, "_scores32", np.asarray(self.scores, np.float32))

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.predict_with_familiarity(x)[0]

    def prior(self) -> np.ndarray:
        """(m,) the estimate of a prompt with no neighbour weight: `prior_scores`, else each expert's mean
        training score."""
        if np.size(self.prior_scores):
            return np.asarray(self.prior_scores, np.float32)
        return self._scores32.mean(axis=0)

    def predict_with_familiarity(self, x: np.ndarray, num_nearest: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """((n, m) estimates, (n,) familiarity): the familiarity of a row is the mean cosine similarity of its
        `num_nearest` most similar training prompts — how close it is to anything the router was trained on."""
        # One BLAS thread: a 1 × n_train product split over threads that share two busy cores took 30–130 ms
        # (measured under load), single-threaded 0.1 ms.
        unit = _unit(np.asarray(x, np.float32))
        with _blas_controller().limit(limits=1):
            # One row (a request) as a matrix-vector product: sgemm with one row ran ~40× slower here.
            sims = (self._points32 @ unit[0])[None, :] if len(unit) == 1 else unit @ self._points32.T
        k = min(max(int(self.num_neighbours), num_nearest), sims.shape[1])
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        top_sims = np.take_along_axis(sims, top, axis=1)
        order = np.argsort(-top_sims, axis=1)  # k ≤ a few hundred: cheap, and fixes which k are the nearest
        top, top_sims = np.take_along_axis(top, order, axis=1), np.take_along_axis(top_sims, order, axis=1)
        familiarity = top_sims[:, :num_nearest].mean(axis=1)
        k = min(int(self.num_neighbours), sims.shape[1])
        top, top_sims = top[:, :k], top_sims[:, :k]
        scores = self._scores32
        prior = self.prior()
        if self.temperature > 0:
            weight = np.exp((top_sims - 1.0) / float(self.temperature))
        else:
            weight = np.ones(top.shape, np.float32)
        neighbour_sum = np.einsum("nk,nkm->nm", weight, scores[top])
        total = weight.sum(axis=1, keepdims=True) + self.prior_weight
        return ((neighbour_sum + self.prior_weight * prior) / total).astype(np.float32), familiarity.astype(np.float32)

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, rng: np.random.Generator, num_neighbours: int = 40,
            prior_weight: float = 4.0, temperature: float = 0.0, groups: np.ndarray | None = None,
            prior_by_task: bool = False) -> "KnnModel":
        """`prior_by_task` (needs `groups`, a task id per row): the prior is each expert's mean over *tasks* of
        its per-task mean score, so the fallback is the expert that is best on an average task rather than on an
        average prompt of the training mix."""
        prior = np.zeros(0, np.float32)
        if prior_by_task:
            if groups is None:
                raise ValueError("prior_by_task needs a task id per training row (groups)")
            prior = task_mean_scores(y, groups).mean(axis=0).astype(np.float32)
        return cls(_unit(np.asarray(x, np.float32)).astype(np.float16), y.astype(np.float16), num_neighbours,
                   prior_weight, temperature, prior)

    @classmethod
    def from_arrays(cls, arrays) -> "KnnModel":
        # Routers saved before `temperature` existed used the uniform rule; before `prior_scores`, the mean.
        return super().from_arrays({"temperature": 0.0, "prior_scores": np.zeros(0, np.float32), **arrays})
