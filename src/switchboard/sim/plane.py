"""What the simulator asks of a control plane.

The simulator owns time, engines and the `FleetSnapshot`; a plane owns decisions. Its methods get the current
snapshot (with `now_s`) and return *actions* — the control plane's own action types
(`switchboard.policies.actions`) — which the simulator applies to the fleet with `apply_action` and carries out
on its engines, as the live control loop does. Planes may keep policy state between calls (histograms,
hysteresis) as the live loop does; they never read a clock.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from switchboard.fleet.state import FleetSnapshot, QueuedRequest
from switchboard.policies.actions import Action
from switchboard.frozen import fast_init


@fast_init
@dataclasses.dataclass(frozen=True, slots=True)
class RouteQuery:
    """An `auto` request as the router sees it: predicted quality of every expert (columns in the cluster's
    expert order)."""

    request_index: int
    predicted_quality: np.ndarray
    num_prompt_tokens: int
    num_output_tokens: int


@fast_init
@dataclasses.dataclass(frozen=True, slots=True)
class Routed:
    expert_index: int
    reason: str = ""


class SimPlane(Protocol):
    name: str
    control_interval_s: float | None
    """Period of `control`; None = never called periodically (a static fleet)."""

    def initial_actions(self, snapshot: FleetSnapshot) -> Sequence[Action]:
        """Actions at time 0, before any request (e.g. provisioning a static fleet)."""

    def route(self, snapshot: FleetSnapshot, query: RouteQuery) -> Routed:
        """The expert for an `auto` request."""

    def admit(self, snapshot: FleetSnapshot, request: QueuedRequest) -> Sequence[Action]:
        """Actions for an arriving request (recorded with `ops.record_arrival`, in no queue yet). They must end
        the request's placement: an `AssignRequest` or `RejectRequest` for it (possibly with replica starts)."""

    def control(self, snapshot: FleetSnapshot) -> Sequence[Action]:
        """The periodic control step."""

    def step_is_due(self) -> bool:
        """Whether a control step should follow at once (asked after each arrival; the answer resets)."""

    def is_preprovisioned(self, replica_id: str) -> bool:
        """A replica provisioned before the workload (its start is not a cold start)."""
