"""Which λ (`cost_weight`, quality per USD per Mtok of the request) a request is routed with.

Precedence, first that is set: the request's `routing.cost_weight`; its `routing.objective` preset; the
operator's `control_plane.policies.routing.usd_weight`; the `balanced` preset. So `"model": "auto"` with no
`routing` object saves money by default, and a configured `usd_weight` is honoured by the router and by
fleet-aware routing alike (it used to be ignored: the chooser always passed 0.0).

The presets were fixed before any evaluation, from the shipped price range (0.10 to 0.90 USD/Mtok, a gap of
0.8): `balanced` pays the gap for 0.02 of predicted quality (λ = 0.025), `cost` only for 0.08 (λ = 0.1),
`quality` always buys the best prediction (λ = 0). What each costs and gives up on the shipped data, in all
three CV splits, is in docs/router.md.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Objective(str, enum.Enum):
    QUALITY = "quality"
    BALANCED = "balanced"
    COST = "cost"


OBJECTIVE_COST_WEIGHTS: dict[Objective, float] = {
    Objective.QUALITY: 0.0,
    Objective.BALANCED: 0.025,
    Objective.COST: 0.1,
}

DEFAULT_OBJECTIVE = Objective.BALANCED


@dataclass(frozen=True)
class ResolvedCostWeight:
    cost_weight: float
    source: str  # "request", "objective:<name>", "config", "default:<name>"


def resolve_cost_weight(
    request_cost_weight: float | None,
    request_objective: Objective | str | None,
    configured_usd_weight: float | None,
    default_objective: Objective = DEFAULT_OBJECTIVE,
) -> ResolvedCostWeight:
    """The λ to route with and where it came from (see the module docstring for the precedence)."""
    if request_cost_weight is not None:
        return ResolvedCostWeight(float(request_cost_weight), "request")
    if request_objective is not None:
        objective = Objective(request_objective)
        return ResolvedCostWeight(OBJECTIVE_COST_WEIGHTS[objective], f"objective:{objective.value}")
    if configured_usd_weight is not None:
        return ResolvedCostWeight(float(configured_usd_weight), "config")
    return ResolvedCostWeight(OBJECTIVE_COST_WEIGHTS[default_objective], f"default:{default_objective.value}")
