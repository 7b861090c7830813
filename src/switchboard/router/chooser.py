"""The learned router as the gateway's `ExpertChooser` for `"model": "auto"`.

The gateway hands over the latest user text, the request's `routing` object and the experts it serves. Served
experts the router was not trained on are skipped; if it knows none of them, the configured default expert
answers (so a config of unrelated experts still works). Prices come from the config, not the training data.
"""

from __future__ import annotations

from typing import Sequence

from switchboard.config.schema import ExpertConfig
from switchboard.gateway.choosing import ChoiceError, DefaultExpertChooser, ExpertChoice
from switchboard.gateway.schemas import RoutingParams
from switchboard.router.router import RouteOutcome, Router
from switchboard.router.selection import RoutingConstraints


def constraints_from(routing: RoutingParams | None) -> RoutingConstraints:
    if routing is None:
        return RoutingConstraints()
    return RoutingConstraints(
        cost_weight=routing.cost_weight or 0.0,
        max_usd_per_mtok=routing.max_usd_per_mtok,
        min_quality=routing.min_quality,
        experts=None if routing.experts is None else frozenset(routing.experts),
    )


def stand_ins(unknown_ids: Sequence[str], constraints: RoutingConstraints, prices: dict[str, float]) -> tuple[str, ...]:
    """The served experts the router has no prediction for that the request's constraints allow; none when the
    request sets a quality floor, which an expert of unknown quality cannot be shown to meet."""
    if constraints.min_quality is not None:
        return ()
    return tuple(
        e for e in unknown_ids
        if (constraints.experts is None or e in constraints.experts)
        and (constraints.max_usd_per_mtok is None or prices[e] <= constraints.max_usd_per_mtok)
    )


class RouterChooser:
    """Routes with a loaded `Router`; about a millisecond per request on the static path, so it runs off-loop."""

    blocking = True

    def __init__(self, router: Router, default_expert_id: str) -> None:
        self.router = router
        self.fallback = DefaultExpertChooser(default_expert_id)

    def choose(self, prompt_text: str, routing: RoutingParams | None, candidates: Sequence[ExpertConfig]) -> ExpertChoice:
        constraints = constraints_from(routing)
        prices = {c.id: c.usd_per_mtok_blended for c in candidates}
        decision = self.router.route(prompt_text, constraints, [c.id for c in candidates], prices)
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
        candidates = tuple(
            (c.expert, float(c.predicted_quality), float(c.usd_per_mtok)) for c in decision.ranking if c.is_feasible
        )
        return ExpertChoice(decision.expert, reason=decision.reason, fallbacks=fallbacks, route_info=info,
                            candidates=candidates, cost_weight=constraints.cost_weight,
                            stand_ins=stand_ins(decision.skipped, constraints, prices))
