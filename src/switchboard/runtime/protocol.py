"""What a fleet offers the gateway, whichever runs it: the embedded `LiveFleet` (runtime/fleet.py) and the Ray
`RemoteFleet` (cluster/ray_gateway.py) both satisfy `Fleet`; a `Lease` only needs its `LeaseGrantor` part
(runtime/lease.py).

Nothing here imports a fleet: `lease.py`, `view.py` and the gateway are written against these protocols, so
`runtime/` has no import cycle and nobody reaches into a fleet's private functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from switchboard.config.schema import ExpertConfig
from switchboard.runtime.lease import Lease, LeaseGrantor


class FleetModelQueries(Protocol):
    """The fleet-model queries the metrics and the dashboard make."""

    def unplaced_of(self, expert_id: Any) -> Sequence[Any]: ...

    def memory_used_gb(self, worker_id: str) -> float: ...


class Fleet(LeaseGrantor, Protocol):
    """All replicas of all experts, as the gateway uses them."""

    config: Any
    decisions: Sequence[dict[str, Any]]
    """The recent control-plane actions with their reasons (newest last)."""
    counters: dict[str, Any]
    model: FleetModelQueries

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def expert(self, expert_id: str) -> ExpertConfig | None: ...

    def is_available(self, expert_id: str) -> bool:
        """False while the expert's circuit is open."""

    def is_ready(self, expert_id: str) -> bool:
        """Whether a request to `expert_id` can start without a cold start."""

    def wake(self, expert_id: str, detail: str) -> None:
        """Asks the control plane to start a replica of `expert_id` (nothing if it may not or has one)."""

    async def route(self, choice: Any) -> tuple[str, dict[str, Any]]:
        """The fleet-aware choice among the router's candidates: the expert, and what to report about it."""

    def lease(self, expert_id: str, request_id: str, num_prompt_tokens: int, max_tokens: int,
              prefix_key: str = "") -> Lease: ...

    def snapshot(self) -> dict[str, Any]:
        """The JSON view behind GET /admin/fleet."""
