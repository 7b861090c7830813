"""Exploration: which decisions may try something other than the posterior's best, and what they try.

Why not Thompson samples alone: the learner only sees an expert where it is routed, and it is routed where the
router already rates it. On a task the router never saw, an expert it underrates by 0.5 is practically never
sampled from a posterior centred on the router's prediction, so its feedback never comes (selection bias;
docs/online-learning.md). The default rule aims exploration at the evidence that is missing instead:

- an expert is **under-tried** near a prompt when the similarity-weighted evidence of its events there (as
  `correction` counts it) is below `explore_min_evidence`;
- an exploring decision values every under-tried expert as perfect (quality 1; ties: the least tried first) and
  keeps the posterior mean for the others. The router's own trade-off then picks, so exploration respects the
  request's constraints and λ: an expert too expensive to be worth it even if perfect is never tried, and at
  λ > 0 the cheaper of two untried experts goes first. This is optimism in the face of uncertainty (the UCB
  idea of Auer, Cesa-Bianchi & Fischer 2002) with the score's upper bound as the optimistic value, because the
  router's predicted quality is exactly what cannot be trusted on new traffic; visiting under-tried experts in
  turn is forced exploration, as in ε-greedy with ε spent only where evidence is missing;
- a decision explores only when some expert is under-tried there and the tenant's budget allows one: at every
  moment, explored decisions ≤ `explore_fraction` × decisions (`ExplorationBudget`). With nothing left to
  learn near the prompt, no budget is spent and the decision takes the posterior mean.

`thompson` keeps the earlier rule (Chapelle & Li 2011): an exploring decision samples the posterior.
Everything here is a pure function of arrays and small values; `switchboard.online.learner` owns the state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from switchboard.config.schema import OnlineLearningConfig

LEAST_TRIED_TIE_BREAK = 1e-3
"""How far below 1 the most-tried under-tried expert is valued: enough to order them, too little to matter
against a price difference."""


@dataclass(frozen=True)
class ExplorationBudget:
    """How many of a tenant's routing decisions were made, and how many of them explored."""

    num_decisions: int = 0
    num_sampled: int = 0

    def allows_sample(self, explore_fraction: float) -> bool:
        """Exploring keeps `num_sampled ≤ explore_fraction × num_decisions` after this decision, rounded down
        — a hard bound at every moment, not an average that a burst could overshoot."""
        return self.num_sampled + 1 <= explore_fraction * (self.num_decisions + 1)

    def after(self, sampled: bool) -> "ExplorationBudget":
        return ExplorationBudget(self.num_decisions + 1, self.num_sampled + int(sampled))

    def refunded(self) -> "ExplorationBudget":
        """One explored decision that did not explore after all (the router chose an expert it was not
        offered): given back, which can only lower `num_sampled`, so the bound still holds."""
        return ExplorationBudget(self.num_decisions, max(0, self.num_sampled - 1))


def under_tried(evidence: np.ndarray, settings: OnlineLearningConfig) -> np.ndarray:
    """Which experts have less evidence near the prompt than `explore_min_evidence` (a boolean mask)."""
    return np.asarray(evidence, np.float64) < settings.explore_min_evidence


def optimistic_quality(mean_quality: np.ndarray, evidence: np.ndarray, is_under_tried: np.ndarray,
                       settings: OnlineLearningConfig) -> np.ndarray:
    """An exploring decision's quality: the posterior mean, but 1 (just under, the least tried highest) for
    under-tried experts."""
    out = np.asarray(mean_quality, np.float64).copy()
    tried = np.asarray(evidence, np.float64)[is_under_tried] / max(settings.explore_min_evidence, 1e-9)
    out[is_under_tried] = 1.0 - LEAST_TRIED_TIE_BREAK * tried
    return out


@dataclass(frozen=True)
class Exploration:
    """What one decision's correction does: the quality to route on, whether it explores, and the experts it
    offers to explore (the under-tried ones; empty for Thompson sampling or when not exploring)."""

    quality: np.ndarray
    is_exploring: bool
    offered: tuple[int, ...]


def explore(mean_quality: np.ndarray, std: np.ndarray, evidence: np.ndarray, budget: ExplorationBudget,
            settings: OnlineLearningConfig, rng: np.random.Generator) -> Exploration:
    """One decision's quality from the posterior (`mean_quality` already corrected and clipped to [0, 1],
    `std` and `evidence` per expert, as `correction` gives), under the tenant's `budget`. The caller charges
    the budget with `budget.after(result.is_exploring)`."""
    if settings.exploration == "thompson":
        if not budget.allows_sample(settings.explore_fraction):
            return Exploration(mean_quality, False, ())
        sample = np.clip(mean_quality + std * rng.standard_normal(len(mean_quality)), 0.0, 1.0)
        return Exploration(sample, True, ())
    mask = under_tried(evidence, settings)
    upper = np.clip(mean_quality + settings.explore_ucb_sd * np.asarray(std, np.float64), 0.0, 1.0)
    best = int(np.argmax(mean_quality))
    contenders = upper > mean_quality[best]
    contenders[best] = False
    if not (mask.any() or contenders.any()) or not budget.allows_sample(settings.explore_fraction):
        return Exploration(mean_quality, False, ())
    offered = tuple(int(j) for j in np.nonzero(mask | contenders)[0])
    return Exploration(optimistic_quality(upper, evidence, mask, settings), True, offered)
