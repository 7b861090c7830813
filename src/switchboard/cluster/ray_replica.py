"""A replica as a Ray actor, and the engine proxy the gateway calls it through.

`ReplicaActor` runs one engine (llama.cpp, simulated, or a proxy to an `openai` upstream reachable from its
node) on the node it was pinned to. `RayReplicaEngine` speaks the `Engine` interface for it: a stream is fetched
in batches by plain actor calls (`OpenStreams`), each returning every event ready as soon as one is, so each
token reaches the gateway as soon as the engine yields it (tokens the engine yields faster than they are fetched
travel together; none waits for a later one).

Engine errors cross the process boundary as `RemoteEngineError` values (engine exceptions do not pickle with
their status and code) and are raised again on the gateway side; a dead actor or node becomes `ReplicaLost`,
which the fleet treats like a dead engine process (the replica is stopped and replaced).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

from switchboard.config.schema import ExpertConfig
from switchboard.engines import base as engine_base
from switchboard.engines.base import Completion, EngineError, EngineUnavailable, GenerationRequest, ReplicaLost, StreamEvent


@dataclasses.dataclass(frozen=True, slots=True)
class RemoteEngineError:
    """An `EngineError` raised inside a replica actor, as a value that survives pickling."""

    error_type: str
    expert_id: str
    detail: str
    status: int
    code: str

    @classmethod
    def of(cls, exc: EngineError) -> "RemoteEngineError":
        return cls(type(exc).__name__, exc.expert_id, exc.detail, exc.status, exc.code)

    def to_exception(self) -> EngineError:
        error_class = getattr(engine_base, self.error_type, EngineError)
        if not (isinstance(error_class, type) and issubclass(error_class, EngineError)):
            error_class = EngineError
        return error_class(self.expert_id, self.detail, status=self.status, code=self.code)


class ReplicaActor:
    """The body of a replica actor (made a Ray actor class by `RayCluster`). One engine, one expert."""

    def __init__(self, expert: dict[str, Any]) -> None:
        from switchboard.engines.factory import build_engine

        config = ExpertConfig.model_validate(expert)
        self.expert_id = config.id
        self.engine = build_engine(config)
        self.is_started = False
        self.num_completed_whole = 0
        """Requests answered whole by `complete`."""
        self.streams = OpenStreams()

    @property
    def num_completed(self) -> int:
        """Requests answered in full (`complete`, or a stream to its end): what a test compares with the answers
        clients got, to show that no request ran twice."""
        return self.num_completed_whole + self.streams.num_completed

    async def start(self) -> Any:
        """Starts the engine; returns its cold-start anatomy (or None), or a RemoteEngineError."""
        try:
            await self.engine.start()
        except EngineError as exc:
            return RemoteEngineError.of(exc)
        self.is_started = True
        return getattr(self.engine, "last_cold_start", None)

    def describe(self) -> dict[str, Any]:
        """What a restarted control actor needs to take this replica over: its expert, node, whether its engine
        is serving, and how many requests it has answered."""
        return {"expert_id": self.expert_id, "node_id": self.node_id(), "is_started": self.is_started,
                "num_completed": self.num_completed}

    async def stop(self) -> None:
        await self.engine.stop()

    def node_id(self) -> str:
        """The Ray node this actor runs on (placement checks and operators' `ray list actors` cross-checks)."""
        import ray

        return ray.get_runtime_context().get_node_id()

    async def complete(self, request: GenerationRequest) -> Completion | RemoteEngineError:
        try:
            completion = await self.engine.complete(request)
        except EngineError as exc:
            return RemoteEngineError.of(exc)
        self.num_completed_whole += 1
        return completion

    async def stream_open(self, request: GenerationRequest) -> StreamBatch:
        """Starts streaming `request`; returns once at least one event is ready, with every event ready then."""
        return await self.streams.open(self.engine.stream(request), self.expert_id)

    async def stream_next(self, stream_id: int) -> StreamBatch:
        """The events of stream `stream_id` ready since the last batch (waiting for at least one)."""
        return await self.streams.next(stream_id)

    def stream_cancel(self, stream_id: int) -> None:
        """The caller went away: stop generating stream `stream_id`."""
        self.streams.cancel(stream_id)


STREAM_ABANDONED_AFTER_S = 600.0
"""An open stream whose caller has not asked for its next batch for this long is taken for abandoned (its gateway
died) and cancelled. Longer than `gateway.request_timeout_s`'s default (300 s): a live gateway asks again within
a client's read of one batch, or cancels the stream when its client leaves."""


@dataclasses.dataclass(frozen=True, slots=True)
class StreamBatch:
    """One answer of `ReplicaActor.stream_open` / `stream_next`: the events ready, in order (an engine failure
    is the last one, as a `RemoteEngineError`), and the id to ask for the next batch with (None: the stream has
    ended with these events)."""

    stream_id: int | None
    events: list[Any]


class _OpenStream:
    __slots__ = ("ready", "pump", "polled_at")

    def __init__(self, ready: asyncio.Queue, pump: asyncio.Task, polled_at: float | None) -> None:
        self.ready = ready
        self.pump = pump
        self.polled_at = polled_at
        """When its last batch was handed out; None while a batch is being waited for."""


class OpenStreams:
    """A replica actor's streams in progress, answered in batches the caller asks for (issue 17: a Ray streaming
    generator costs a task, a report per item and an end-of-stream message, about 1 ms and twice the CPU of a
    plain actor call here; asking for batches costs one plain call per batch, and a stream whose events are all
    ready at once, one call in all).

    A batch holds every event ready when it is asked for and returns as soon as one is: no event waits for a
    later one. The caller keeps one request in flight while it relays the previous batch, so an event produced
    meanwhile leaves the replica at once. Engine errors end the stream as a `RemoteEngineError` event. Streams not
    asked for within `abandoned_after_s` of their last batch are cancelled (checked whenever a stream opens).
    """

    def __init__(self, clock: Any = time.monotonic, abandoned_after_s: float = STREAM_ABANDONED_AFTER_S) -> None:
        self.clock = clock
        self.abandoned_after_s = abandoned_after_s
        self._open: dict[int, _OpenStream] = {}
        self._ids = itertools.count(1)
        self.num_completed = 0
        """Streams whose last batch was handed out without an engine error."""

    def __len__(self) -> int:
        return len(self._open)

    async def open(self, events: AsyncIterator[StreamEvent], expert_id: str) -> StreamBatch:
        self._cancel_abandoned()
        ready: asyncio.Queue[Any] = asyncio.Queue()

        async def pump() -> None:
            try:
                async for event in events:
                    ready.put_nowait(event)
            except EngineError as exc:
                ready.put_nowait(RemoteEngineError.of(exc))
            except Exception as exc:  # noqa: BLE001 — any engine bug reaches the client as a named 502, not a hang
                ready.put_nowait(RemoteEngineError("EngineError", expert_id, f"{type(exc).__name__}: {exc}", 502, "upstream_error"))
            finally:
                ready.put_nowait(None)

        stream_id = next(self._ids)
        self._open[stream_id] = _OpenStream(ready, asyncio.create_task(pump()), self.clock())
        return await self.next(stream_id)

    async def next(self, stream_id: int) -> StreamBatch:
        stream = self._open.get(stream_id)
        if stream is None:
            return StreamBatch(None, [RemoteEngineError("EngineError", "", f"stream {stream_id} is no longer open on this replica "
                                                        "(cancelled, or abandoned for too long)", 502, "upstream_error")])
        stream.polled_at = None
        try:
            batch = [await stream.ready.get()]
        finally:
            stream.polled_at = self.clock()
        while not stream.ready.empty():
            batch.append(stream.ready.get_nowait())
        if batch[-1] is not None:
            return StreamBatch(stream_id, batch)
        events = batch[:-1]
        if self._open.pop(stream_id, None) is not None and not any(isinstance(e, RemoteEngineError) for e in events):
            self.num_completed += 1  # (a cancelled stream was not answered in full)
        return StreamBatch(None, events)

    def cancel(self, stream_id: int) -> None:
        stream = self._open.pop(stream_id, None)
        if stream is not None:
            stream.pump.cancel()
            stream.ready.put_nowait(None)  # a batch being waited for returns (with what was ready)

    def _cancel_abandoned(self) -> None:
        now = self.clock()
        for stream_id in [s for s, x in self._open.items() if x.polled_at is not None and now - x.polled_at > self.abandoned_after_s]:
            self.cancel(stream_id)


class RayReplicaEngine:
    """The `Engine` for a replica actor. `start` creates the actor (via `make_actor`) and waits for its engine."""

    def __init__(self, replica_id: str, expert_id: str, node_id: str, make_actor: Any, actor: Any = None) -> None:
        self.replica_id = replica_id
        self.expert_id = expert_id
        self.node_id = node_id
        self._make_actor = make_actor
        self.actor = actor
        self.last_cold_start: Any = None
        self.lost: str | None = None

    @property
    def is_running(self) -> bool:
        """False once the actor or its node is known dead (the fleet's health check then stops the replica)."""
        return self.lost is None

    def _failure(self, exc: BaseException) -> EngineError:
        """A Ray error as the engine error it means: a dead actor or node is `ReplicaLost` (and the replica is
        marked lost); an exception inside the actor is the replica's own 502."""
        from ray.exceptions import NodeDiedError, RayActorError

        if not isinstance(exc, (RayActorError, NodeDiedError)):
            return EngineError(self.expert_id, f"replica {self.replica_id} failed: {type(exc).__name__}: {exc}")
        why = "its node died" if isinstance(exc, NodeDiedError) or "node has died" in str(exc) else "its actor died"
        self.lost = f"replica {self.replica_id} on Ray node {self.node_id[:12]} was lost ({why})"
        return ReplicaLost(self.expert_id, self.lost)

    async def start(self) -> None:
        from ray.exceptions import RayError

        if self.actor is None:
            self.actor = self._make_actor()
        try:
            started = await self.actor.start.remote()
        except RayError as exc:
            raise self._failure(exc) from None
        if isinstance(started, RemoteEngineError):
            raise started.to_exception()
        self.last_cold_start = started

    async def stop(self) -> None:
        import ray
        from ray.exceptions import RayError

        if self.actor is None:
            return
        actor, self.actor = self.actor, None
        try:
            await actor.stop.remote()
        except RayError:
            pass  # already gone: nothing left to release
        ray.kill(actor, no_restart=True)

    async def complete(self, request: GenerationRequest) -> Completion:
        from ray.exceptions import RayError

        actor = self._running_actor()
        try:
            answer = await actor.complete.remote(request)
        except RayError as exc:
            raise self._failure(exc) from None
        if isinstance(answer, RemoteEngineError):
            raise answer.to_exception()
        return answer

    def _running_actor(self) -> Any:
        if self.actor is None or self.lost is not None:
            raise EngineUnavailable(self.expert_id, self.lost or f"replica {self.replica_id} is not running")
        return self.actor

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        """The replica's events, fetched in batches (`OpenStreams`): the next batch is asked for before this one
        is relayed, so the replica never holds a ready event for want of a request."""
        from ray.exceptions import RayError

        actor = self._running_actor()
        stream_id = None
        try:
            batch = await actor.stream_open.remote(request)
            while True:
                stream_id = batch.stream_id
                following = actor.stream_next.remote(stream_id) if stream_id is not None else None
                for event in batch.events:
                    if isinstance(event, RemoteEngineError):
                        stream_id = None  # it ended on the replica
                        raise event.to_exception()
                    yield event
                if following is None:
                    return
                batch = await following
        except RayError as exc:
            stream_id = None
            raise self._failure(exc) from None
        finally:
            if stream_id is not None:  # the client went away or its deadline passed: stop generating on the replica
                actor.stream_cancel.remote(stream_id)
