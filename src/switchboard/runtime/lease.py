"""A request's hold on a replica (`Lease`), the replica as the live side sees it (`LiveReplica`), and the
answers a lease can end in before any engine runs (`AdmissionRejected`, `CircuitOpen`).

A lease is granted by a `LeaseGrantor` (the public lease interface, defined here): the embedded `LiveFleet`
and the Ray `RemoteFleet` both are one (runtime/protocol.py has the whole `Fleet`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

from switchboard.config.schema import ExpertConfig
from switchboard.engines.base import Completion, Engine, GenerationRequest, ReplicaLost, StreamEvent
from switchboard.fleet.state import QueuedRequest
from switchboard.runtime.circuits import CircuitBoard

log = logging.getLogger("switchboard.fleet")

MAX_DECISIONS_KEPT = 200
MAX_REPLICAS_PER_REQUEST = 2
"""A request whose replica is lost before answering is retried once on another (`Lease.complete`/`stream`)."""


class LiveReasonCode(str, enum.Enum):
    WARM_AT_START = "warm-at-start"
    START_FAILED = "start-failed"
    KEY_POLICY = "key-policy"
    CIRCUIT_OPEN = "circuit-open"
    WORKER_LOST = "worker-lost"
    REPLACE_LOST = "replace-lost"


class AdmissionRejected(Exception):
    """The control plane refused the request: answer `status` (429/503) with `Retry-After: retry_after_s`."""

    def __init__(self, expert_id: str, status: int, retry_after_s: float, reason: str) -> None:
        super().__init__(f"expert '{expert_id}': {reason}")
        self.expert_id = expert_id
        self.status = status
        self.retry_after_s = retry_after_s
        self.reason = reason


class CircuitOpen(AdmissionRejected):
    """The expert's circuit is open (it failed repeatedly): refused without trying, 503 until the cool-down ends."""

    def __init__(self, expert_id: str, retry_after_s: float) -> None:
        super().__init__(expert_id, 503, retry_after_s, "its circuit breaker is open after repeated failures")


@dataclasses.dataclass(slots=True, eq=False)
class LiveReplica:
    """A replica's engine and what the engine taught us (its fleet-model state lives in the snapshot)."""

    replica_id: str
    expert: ExpertConfig
    hardware: str
    engine: Engine
    start_task: asyncio.Task | None = None
    num_served: int = 0
    num_failed: int = 0
    last_error: str | None = None
    cold_start: dict[str, float] | None = None
    num_outstanding: int = 0


class LeaseGrantor(Protocol):
    """The public lease interface: how a `Lease` gets and gives back its replica."""

    expert_circuits: CircuitBoard

    async def acquire(self, lease: Lease) -> tuple["LiveReplica", bool]:
        """A replica that may run `lease.request` now, and whether the request waited for one to start.
        Raises `AdmissionRejected` (429/503 with Retry-After) or `EngineUnavailable` (none came up in time)."""

    def release(self, lease: "Lease", *, ok: bool, exc: Any) -> None:
        """The lease ended (`ok`, or failed with `exc`): its replica's load, counters and circuits are updated."""

    async def refresh_inventory(self) -> None:
        """Re-reads the workers now (a retry after a lost replica must not be placed on the lost worker)."""


def count_outcome(lease: "Lease", expert_circuits: CircuitBoard, *, ok: bool, exc: Any) -> "LiveReplica":
    """A released lease's outcome on its replica's counters and its expert's circuit; returns the replica."""
    replica = lease.replica
    assert replica is not None
    if ok:
        replica.num_served += 1
    else:
        replica.num_failed += 1
    expert_circuits.record(lease.expert_id, None if ok else exc)
    return replica


class Lease:
    """A request's hold on one replica for its lifetime. `replica`, `was_cold` are set on entry.

    Entry raises `CircuitOpen` when the expert's circuit refuses, `AdmissionRejected` when the control plane
    does, `EngineUnavailable` when no replica comes up in time. How the lease ends (the exception passed to
    exit, or none) feeds the expert's and the replica's circuit breakers.
    """

    __slots__ = ("fleet", "expert_id", "request", "replica", "was_cold", "_external")

    def __init__(self, fleet: LeaseGrantor, expert_id: str, request: QueuedRequest | None) -> None:
        self.fleet = fleet
        self.expert_id = expert_id
        self.request = request
        self.replica: LiveReplica | None = None
        self.was_cold = False

    async def __aenter__(self) -> "Lease":
        fleet = self.fleet
        if not fleet.expert_circuits.allow(self.expert_id).is_allowed:
            raise CircuitOpen(self.expert_id, fleet.expert_circuits.retry_after_s(self.expert_id))
        try:
            self.replica, self.was_cold = await fleet.acquire(self)
        except BaseException as exc:
            fleet.expert_circuits.record(self.expert_id, exc)
            raise
        self.replica.num_outstanding += 1
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self.replica is not None:
            self.replica.num_outstanding -= 1
            self.fleet.release(self, ok=exc_type is None, exc=exc if exc is not None else exc_type)

    async def complete(self, request: GenerationRequest) -> Completion:
        """The leased replica's whole answer; if that replica is lost first, another replica's (once)."""
        for attempt in range(1, MAX_REPLICAS_PER_REQUEST + 1):
            try:
                return await self.replica.engine.complete(request)  # type: ignore[union-attr]
            except ReplicaLost as exc:
                if attempt == MAX_REPLICAS_PER_REQUEST or self.request is None:
                    raise
                await self._move_after_loss(exc)
        raise AssertionError("unreachable")

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        """The leased replica's events. If the replica is lost before its first event, the request moves to
        another replica (once); after the first event the loss is the stream's error (`ReplicaLost`)."""
        for attempt in range(1, MAX_REPLICAS_PER_REQUEST + 1):
            num_events = 0
            try:
                async for event in self.replica.engine.stream(request):  # type: ignore[union-attr]
                    num_events += 1
                    yield event
                return
            except ReplicaLost as exc:
                if num_events or attempt == MAX_REPLICAS_PER_REQUEST or self.request is None:
                    raise
                await self._move_after_loss(exc)

    async def _move_after_loss(self, exc: ReplicaLost) -> None:
        """Gives up the lost replica (the fleet stops it) and waits for another, as a new arrival."""
        assert self.replica is not None
        log.warning("request %s retried on another replica: %s", self.request.request_id if self.request else "", exc.detail)
        self.replica.num_outstanding -= 1
        self.fleet.release(self, ok=False, exc=exc)
        self.replica = None
        await self.fleet.refresh_inventory()  # so the retry is not placed on the lost worker
        self.replica, was_cold = await self.fleet.acquire(self)
        self.replica.num_outstanding += 1
        self.was_cold = self.was_cold or was_cold
