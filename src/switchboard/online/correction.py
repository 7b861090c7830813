"""The math of learning from feedback: a local Bayesian correction of the router's predicted quality.

The router predicts q̂_j(x), expert j's expected score on prompt x. A tenant's feedback events (x_i, j_i, s_i)
give residuals r_i = s_i − q̂_{j_i}(x_i). Near a new prompt x the residual of expert j is modelled as one
unknown offset δ_j with prior N(0, noise_var / prior_events), each of the `num_neighbors` most similar
events of j (cosine similarity ≥ `min_similarity`) an observation of it with variance noise_var / w_i, where
w_i grows linearly from 0 at `min_similarity` to 1 at identical prompts. The posterior is then

    mean_j = Σ w_i r_i / (prior_events + Σ w_i),    var_j = noise_var / (prior_events + Σ w_i)

— a kernel-weighted nearest-neighbour average shrunk toward "the router is right", with an uncertainty that
falls as evidence accumulates. A task the router never saw (its prompts far from the training data but close
to each other) gets its own corrections after a few dozen events; an expert never tried near x keeps the
router's prediction and the prior's uncertainty, which is what Thompson sampling explores (Chapelle & Li 2011;
the bandit view of routing is that of RouterBench and of RouteLLM's preference-data training).

Everything here is a pure function of arrays; `switchboard.online.learner` owns the state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from switchboard.config.schema import OnlineLearningConfig


@dataclass(frozen=True)
class Events:
    """A snapshot of a tenant's feedback events: unit-norm contexts (n, d), expert index (n,), residual (n,)."""

    contexts: np.ndarray
    experts: np.ndarray
    residuals: np.ndarray

    def __len__(self) -> int:
        return len(self.residuals)


@dataclass(frozen=True)
class Correction:
    """Posterior of the residual of each expert near one prompt: mean, standard deviation, evidence (Σ w)."""

    mean: np.ndarray
    std: np.ndarray
    evidence: np.ndarray


def unit(context: np.ndarray) -> np.ndarray:
    """The context scaled to unit L2 norm (an all-zero vector stays zero), as float32."""
    c = np.asarray(context, np.float32).reshape(-1)
    norm = float(np.linalg.norm(c))
    return c / norm if norm > 0 else c


def correction(events: Events, context: np.ndarray, num_experts: int, settings: OnlineLearningConfig) -> Correction:
    """The posterior residual of every expert 0..num_experts-1 near `context` (unit norm, as `unit` gives).

    With no events near it, an expert's posterior is the prior: mean 0, std sqrt(noise_var / prior_events).
    """
    weighted = np.zeros(num_experts)
    evidence = np.zeros(num_experts)
    if len(events):
        similarity = events.contexts @ context
        near = similarity >= settings.min_similarity
        if near.any():
            idx = np.nonzero(near)[0]
            sims, experts, residuals = similarity[idx], events.experts[idx], events.residuals[idx]
            weights = (sims - settings.min_similarity) / (1.0 - settings.min_similarity)
            for j in np.unique(experts):
                mine = np.nonzero(experts == j)[0]
                if len(mine) > settings.num_neighbors:  # the k most similar events of expert j
                    mine = mine[np.argpartition(-sims[mine], settings.num_neighbors - 1)[: settings.num_neighbors]]
                weighted[j] = float(weights[mine] @ residuals[mine])
                evidence[j] = float(weights[mine].sum())
    precision = settings.prior_events + evidence
    return Correction(mean=weighted / precision, std=np.sqrt(settings.noise_var / precision), evidence=evidence)


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
