"""Learned routing: predict each expert's score on a prompt, then pick by quality − λ·price under constraints.

Public entry points: `load_router`, `load_default_router`, `Router`, `RoutingConstraints`, `RouteDecision`.
Importing this package loads numpy only; embedders and training libraries load when used.
"""

from __future__ import annotations

from switchboard.router.persist import RouterLoadError, load_default_router, load_router
from switchboard.router.router import RouteDecision, RouteOutcome, Router
from switchboard.router.selection import RankedCandidate, RoutingConstraints

__all__ = [
    "RankedCandidate",
    "RouteDecision",
    "RouteOutcome",
    "Router",
    "RouterLoadError",
    "RoutingConstraints",
    "load_default_router",
    "load_router",
]
