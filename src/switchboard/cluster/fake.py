"""A cluster whose workers can be lost on demand, for tests of node loss without Ray.

Engines are real (built by the given factory, simulated ones by default); losing a worker makes every engine on
it fail the way a dead Ray actor does: calls in flight and later ones raise `ReplicaLost`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from switchboard.cluster.base import EngineFactory
from switchboard.config.schema import ExpertConfig
from switchboard.engines.base import Completion, Engine, GenerationRequest, ReplicaLost, StreamEvent, collect
from switchboard.engines.factory import build_engine
from switchboard.fleet.state import Worker


class LosableEngine:
    """Wraps a real engine; once `lose()` is called every call in flight or later raises `ReplicaLost`."""

    def __init__(self, engine: Engine, expert_id: str, worker_id: str) -> None:
        self.engine = engine
        self.expert_id = expert_id
        self.worker_id = worker_id
        self._lost = asyncio.Event()

    @property
    def is_running(self) -> bool:
        return not self._lost.is_set()

    def lose(self) -> None:
        self._lost.set()

    def _error(self) -> ReplicaLost:
        return ReplicaLost(self.expert_id, f"worker {self.worker_id} was lost")

    async def start(self) -> None:
        await self.engine.start()

    async def stop(self) -> None:
        await self.engine.stop()

    async def complete(self, request: GenerationRequest) -> Completion:
        return await collect(self.stream(request))

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        events = self.engine.stream(request)
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            while True:
                if lost.done():
                    raise self._error()
                step = asyncio.ensure_future(anext(events))
                await asyncio.wait([step, lost], return_when=asyncio.FIRST_COMPLETED)
                if not step.done():
                    step.cancel()
                    await asyncio.wait([step])  # the engine's generator must be idle before it is closed
                    raise self._error()
                try:
                    event = step.result()
                except StopAsyncIteration:
                    return
                yield event
        finally:
            lost.cancel()
            await events.aclose()


class FakeCluster:
    """`Cluster` over a worker list the test edits: `lose(worker_id)` removes a worker and breaks its engines."""

    def __init__(self, workers: list[Worker], engine_factory: EngineFactory = build_engine, inventory_interval_s: float = 0.05) -> None:
        self._workers = list(workers)
        self.engine_factory = engine_factory
        self.inventory_interval_s = inventory_interval_s
        self.engines: list[LosableEngine] = []

    def workers(self) -> list[Worker]:
        return list(self._workers)

    def engine_for(self, replica_id: str, expert: ExpertConfig, worker_id: str, num_devices: int = 0) -> Engine:
        engine = LosableEngine(self.engine_factory(expert), expert.id, worker_id)
        self.engines.append(engine)
        return engine

    def lose(self, worker_id: str) -> None:
        self._workers = [w for w in self._workers if w.worker_id != worker_id]
        for engine in self.engines:
            if engine.worker_id == worker_id:
                engine.lose()

    async def close(self) -> None:
        return None
