"""What the simulator asks of a control plane, and the actions it applies.

The simulator owns time, engines and the `FleetSnapshot`; a `ControlPlane` owns decisions. Its methods get the
current snapshot (with `now_s`) and return decisions; the simulator applies them through `switchboard.fleet.ops`,
exactly as the live control loop does. Planes may keep policy state between calls (histograms, hysteresis),
as the live control loop does; they never read a clock.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np

from switchboard.fleet.state import FleetSnapshot, QueuedRequest
from switchboard.types import ExpertId, ReplicaId, WorkerId


@dataclasses.dataclass(frozen=True, slots=True)
class StartReplica:
    """Start a replica of `expert_id` on `worker_id`. `is_preprovisioned` replicas are warm at once and their
    start is not counted as a cold start (a static fleet provisioned before the workload begins)."""

    expert_id: ExpertId
    worker_id: WorkerId
    is_preprovisioned: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class StopReplica:
    """Stop a replica: at once if it has no work, else drain it (finish what it holds, accept nothing new)."""

    replica_id: ReplicaId


Action = StartReplica | StopReplica


@dataclasses.dataclass(frozen=True, slots=True)
class RouteQuery:
    """An `auto` request as the router sees it: predicted quality of every expert (columns in the cluster's
    expert order) and the prices it trades against."""

    request_index: int
    predicted_quality: np.ndarray
    num_prompt_tokens: int
    num_output_tokens: int


@dataclasses.dataclass(frozen=True, slots=True)
class RouteDecision:
    expert_index: int
    wake_expert_index: int | None = None
    """Cold-start hiding: an expert (usually the preferred, cold one) to wake in the background."""
    reason: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Reject:
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class Enqueue:
    """Queue on `replica_id`, or in the fleet's unplaced queue (waiting for a replica to start) when None."""

    replica_id: ReplicaId | None
    reason: str = ""


Admission = Enqueue | Reject


class ControlPlane(Protocol):
    name: str
    control_interval_s: float | None
    """Period of `control`; None = never called periodically (a static fleet)."""

    def initial_actions(self, snapshot: FleetSnapshot) -> list[Action]:
        """Actions at time 0, before any request (e.g. provisioning a static fleet)."""

    def route(self, snapshot: FleetSnapshot, query: RouteQuery) -> RouteDecision:
        """The expert for an `auto` request."""

    def admit(self, snapshot: FleetSnapshot, request: QueuedRequest) -> Admission:
        """Where an arriving request waits: a replica, the unplaced queue, or an early rejection."""

    def control(self, snapshot: FleetSnapshot) -> list[Action]:
        """The periodic (and on-demand, when a request waits unplaced) control step."""
