"""The learned router as the gateway's `ExpertChooser` for `"model": "auto"`.

The gateway hands over the latest user text, the request's `routing` object and the experts it serves. Served
experts the router was not trained on are skipped; if it knows none of them, the configured default expert
answers (so a config of unrelated experts still works). Prices (input and output) come from the config, not the
training data. λ comes from `router.objective.resolve_cost_weight` (request, objective preset, configured
`usd_weight`, else `balanced`), and the same λ is handed on to fleet-aware routing. With an `OnlineLearner`
(switchboard.online), the caller's tenant's feedback corrects the predicted quality.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from switchboard.config.schema import ExpertConfig
from switchboard.gateway.choosing import ChoiceError, DefaultExpertChooser, ExpertChoice
from switchboard.gateway.schemas import RoutingParams
from switchboard.router.objective import ResolvedCostWeight, resolve_cost_weight
from switchboard.router.router import RouteOutcome, Router
from switchboard.router.selection import RoutingConstraints

if TYPE_CHECKING:
    from switchboard.online import OnlineLearner


def resolved_cost_weight(routing: RoutingParams | None, configured_usd_weight: float | None) -> ResolvedCostWeight:
    if routing is None:
        return resolve_cost_weight(None, None, configured_usd_weight)
    return resolve_cost_weight(routing.cost_weight, routing.objective, configured_usd_weight)


def constraints_from(routing: RoutingParams | None, cost_weight: float = 0.0) -> RoutingConstraints:
    if routing is None:
        return RoutingConstraints(cost_weight=cost_weight)
    return RoutingConstraints(
        cost_weight=cost_weight,
        max_usd_per_mtok=routing.max_usd_per_mtok,
        min_quality=routing.min_quality,
        experts=None if routing.experts is None else frozenset(routing.experts),
    )


def stand_ins(unknown_ids: Sequence[str], constraints: RoutingConstraints,
              prices: Mapping[str, tuple[float, float]]) -> tuple[str, ...]:
    """The served experts the router has no prediction for that the request's constraints allow (the price cap
    on the blended list price, as for the router's own experts; `prices` are (input, output) USD/Mtok); none
    when the request sets a quality floor, which an expert of unknown quality cannot be shown to meet."""
    if constraints.min_quality is not None:
        return ()
    return tuple(
        e for e in unknown_ids
        if (constraints.experts is None or e in constraints.experts)
        and (constraints.max_usd_per_mtok is None or sum(prices[e]) / 2 <= constraints.max_usd_per_mtok)
    )


def configured_usd_weight(policies: Any) -> float | None:
    """`control_plane.policies.routing.usd_weight` when the operator set it, else None (the objective decides).
    `policies` is the typed `ControlSettings` (or, from older callers, its dict form)."""
    if isinstance(policies, Mapping):
        routing = policies.get("routing") or {}
        value = routing.get("usd_weight") if isinstance(routing, Mapping) else None
        return None if value is None else float(value)
    routing = getattr(policies, "routing", None)
    if routing is None or "usd_weight" not in routing.model_fields_set:
        return None
    return float(routing.usd_weight)


class RouterChooser:
    """Routes with a loaded `Router`; about a millisecond per request on the static path, so it runs off-loop."""

    blocking = True

    def __init__(self, router: Router, default_expert_id: str, configured_usd_weight: float | None = None,
                 online: "OnlineLearner | None" = None) -> None:
        self.router = router
        self.fallback = DefaultExpertChooser(default_expert_id)
        self.configured_usd_weight = configured_usd_weight
        self.online = online  # the gateway feeds it from POST /v1/feedback

    def choose(self, prompt_text: str, routing: RoutingParams | None, candidates: Sequence[ExpertConfig]) -> ExpertChoice:
        if routing is not None and routing.experts is not None:
            # Only the experts the request allows: when the router knows none of them (say, a local model it was
            # not trained on), the default rule chooses among them, as when it knows no served expert at all.
            candidates = [c for c in candidates if c.id in routing.experts]
        lam = resolved_cost_weight(routing, self.configured_usd_weight)
        constraints = constraints_from(routing, lam.cost_weight)
        prices = {c.id: (c.usd_per_mtok_input, c.usd_per_mtok_output) for c in candidates}
        adjust = self.online.adjuster(current_tenant()) if self.online is not None else None
        decision = self.router.route(prompt_text, constraints, [c.id for c in candidates], prices, adjust=adjust)
        if adjust is not None:
            adjust.settle(decision.expert)  # so x-switchboard-route names the expert an exploration tried
        if decision.outcome is RouteOutcome.NO_KNOWN_CANDIDATE:
            chosen = self.fallback.choose(prompt_text, routing, candidates)
            return dataclasses.replace(chosen, reason="the router knows none of the candidates: the default expert, else the first")
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
            "cost_weight_from": lam.source,
            "predicted_usd": float(f"{decision.request_usd.get(decision.expert, 0.0):.3g}"),
            "candidates": len(decision.ranking),
        }
        if adjust is not None:
            info["online"] = adjust.info()
        # The fleet-aware choice scores what the router's own choice did: quality less the conservative rule's
        # margin where it applies, so a warm cheap expert does not win on an estimate the router would not trust.
        candidates = tuple(
            (c.expert, float(c.quality_for_choice), float(c.usd_per_mtok)) for c in decision.ranking if c.is_feasible
        )
        return ExpertChoice(decision.expert, reason=decision.reason, fallbacks=fallbacks, route_info=info,
                            candidates=candidates, cost_weight=constraints.cost_weight,
                            stand_ins=stand_ins(decision.skipped, constraints, prices))


def current_tenant() -> str:
    """The tenant of the request being served (its API key's tenant; one anonymous tenant with auth off)."""
    from switchboard.gateway.auth import current_caller
    from switchboard.online import ANONYMOUS

    caller = current_caller.get()
    return ANONYMOUS if caller is None else caller.key.tenant
