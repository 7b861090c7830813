"""The selection rule: pure functions from predicted quality and price to a choice.

Every strategy shares these. Utility is `quality − cost_weight · price` (price = blended USD per Mtok); hard
constraints (allowed experts, a price cap, a quality floor) remove candidates before the choice. Ties go to the
cheaper expert, then to the earlier one, which is what makes "a larger cost weight never picks a pricier expert"
hold exactly. Batch functions work on (n, m) arrays for evaluation; `rank_candidates` serves one request.

`Caution` makes the rule conservative: the *prior* expert — the best by mean training score net of λ, what a
one-expert deployment would pick — is the default, and an expert priced below it wins only if its predicted
quality, less a margin κ, still beats the prior's net of λ: a lower confidence bound on the gain of stepping
down (safe policy improvement: leave the baseline policy only where the estimate is confident, Thomas et al.
2015, Laroche et al. 2019; RouteLLM's threshold routing is the two-expert case). Experts priced at or above the
prior carry no margin by default (`Challengers.CHEAPER`): under task shift it is the cheap experts' predicted wins
that do not transfer (measured in docs/router.md; an ungated margin on every challenger lost more on the held-out
setting). `Challengers` names the other scopes, measured in docs/router.md.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Sequence

import numpy as np


class SelectionRule(str, enum.Enum):
    ARGMAX = "argmax"  # max of quality − λ·price
    CASCADE = "cascade"  # walk up the price ladder; stop at the first expert as good as the best one, net of λ


@dataclass(frozen=True)
class RoutingConstraints:
    """Per-request routing parameters (the gateway's optional `routing` object)."""

    cost_weight: float = 0.0
    max_usd_per_mtok: float | None = None
    min_quality: float | None = None
    experts: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if not np.isfinite(self.cost_weight) or self.cost_weight < 0:
            raise ValueError(f"cost_weight must be a finite number ≥ 0, got {self.cost_weight!r}")
        if self.max_usd_per_mtok is not None and self.max_usd_per_mtok < 0:
            raise ValueError(f"max_usd_per_mtok must be ≥ 0, got {self.max_usd_per_mtok!r}")
        if self.min_quality is not None and not 0.0 <= self.min_quality <= 1.0:
            raise ValueError(f"min_quality must be in [0, 1], got {self.min_quality!r}")


def feasible_mask(
    quality: np.ndarray, price: np.ndarray, names: Sequence[str], constraints: RoutingConstraints
) -> np.ndarray:
    """(n, m) bool: which candidates pass the hard constraints (quality is (n, m), price is (m,))."""
    mask = np.ones(quality.shape, dtype=bool)
    if constraints.experts is not None:
        mask &= np.asarray([n in constraints.experts for n in names], dtype=bool)[None, :]
    if constraints.max_usd_per_mtok is not None:
        mask &= (price <= constraints.max_usd_per_mtok)[None, :]
    if constraints.min_quality is not None:
        mask &= quality >= constraints.min_quality
    return mask


class Challengers(str, enum.Enum):
    """Which experts the conservative rule's margin applies to (never the prior choice itself)."""

    CHEAPER = "cheaper"  # priced below the prior choice: the packaged rule
    NOT_DEARER = "not-dearer"  # priced at or below it: a same-priced peer must gain the margin too
    EVERY = "every"  # every expert: the online anchor, where feedback, not price, says which choice is safe


@dataclass(frozen=True)
class Caution:
    """Step down from the prior choice to a cheaper expert (by default; `challengers`) only for a predicted gain
    above `margin`.

    `prior` is each expert's mean training score, (m,) or per row (n, m); `margin` (m,), (n, 1) or (n, m), ≥ 0,
    is what a cheaper expert's predicted quality must beat the prior expert's by, net of λ. Zero: the plain rule.
    """

    prior: np.ndarray
    margin: np.ndarray
    challengers: Challengers = Challengers.CHEAPER
    """Which experts carry the margin: those priced below the prior choice (the packaged rule), at or below it, or
    every one but the prior choice (the online anchor, `switchboard.online.correction.anchor`)."""


def gated_margin(margin: float, confidence: np.ndarray | None, num_rows: int) -> np.ndarray:
    """(n, 1) the conservative rule's margin gated by the model's confidence that each row is of a task it was
    trained on (`QualityModel.predict_with_confidence`): κ · (1 − c), nearly none on a familiar task's prompt,
    nearly κ on an unfamiliar one's. Without a confidence (a model that cannot tell, e.g. trained without task
    labels) the rule is off (0), not on everywhere: an ungated margin costs the seen tasks (docs/router.md)."""
    if confidence is None:
        return np.zeros((num_rows, 1))
    c = np.clip(np.asarray(confidence, np.float64).reshape(-1, 1), 0.0, 1.0)
    return float(margin) * (1.0 - c)


def rule_margins(margin: float, by_confidence: bool, confidence: np.ndarray | None, num_rows: int) -> np.ndarray:
    """(n, 1) the conservative rule's margin per row: `margin` on every row, or gated by confidence
    (`gated_margin`) when `by_confidence` — what a trained router serves and what nested CV scores alike."""
    if by_confidence:
        return gated_margin(margin, confidence, num_rows)
    return np.full((num_rows, 1), float(margin))


def cautious_quality(quality: np.ndarray, caution: Caution, traded: np.ndarray, mask: np.ndarray, price: np.ndarray,
                     cost_weight: float) -> np.ndarray:
    """(n, m) quality less the margin on the row's challengers (`caution.challengers`: by default every expert whose
    list price is below that of the row's prior choice): the prior choice is the feasible expert with the best prior
    net of λ (cheaper on ties), so constraints never leave a row without its default."""
    prior = np.broadcast_to(np.asarray(caution.prior, np.float64), quality.shape)
    margin = np.broadcast_to(np.asarray(caution.margin, np.float64), quality.shape)
    prior_index = _argmax_choice(prior - cost_weight * np.broadcast_to(traded, quality.shape), mask, price)
    others = np.arange(quality.shape[1])[None, :] != prior_index[:, None]
    if caution.challengers is Challengers.EVERY:
        is_challenger = others
    elif caution.challengers is Challengers.NOT_DEARER:
        is_challenger = others & (price[None, :] <= price[prior_index][:, None])
    else:
        is_challenger = price[None, :] < price[prior_index][:, None]
    return np.where(is_challenger, quality - margin, quality)


def _tie_break_order(price: np.ndarray) -> np.ndarray:
    # Columns sorted cheapest first (stable), so argmax over reordered columns prefers the cheaper on ties.
    return np.argsort(price, kind="stable")


def _argmax_choice(utility: np.ndarray, mask: np.ndarray, price: np.ndarray) -> np.ndarray:
    order = _tie_break_order(price)
    masked = np.where(mask, utility, -np.inf)[:, order]
    return order[np.argmax(masked, axis=1)]


def choose(
    quality: np.ndarray,
    price: np.ndarray,
    names: Sequence[str],
    constraints: RoutingConstraints,
    rule: SelectionRule = SelectionRule.ARGMAX,
    request_price: np.ndarray | None = None,
    caution: Caution | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Chosen column per row and whether any candidate was feasible: (index (n,) int, is_feasible (n,) bool).

    `price` (m,) is the list price: the `max_usd_per_mtok` cap and tie-breaks use it. `request_price` (n, m),
    when given, is each request's own USD/Mtok (`router.cost`), which λ multiplies instead.
    With `caution`, every expert priced below each row's prior choice is judged on its quality less the margin
    (both rules; see `cautious_quality`).
    Where `is_feasible` is False the index is meaningless (0); callers must check it.
    """
    quality = np.atleast_2d(np.asarray(quality, dtype=np.float64))
    price = np.asarray(price, dtype=np.float64)
    mask = feasible_mask(quality, price, names, constraints)
    is_feasible = mask.any(axis=1)
    lam = float(constraints.cost_weight)
    traded = price[None, :] if request_price is None else np.atleast_2d(np.asarray(request_price, np.float64))
    if caution is not None:
        quality = cautious_quality(quality, caution, traded, mask, price, lam)
    utility = quality - lam * traded
    if rule is SelectionRule.ARGMAX:
        index = _argmax_choice(utility, mask, price)
    else:
        best = _argmax_choice(quality, mask, price)  # the highest-quality feasible expert
        best_utility = utility[np.arange(len(best)), best]
        good_enough = mask & (utility >= best_utility[:, None])
        index = _argmax_choice(-np.broadcast_to(traded, utility.shape), good_enough, price)
    return np.where(is_feasible, index, 0), is_feasible


@dataclass(frozen=True)
class RankedCandidate:
    expert: str
    predicted_quality: float
    usd_per_mtok: float
    utility: float
    is_feasible: bool
    judged_quality: float | None = None
    """`predicted_quality` less the conservative rule's margin where it applies (what `utility` was made of);
    None: no rule, the predicted quality itself. What the fleet-aware choice scores (`RouterChooser`)."""

    @property
    def quality_for_choice(self) -> float:
        return self.predicted_quality if self.judged_quality is None else self.judged_quality


def rank_candidates(
    quality: np.ndarray, price: np.ndarray, names: Sequence[str], constraints: RoutingConstraints,
    request_price: np.ndarray | None = None, caution: Caution | None = None,
) -> list[RankedCandidate]:
    """All candidates, feasible ones first, each group by utility descending (cheaper first on ties), so the
    first feasible one is `choose`'s pick under the argmax rule. A candidate's `usd_per_mtok` is the price λ multiplied:
    `request_price` (m,) when given, else `price`; with `caution` its utility carries the margin, its
    `predicted_quality` does not."""
    quality = np.asarray(quality, dtype=np.float64).reshape(-1)
    price = np.asarray(price, dtype=np.float64)
    traded = price if request_price is None else np.asarray(request_price, np.float64).reshape(-1)
    mask = feasible_mask(quality[None, :], price, names, constraints)[0]
    judged = quality
    if caution is not None:
        judged = cautious_quality(quality[None, :], caution, traded[None, :], mask[None, :], price,
                                  constraints.cost_weight)[0]
    utility = judged - constraints.cost_weight * traded
    order = sorted(range(len(names)), key=lambda j: (not mask[j], -utility[j], price[j], j))
    return [RankedCandidate(names[j], float(quality[j]), float(traded[j]), float(utility[j]), bool(mask[j]),
                            None if caution is None else float(judged[j])) for j in order]
