"""The math of learning from feedback: a local Bayesian recalibration of the router's predicted quality.

The router predicts p_j(x), expert j's expected score on prompt x. A tenant's feedback events (x_i, j_i, s_i)
say how good that prediction was where the tenant's traffic is. Near a new prompt x, expert j's score is
modelled as linear in the router's prediction,

    s ≈ a + b · (p_j(x_i) − p_j(x)),      so that the corrected quality at x itself is a,

fitted by Bayesian weighted least squares on the `num_neighbors` events of j most similar to x (cosine
similarity ≥ `min_similarity`; an event's weight grows linearly from 0 there to 1 at an identical prompt),
with the prior "the router is right": a ~ N(p_j(x), noise_var / prior_events), b ~ N(1, slope_prior_var).
With b held at 1 (slope_prior_var 0) this is an offset: the kernel-weighted mean residual s − p, shrunk toward
0. Letting b move lets the feedback also say how much the router's *per-prompt* differences are worth there:
on a task the router never saw they are mostly noise (b → 0, the local mean score of j wins), on familiar
traffic they hold (b ≈ 1). The posterior's uncertainty in a falls as evidence accumulates; an expert never
tried near x keeps the router's prediction and the prior's uncertainty, which is what Thompson sampling
explores (Chapelle & Li 2011; the bandit view of routing is RouterBench's, and RouteLLM learns routers from
the same kind of preference feedback).

Everything here is a pure function of arrays; `switchboard.online.learner` owns the state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from switchboard.config.schema import OnlineLearningConfig


@dataclass(frozen=True)
class Events:
    """A snapshot of a tenant's feedback events: unit-norm contexts (n, d), expert index (n,), the router's
    predicted quality of that expert at that prompt (n,), and the feedback score (n,)."""

    contexts: np.ndarray
    experts: np.ndarray
    predicted: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


@dataclass(frozen=True)
class Correction:
    """Posterior of the corrected quality minus the router's, per expert asked for: mean, standard deviation,
    and evidence (the sum of the weights of the events used)."""

    mean: np.ndarray
    std: np.ndarray
    evidence: np.ndarray


def unit(context: np.ndarray) -> np.ndarray:
    """The context scaled to unit L2 norm (an all-zero vector stays zero), as float32."""
    c = np.asarray(context, np.float32).reshape(-1)
    norm = float(np.linalg.norm(c))
    return c / norm if norm > 0 else c


def correction(events: Events, context: np.ndarray, experts: np.ndarray, predicted: np.ndarray,
               settings: OnlineLearningConfig) -> Correction:
    """The posterior correction near `context` (unit norm, as `unit` gives) of each expert index in `experts`,
    whose router predictions there are `predicted`. With no events near it, an expert's correction is the
    prior's: mean 0, std sqrt(noise_var / prior_events)."""
    experts = np.asarray(experts)
    mean, evidence = np.zeros(len(experts)), np.zeros(len(experts))
    std = np.full(len(experts), np.sqrt(settings.noise_var / settings.prior_events))
    if not len(events):
        return Correction(mean, std, evidence)
    similarity = events.contexts @ context
    near = np.nonzero(similarity >= settings.min_similarity)[0]
    if not len(near):
        return Correction(mean, std, evidence)
    sims, owners = similarity[near], events.experts[near]
    # Prior precisions, in units of one full-weight event: the slope's is noise_var / slope_prior_var.
    slope_precision = settings.noise_var / settings.slope_prior_var if settings.slope_prior_var > 0 else np.inf
    for c, j in enumerate(experts):
        mine = np.nonzero(owners == j)[0]
        if not len(mine):
            continue
        if len(mine) > settings.num_neighbors:  # the k most similar events of expert j
            mine = mine[np.argpartition(-sims[mine], settings.num_neighbors - 1)[: settings.num_neighbors]]
        rows = near[mine]
        w = (sims[mine] - settings.min_similarity) / (1.0 - settings.min_similarity)
        dx = events.predicted[rows].astype(np.float64) - predicted[c]  # the prediction's difference from here
        ds = events.scores[rows].astype(np.float64) - predicted[c]  # the score's difference from the prior mean
        evidence[c] = float(w.sum())
        if np.isinf(slope_precision):  # b fixed at 1: an offset
            a_precision = settings.prior_events + evidence[c]
            mean[c] = float(w @ (ds - dx)) / a_precision
            std[c] = np.sqrt(settings.noise_var / a_precision)
            continue
        # Normal equations of (a − p, b − 1) with the prior at 0: A θ = r, posterior covariance noise_var · A⁻¹.
        target = ds - dx  # s − p − 1·dx: what is left for (a − p) + (b − 1)·dx
        a = np.array([[settings.prior_events + w.sum(), w @ dx], [w @ dx, slope_precision + w @ (dx * dx)]])
        r = np.array([w @ target, w @ (target * dx)])
        inverse = np.linalg.inv(a)
        mean[c] = float((inverse @ r)[0])
        std[c] = float(np.sqrt(settings.noise_var * inverse[0, 0]))
    return Correction(mean, std, evidence)


@dataclass(frozen=True)
class ExplorationBudget:
    """How many of a tenant's routing decisions were made, and how many of them sampled the posterior."""

    num_decisions: int = 0
    num_sampled: int = 0

    def allows_sample(self, explore_fraction: float) -> bool:
        """Sampling keeps `num_sampled ≤ explore_fraction × num_decisions` after this decision, rounded down
        — a hard bound at every moment, not an average that a burst could overshoot."""
        return self.num_sampled + 1 <= explore_fraction * (self.num_decisions + 1)

    def after(self, sampled: bool) -> "ExplorationBudget":
        return ExplorationBudget(self.num_decisions + 1, self.num_sampled + int(sampled))
