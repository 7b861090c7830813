"""The per-replica circuit breaker live: a replica that keeps failing (its engine answers garbage, though its
process is up) is replaced once its circuit opens, and requests go to the fresh replica."""

from __future__ import annotations

import asyncio

import pytest

from switchboard.config import parse_config
from switchboard.engines.base import EngineBadResponse, GenerationRequest
from switchboard.engines.simulated import SimulatedEngine
from switchboard.runtime.fleet import LiveFleet

CONFIG = """
experts:
  - id: flaky
    backend: {kind: simulated, time_scale: 0}
control_plane:
  step_interval_s: 0.05
failover:
  replica_circuit: {failure_threshold: 2, window_s: 60, cooldown_s: 60}
  expert_circuit: {failure_threshold: 100}
"""


class GarbageEngine(SimulatedEngine):
    """A simulated replica whose answers are garbage when `is_broken`."""

    is_broken = False

    async def complete(self, request):
        if self.is_broken:
            raise EngineBadResponse(self.expert_id, "upstream answer is not an OpenAI completion: b'<html>'")
        return await super().complete(request)


def only_the_first_broken():
    built: list[GarbageEngine] = []

    def build(expert):
        engine = GarbageEngine.from_config(expert.id, expert.params_b, expert.backend)
        engine.is_broken = not built
        built.append(engine)
        return engine

    return build


async def _ask(fleet: LiveFleet, n: int):
    lease = fleet.lease("flaky", f"r{n}", 8, 4)
    async with lease:
        await lease.replica.engine.complete(GenerationRequest(f"r{n}", "chat", {"messages": []}, 4, 8))
    return lease.replica.replica_id


async def test_a_replica_whose_circuit_opens_is_replaced():
    config = parse_config(CONFIG)
    fleet = LiveFleet(config, engine_factory=only_the_first_broken())
    await fleet.start()
    try:
        first = next(iter(fleet.live))
        for n in range(2):
            with pytest.raises(EngineBadResponse):
                await _ask(fleet, n)
        assert first not in fleet.live  # stopped at the second failure, not probed
        stop = [d for d in fleet.decisions if d["action"] == "StopReplica"]
        assert stop[-1]["replica"] == first and stop[-1]["code"] == "circuit-open"
        replica_id = await asyncio.wait_for(_ask(fleet, 2), timeout=30)  # a fresh replica starts and answers
        assert replica_id != first
        assert fleet.snapshot()["experts"][0]["circuit"]["state"] == "closed"  # the expert's own circuit held
    finally:
        await fleet.stop()
