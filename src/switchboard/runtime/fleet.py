"""The live fleet: every expert's replicas, their engines and states, and the lease a request holds on one.

A request leases a replica for its lifetime (`async with fleet.lease(expert_id, tokens) as lease`), which
keeps the outstanding-request and outstanding-token counts that load balancing reads. An expert with no warm
replica gets one started on demand (a cold start, reported on the lease) — scale-from-zero; the control plane
decides when replicas stop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

from switchboard.config.schema import ExpertConfig, LlamaCppBackend, OpenAIBackend, SimulatedBackend, SwitchboardConfig, WorkerConfig
from switchboard.engines.base import Engine, EngineError, EngineUnavailable
from switchboard.engines.factory import build_engine
from switchboard.types import ReplicaState

log = logging.getLogger("switchboard.fleet")

Clock = Callable[[], float]
EngineFactory = Callable[[ExpertConfig], Engine]


@dataclasses.dataclass(slots=True)
class Transition:
    state: ReplicaState
    at_s: float
    reason: str


@dataclasses.dataclass(slots=True, eq=False)
class LiveReplica:
    replica_id: str
    expert: ExpertConfig
    worker_id: str
    hardware: str
    engine: Engine
    state: ReplicaState = ReplicaState.COLD
    num_outstanding: int = 0
    num_outstanding_tokens: int = 0
    num_served: int = 0
    num_failed: int = 0
    num_cold_starts: int = 0
    last_used_at_s: float = 0.0
    last_error: str | None = None
    last_cold_start: dict[str, float] | None = None
    transitions: list[Transition] = dataclasses.field(default_factory=list)
    start_task: asyncio.Task | None = None

    def set_state(self, state: ReplicaState, at_s: float, reason: str) -> None:
        self.state = state
        self.transitions.append(Transition(state, at_s, reason))
        del self.transitions[:-50]  # the recent history is what operators read; keep memory flat

    def snapshot(self) -> dict[str, Any]:
        return {
            "replica_id": self.replica_id,
            "expert": self.expert.id,
            "worker": self.worker_id,
            "hardware": self.hardware,
            "state": self.state.value,
            "num_outstanding": self.num_outstanding,
            "num_outstanding_tokens": self.num_outstanding_tokens,
            "num_served": self.num_served,
            "num_failed": self.num_failed,
            "num_cold_starts": self.num_cold_starts,
            "last_used_at": self.last_used_at_s or None,
            "last_error": self.last_error,
            "last_cold_start": self.last_cold_start,
            "transitions": [{"state": t.state.value, "at": t.at_s, "reason": t.reason} for t in self.transitions[-10:]],
        }


class Lease:
    """A request's hold on one replica; releases its load counts on exit."""

    __slots__ = ("fleet", "expert_id", "num_tokens", "replica", "was_cold")

    def __init__(self, fleet: "LiveFleet", expert_id: str, num_tokens: int) -> None:
        self.fleet = fleet
        self.expert_id = expert_id
        self.num_tokens = num_tokens
        self.replica: LiveReplica | None = None
        self.was_cold = False

    async def __aenter__(self) -> "Lease":
        replica, self.was_cold = await self.fleet.acquire(self.expert_id)
        replica.num_outstanding += 1
        replica.num_outstanding_tokens += self.num_tokens
        self.replica = replica
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        replica = self.replica
        if replica is None:
            return
        replica.num_outstanding -= 1
        replica.num_outstanding_tokens -= self.num_tokens
        replica.last_used_at_s = self.fleet.clock()
        if exc_type is None:
            replica.num_served += 1
        else:
            replica.num_failed += 1
            if isinstance(exc, EngineUnavailable) and replica.state is ReplicaState.WARM:
                # The engine is gone (process died, upstream down): the next request starts a fresh replica.
                replica.last_error = exc.detail
                replica.set_state(ReplicaState.STOPPED, self.fleet.clock(), f"engine unavailable: {exc.detail}")


def _hardware_of(expert: ExpertConfig, worker: WorkerConfig) -> str:
    backend = expert.backend
    if isinstance(backend, SimulatedBackend):
        return backend.hardware
    if isinstance(backend, OpenAIBackend):
        return "remote"
    return worker.hardware


class LiveFleet:
    """All replicas of all experts. Not thread-safe: used from the gateway's one event loop."""

    def __init__(
        self,
        config: SwitchboardConfig,
        *,
        clock: Clock = time.time,
        engine_factory: EngineFactory = build_engine,
    ) -> None:
        self.config = config
        self.clock = clock
        self.engine_factory = engine_factory
        self.replicas: dict[str, list[LiveReplica]] = {e.id: [] for e in config.experts}
        self._experts = {e.id: e for e in config.experts}
        self._counter = itertools.count()

    def expert(self, expert_id: str) -> ExpertConfig | None:
        return self._experts.get(expert_id)

    def _new_replica(self, expert: ExpertConfig) -> LiveReplica:
        worker = self.config.workers[0]
        replica = LiveReplica(
            replica_id=f"{expert.id}/{next(self._counter)}",
            expert=expert,
            worker_id=worker.id,
            hardware=_hardware_of(expert, worker),
            engine=self.engine_factory(expert),
        )
        replica.set_state(ReplicaState.COLD, self.clock(), "created")
        self.replicas[expert.id].append(replica)
        return replica

    async def start(self) -> None:
        """Brings up one replica per expert, concurrently. A failing expert is logged and marked, not fatal."""
        replicas = [self._new_replica(e) for e in self.config.experts]
        await asyncio.gather(*(self._start_replica(r, "warm at start-up") for r in replicas), return_exceptions=True)

    async def stop(self) -> None:
        replicas = [r for rs in self.replicas.values() for r in rs]
        for r in replicas:
            if r.state in (ReplicaState.WARM, ReplicaState.STARTING):
                r.set_state(ReplicaState.DRAINING, self.clock(), "shutdown")
        await asyncio.gather(*(r.engine.stop() for r in replicas), return_exceptions=True)
        for r in replicas:
            if r.state is not ReplicaState.STOPPED:
                r.set_state(ReplicaState.STOPPED, self.clock(), "shutdown")

    async def _start_replica(self, replica: LiveReplica, reason: str) -> None:
        started_at = time.perf_counter()
        replica.set_state(ReplicaState.STARTING, self.clock(), reason)
        replica.num_cold_starts += 1
        try:
            await replica.engine.start()
        except Exception as exc:  # noqa: BLE001 — any start failure makes the replica unusable, with the reason kept
            detail = exc.detail if isinstance(exc, EngineError) else f"{type(exc).__name__}: {exc}"
            replica.last_error = detail
            replica.set_state(ReplicaState.STOPPED, self.clock(), f"start failed: {detail}")
            log.error("replica %s failed to start: %s", replica.replica_id, detail)
            raise EngineUnavailable(replica.expert.id, f"could not start a replica: {detail}") from exc
        anatomy = getattr(replica.engine, "last_cold_start", None)
        replica.last_cold_start = (
            dataclasses.asdict(anatomy) if anatomy is not None else {"ready_s": time.perf_counter() - started_at}
        )
        replica.last_error = None
        replica.set_state(ReplicaState.WARM, self.clock(), reason)

    async def acquire(self, expert_id: str) -> tuple[LiveReplica, bool]:
        """A warm replica of the expert (least outstanding tokens), starting one if none is warm.

        Returns (replica, was_cold). Raises EngineUnavailable when no replica can be started.
        """
        replicas = self.replicas[expert_id]
        best: LiveReplica | None = None
        for r in replicas:
            if r.state is ReplicaState.WARM and (best is None or r.num_outstanding_tokens < best.num_outstanding_tokens):
                best = r
        if best is not None:
            return best, False
        for r in replicas:
            if r.state is ReplicaState.STARTING and r.start_task is not None:
                await asyncio.shield(r.start_task)
                return r, True
        replica = next((r for r in replicas if r.state in (ReplicaState.COLD, ReplicaState.STOPPED)), None)
        if replica is None:
            replica = self._new_replica(self._experts[expert_id])
        replica.start_task = asyncio.ensure_future(self._start_replica(replica, "request arrived at a cold expert"))
        await asyncio.shield(replica.start_task)
        return replica, True

    def lease(self, expert_id: str, num_tokens: int) -> Lease:
        return Lease(self, expert_id, num_tokens)

    def snapshot(self) -> dict[str, Any]:
        return {
            "now": self.clock(),
            "workers": [w.model_dump() for w in self.config.workers],
            "experts": [
                {
                    "id": e.id,
                    "backend": e.backend.kind,
                    "params_b": e.params_b,
                    "usd_per_mtok_input": e.usd_per_mtok_input,
                    "usd_per_mtok_output": e.usd_per_mtok_output,
                    "context_tokens": e.context_tokens,
                    "replicas": [r.snapshot() for r in self.replicas[e.id]],
                }
                for e in self.config.experts
            ],
        }
