"""Exploration: which decisions may try something other than the posterior's best, and what they try.

Why aim it: the learner only sees an expert where it is routed, and it is routed where the router already rates
it. On a task the router never saw, an expert it underrates stays untried and its feedback never comes
(selection bias; docs/online-learning.md). The default rule, `optimistic`, is optimism in the face of
uncertainty (UCB, Auer, Cesa-Bianchi & Fischer 2002) near the prompt:

- an exploring decision values each expert but the posterior's best at its posterior mean + `explore_ucb_sd`
  posterior SDs near the prompt (the best keeps its mean: the decision is spent on learning about the others,
  so at λ = 0 it always tries one whose optimistic value beats the best). An expert with little evidence there
  keeps the prior's wide SD, so it is the one lifted most: the bonus is aimed at the under-tried. Experts whose
  events there weigh less than `explore_min_evidence` are valued as perfect (quality 1, the least tried first)
  — forced exploration, off by default: trying every expert, hopeless ones included, cost regret and bought
  nothing on the tuning tasks;
- the router's own trade-off then picks, so exploration respects the request's constraints and λ: an expert
  too expensive to be worth it even at its optimistic value is not tried. The decision is charged to the budget
  all the same: its values were not the posterior mean's, and whether the mean would have chosen differently
  is not known here, so the bound counts every decision whose values were changed;
- a decision explores only when there is something to learn near the prompt — an expert other than the
  posterior's best whose optimistic value beats the best mean, or an under-tried one — and the tenant's budget
  allows it: at every moment, explored decisions ≤ `explore_fraction` × decisions (`ExplorationBudget`).
  Otherwise it routes on the posterior mean exactly and spends nothing: no uncounted decision deviates from it.

`thompson` is the earlier rule (Chapelle & Li 2011): an exploring decision samples the posterior, whenever the
budget allows.

`top_two` is best-arm identification (top-two Thompson sampling, Russo 2016): the misses that remain are about
telling the top two or three experts apart, so an exploring decision is spent on the *challenger* — the expert
that a posterior draw ranks first where the posterior mean does not. It draws up to `TOP_TWO_DRAWS` samples of
the posterior at once and routes on the first whose best expert is not the mean's best; an expert with no real
chance of being best is almost never drawn first, so hopeless experts are not tried. When no draw dethrones the
mean's best (it is best with probability ≳ 1 − 1/`TOP_TWO_DRAWS`), there is nothing to learn here: the decision
routes on the mean and spends nothing.

Everything here is a pure function of arrays and small values; `switchboard.online.learner` owns the state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from switchboard.config.schema import OnlineLearningConfig

TOP_TWO_DRAWS = 64
"""Posterior draws a `top_two` decision looks through for a challenger: it explores only when the mean's best
loses in some draw, i.e. is not best with probability ≳ 1/64."""

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


def under_tried(evidence: np.ndarray, settings: OnlineLearningConfig) -> np.ndarray:
    """Which experts have less evidence near the prompt than `explore_min_evidence` (a boolean mask)."""
    return np.asarray(evidence, np.float64) < settings.explore_min_evidence


def optimistic_quality(upper: np.ndarray, evidence: np.ndarray, is_under_tried: np.ndarray,
                       settings: OnlineLearningConfig) -> np.ndarray:
    """An exploring decision's quality: `upper` (the optimistic values), but 1 (just under, the least tried
    highest) for under-tried experts."""
    out = np.asarray(upper, np.float64).copy()
    tried = np.asarray(evidence, np.float64)[is_under_tried] / max(settings.explore_min_evidence, 1e-9)
    out[is_under_tried] = 1.0 - LEAST_TRIED_TIE_BREAK * tried
    return out


@dataclass(frozen=True)
class Exploration:
    """What one decision's correction does: the quality to route on, whether it explores, and the experts it
    offers to explore (those whose optimistic value beats the best mean, and the under-tried; the challenger for
    `top_two`; empty for Thompson sampling or when not exploring)."""

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
    if settings.exploration == "top_two":
        return top_two(mean_quality, std, budget, settings, rng)
    mask = under_tried(evidence, settings)
    best = int(np.argmax(mean_quality))
    upper = np.clip(mean_quality + settings.explore_ucb_sd * np.asarray(std, np.float64), 0.0, 1.0)
    upper[best] = mean_quality[best]  # the best stays at its mean: the decision is for learning about the others
    contenders = upper > mean_quality[best]
    if not (mask.any() or contenders.any()) or not budget.allows_sample(settings.explore_fraction):
        return Exploration(mean_quality, False, ())
    offered = tuple(int(j) for j in np.nonzero(mask | contenders)[0])
    return Exploration(optimistic_quality(upper, evidence, mask, settings), True, offered)


def top_two(mean_quality: np.ndarray, std: np.ndarray, budget: ExplorationBudget, settings: OnlineLearningConfig,
            rng: np.random.Generator) -> Exploration:
    """Top-two Thompson sampling's challenger step: the first of `TOP_TWO_DRAWS` posterior draws whose best
    expert is not the mean's best, offered as that expert (the router's trade-off still picks under λ, on the
    draw's values); none such, or no budget: the mean, nothing spent. The draws are taken only when the budget
    allows, so a decision that cannot explore costs no sampling."""
    mean_quality = np.asarray(mean_quality, np.float64)
    if len(mean_quality) < 2 or not budget.allows_sample(settings.explore_fraction):
        return Exploration(mean_quality, False, ())
    draws = np.clip(mean_quality + np.asarray(std, np.float64) * rng.standard_normal((TOP_TWO_DRAWS, len(mean_quality))), 0.0, 1.0)
    winners = np.argmax(draws, axis=1)
    dethroned = np.nonzero(winners != int(np.argmax(mean_quality)))[0]
    if not len(dethroned):
        return Exploration(mean_quality, False, ())
    first = int(dethroned[0])
    return Exploration(draws[first], True, (int(winners[first]),))
