"""How the gateway picks an expert for `"model": "auto"`: an `ExpertChooser`.

The default chooser answers with the configured default expert; the learned router plugs in here with the
same interface (see `switchboard.router`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

from switchboard.config.schema import ExpertConfig
from switchboard.gateway.schemas import RoutingParams


@dataclasses.dataclass(frozen=True, slots=True)
class ExpertChoice:
    """The chosen expert, the experts to fall back to in order, and what to tell the client about why."""

    expert_id: str
    reason: str
    fallbacks: tuple[str, ...] = ()
    route_info: dict[str, Any] | None = None  # sent as JSON in the x-switchboard-route header
    candidates: tuple[tuple[str, float, float], ...] = ()
    """Feasible experts as (id, predicted quality, USD/Mtok), best first: what fleet-aware routing re-scores."""
    cost_weight: float | None = None
    """The λ the router used for this request."""
    stand_ins: tuple[str, ...] = ()
    """Served experts the request's constraints allow but the router has no prediction for: fleet-aware routing
    may let a warm one answer while the experts the router prefers start (`routing.stand_in_after_s`)."""
    num_prompt_tokens: int | None = None
    """The request's prompt tokens (the gateway's count), set by the gateway before fleet-aware routing, which
    judges a wake for the request by it (`RoutingPolicy.hide_slow_wake`)."""


class ExpertChooser(Protocol):
    """Chooses among `candidates` (the experts this gateway serves). May block for a few ms (run off-loop)."""

    blocking: bool

    def choose(self, prompt_text: str, routing: RoutingParams | None, candidates: Sequence[ExpertConfig]) -> ExpertChoice:
        """Raises ChoiceError when no candidate satisfies the routing constraints."""


class ChoiceError(Exception):
    """No expert satisfies the request's routing constraints; the message says which constraint failed."""


class DefaultExpertChooser:
    """Answers `auto` with the configured default expert (used when no router is loaded), falling back along
    that expert's configured `fallbacks` (those the request's constraints allow), as when it is named."""

    blocking = False

    def __init__(self, default_expert_id: str) -> None:
        self.default_expert_id = default_expert_id

    def choose(self, prompt_text: str, routing: RoutingParams | None, candidates: Sequence[ExpertConfig]) -> ExpertChoice:
        allowed = [c for c in candidates if routing is None or routing.experts is None or c.id in routing.experts]
        if routing is not None and routing.max_usd_per_mtok is not None:
            allowed = [c for c in allowed if c.usd_per_mtok_blended <= routing.max_usd_per_mtok]
        if not allowed:
            raise ChoiceError("no served expert satisfies the routing constraints (experts, max_usd_per_mtok)")
        by_id = {c.id: c for c in allowed}
        chosen = self.default_expert_id if self.default_expert_id in by_id else allowed[0].id
        fallbacks = tuple(f for f in by_id[chosen].fallbacks if f in by_id)
        return ExpertChoice(chosen, reason="default expert (no router loaded)", fallbacks=fallbacks)
