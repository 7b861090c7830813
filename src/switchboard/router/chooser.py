"""The learned router as the gateway's `ExpertChooser` for `"model": "auto"`.

The gateway hands over the latest user text, the request's `routing` object and the experts it serves. Served
experts the router was not trained on are skipped; if it knows none of them, the configured default expert
answers (so a config of unrelated experts still works). Prices come from the config, not the training data.
With an `OnlineLearner` (switchboard.online), the caller's tenant's feedback corrects the predicted quality.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from switchboard.config.schema import ExpertConfig
from switchboard.gateway.choosing import ChoiceError, DefaultExpertChooser, ExpertChoice
from switchboard.gateway.schemas import RoutingParams
from switchboard.router.router import RouteOutcome, Router
from switchboard.router.selection import RoutingConstraints

if TYPE_CHECKING:
    from switchboard.online import OnlineLearner


def constraints_from(routing: RoutingParams | None) -> RoutingConstraints:
    if routing is None:
        return RoutingConstraints()
    return RoutingConstraints(
        cost_weight=routing.cost_weight or 0.0,
        max_usd_per_mtok=routing.max_usd_per_mtok,
        min_quality=routing.min_quality,
        experts=None if routing.experts is None else frozenset(routing.experts),
    )


class RouterChooser:
    """Routes with a loaded `Router`; about a millisecond per request on the static path, so it runs off-loop."""

    blocking = True

    def __init__(self, router: Router, default_expert_id: str, online: "OnlineLearner | None" = None) -> None:
        self.router = router
        self.fallback = DefaultExpertChooser(default_expert_id)
        self.online = online  # the gateway feeds it from POST /v1/feedback

    def choose(self, prompt_text: str, routing: RoutingParams | None, candidates: Sequence[ExpertConfig]) -> ExpertChoice:
        constraints = constraints_from(routing)
        prices = {c.id: c.usd_per_mtok_blended for c in candidates}
        adjust = self.online.adjuster(current_tenant()) if self.online is not None else None
        decision = self.router.route(prompt_text, constraints, [c.id for c in candidates], prices, adjust=adjust)
        if decision.outcome is RouteOutcome.NO_KNOWN_CANDIDATE:
            return self.fallback.choose(prompt_text, routing, candidates)
        if decision.outcome is RouteOutcome.NO_FEASIBLE_EXPERT or decision.expert is None:
            raise ChoiceError(f"{decision.reason}; cost_weight={constraints.cost_weight:g}")
        chosen = decision.chosen()
        assert chosen is not None
        fallbacks = tuple(c.expert for c in decision.ranking if c.is_feasible and c.expert != decision.expert)
        info = {
            "strategy": self.router.strategy,
            "predicted_quality": round(chosen.predicted_quality, 4),
            "usd_per_mtok": round(chosen.usd_per_mtok, 6),
            "cost_weight": constraints.cost_weight,
            "candidates": len(decision.ranking),
        }
        if adjust is not None:
            info["online"] = adjust.info()
        candidates = tuple(
            (c.expert, float(c.predicted_quality), float(c.usd_per_mtok)) for c in decision.ranking if c.is_feasible
        )
        return ExpertChoice(decision.expert, reason=decision.reason, fallbacks=fallbacks, route_info=info,
                            candidates=candidates, cost_weight=constraints.cost_weight)


def current_tenant() -> str:
    """The tenant of the request being served (its API key's tenant; one anonymous tenant with auth off)."""
    from switchboard.gateway.auth import current_caller
    from switchboard.online import ANONYMOUS

    caller = current_caller.get()
    return ANONYMOUS if caller is None else caller.key.tenant
