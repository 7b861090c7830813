"""A replica as a Ray actor, and the engine proxy the gateway calls it through.

`ReplicaActor` runs one engine (llama.cpp, simulated, or a proxy to an `openai` upstream reachable from its
node) on the node it was pinned to. `RayReplicaEngine` speaks the `Engine` interface for it: a stream is fetched
in batches by plain actor calls (`OpenStreams` on the replica, `StreamChannel` in the gateway: one call in flight
brings the ready events of all of a gateway's streams on the replica), each returning as soon as one event is
ready, so each token reaches the gateway as soon as the engine yields it (tokens the engine yields faster than
they are fetched travel together; none waits for a later one).

Engine errors cross the process boundary as `RemoteEngineError` values (engine exceptions do not pickle with
their status and code) and are raised again on the gateway side; a dead actor or node becomes `ReplicaLost`,
which the fleet treats like a dead engine process (the replica is stopped and replaced).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
import uuid
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

    async def stream_open(self, request: GenerationRequest, channel_id: str, stream_id: int) -> StreamBatch:
        """Starts streaming `request` as stream `stream_id` of the caller's `channel_id`; returns once at least
        one event is ready, with every event ready then (later ones come from `stream_take`)."""
        return await self.streams.open(self.engine.stream(request), self.expert_id, channel_id, stream_id)

    async def stream_take(self, channel_id: str) -> list[StreamBatch]:
        """The events ready on any stream of `channel_id` since the last take, one batch per stream (waiting
        for at least one)."""
        return await self.streams.take(channel_id)

    def stream_cancel(self, channel_id: str, stream_id: int) -> None:
        """The caller went away: stop generating that stream."""
        self.streams.cancel((channel_id, stream_id))


STREAM_ABANDONED_AFTER_S = 600.0
"""An open stream whose channel has not taken its events for this long is taken for abandoned (its gateway died)
and cancelled. Longer than `gateway.request_timeout_s`'s default (300 s): a live gateway keeps a take in flight
while it has streams open, and cancels a stream when its client leaves."""


@dataclasses.dataclass(frozen=True, slots=True)
class StreamBatch:
    """Events of one stream, in order (an engine failure is the last one, as a `RemoteEngineError`);
    `is_last`: the stream has ended with these."""

    stream_id: int
    events: list[Any]
    is_last: bool


class _OpenStream:
    __slots__ = ("ready", "pump", "is_in_channel")

    def __init__(self, ready: asyncio.Queue, pump: asyncio.Task) -> None:
        self.ready = ready
        self.pump = pump
        self.is_in_channel = False
        """Its first batch was answered: later events are for `take`."""


class _Channel:
    __slots__ = ("ready_ids", "wake", "taken_at")

    def __init__(self, taken_at: float) -> None:
        self.ready_ids: dict[int, None] = {}  # ordered set: streams with events waiting
        self.wake = asyncio.Event()
        self.taken_at: float | None = taken_at
        """When its last take returned; None while one is waiting."""


StreamKey = tuple[str, int]  # (channel id, stream id)


class OpenStreams:
    """A replica actor's streams in progress, fetched in batches by plain actor calls (issue 17).

    A Ray streaming generator costs a task, a report per item and an end-of-stream message: about 1 ms and
    twice the CPU of a plain actor call here. Here a stream's first batch is the answer to the call that opens
    it (a stream ready at once, all of it: one call in all), and the rest of every stream a caller has open on
    this replica (its *channel*: one per gateway process and replica) comes from one call in flight at a time,
    `take`, which returns as soon as any of them has an event, with everything ready on all of them. So a
    stream's events never wait for a later one, and 16 streams cost one call per round trip, not one per token.

    Engine errors end a stream as a `RemoteEngineError` event. Streams of a channel that has not taken for
    `abandoned_after_s` are cancelled (checked whenever a stream opens).
    """

    def __init__(self, clock: Any = time.monotonic, abandoned_after_s: float = STREAM_ABANDONED_AFTER_S) -> None:
        self.clock = clock
        self.abandoned_after_s = abandoned_after_s
        self._open: dict[StreamKey, _OpenStream] = {}
        self._channels: dict[str, _Channel] = {}
        self.num_completed = 0
        """Streams whose last batch was handed out without an engine error."""

    def __len__(self) -> int:
        return len(self._open)

    def _channel(self, channel_id: str) -> _Channel:
        channel = self._channels.get(channel_id)
        if channel is None:
            channel = self._channels[channel_id] = _Channel(self.clock())
        return channel

    async def open(self, events: AsyncIterator[StreamEvent], expert_id: str, channel_id: str, stream_id: int) -> StreamBatch:
        self._cancel_abandoned()
        key = (channel_id, stream_id)
        channel = self._channel(channel_id)
        ready: asyncio.Queue[Any] = asyncio.Queue()

        def put(item: Any) -> None:
            ready.put_nowait(item)
            stream = self._open.get(key)
            if stream is not None and stream.is_in_channel:
                channel.ready_ids[stream_id] = None
                channel.wake.set()

        async def pump() -> None:
            try:
                async for event in events:
                    put(event)
            except EngineError as exc:
                put(RemoteEngineError.of(exc))
            except Exception as exc:  # noqa: BLE001 — any engine bug reaches the client as a named 502, not a hang
                put(RemoteEngineError("EngineError", expert_id, f"{type(exc).__name__}: {exc}", 502, "upstream_error"))
            finally:
                put(None)

        stream = self._open[key] = _OpenStream(ready, asyncio.create_task(pump()))
        first = [await ready.get()]
        batch = self._drain(key, stream, first)
        if not batch.is_last:
            stream.is_in_channel = True  # from now on its events wake the channel's take
            if not ready.empty():
                channel.ready_ids[stream_id] = None
                channel.wake.set()
        return batch

    def _drain(self, key: StreamKey, stream: _OpenStream, batch: list[Any]) -> StreamBatch:
        while not stream.ready.empty():
            batch.append(stream.ready.get_nowait())
        if not batch or batch[-1] is not None:
            return StreamBatch(key[1], batch, False)
        events = batch[:-1]
        if self._open.pop(key, None) is not None and not any(isinstance(e, RemoteEngineError) for e in events):
            self.num_completed += 1  # (a cancelled stream was not answered in full)
        return StreamBatch(key[1], events, True)

    async def take(self, channel_id: str) -> list[StreamBatch]:
        """The events ready on the channel's streams, one batch per stream, as soon as there are any. Empty when
        woken by a cancel: the caller may have no stream left to wait for."""
        channel = self._channel(channel_id)
        channel.taken_at = None
        try:
            await channel.wake.wait()
        finally:
            channel.taken_at = self.clock()
        channel.wake.clear()
        ready_ids, channel.ready_ids = channel.ready_ids, {}
        batches = []
        for stream_id in ready_ids:
            stream = self._open.get((channel_id, stream_id))
            if stream is not None:
                batch = self._drain((channel_id, stream_id), stream, [])
                if batch.events or batch.is_last:
                    batches.append(batch)
        return batches

    def cancel(self, key: StreamKey) -> None:
        stream = self._open.pop(key, None)
        if stream is not None:
            stream.pump.cancel()
        channel = self._channels.get(key[0])
        if channel is not None:
            channel.wake.set()

    def _cancel_abandoned(self) -> None:
        now = self.clock()
        for channel_id, channel in list(self._channels.items()):
            if channel.taken_at is not None and now - channel.taken_at > self.abandoned_after_s:
                del self._channels[channel_id]
                for key in [k for k in self._open if k[0] == channel_id]:
                    self.cancel(key)


class StreamChannel:
    """This process's streams from one replica actor (`OpenStreams`' caller side). Each stream's first batch
    answers its `stream_open`; the rest of all of them comes from one `stream_take` call in flight at a time,
    made while any is open, whose batches go to each stream's queue. Not thread-safe: one event loop owns it."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor
        self.channel_id = uuid.uuid4().hex
        self._ids = itertools.count(1)
        self._queues: dict[int, asyncio.Queue] = {}
        self._taking: asyncio.Task | None = None

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent | RemoteEngineError]:
        """The stream's events in order (an engine failure as a `RemoteEngineError`, last); a Ray error (the
        actor or its node died) is raised. Closed early, it cancels the stream on the replica."""
        stream_id = next(self._ids)
        queue = self._queues[stream_id] = asyncio.Queue()  # before the open: a take may bring its events first
        is_over = False
        try:
            batch = await self.actor.stream_open.remote(request, self.channel_id, stream_id)
            while True:
                if batch.is_last:
                    is_over = True
                elif self._taking is None:
                    self._taking = asyncio.create_task(self._take_while_open())
                for event in batch.events:
                    yield event
                if is_over:
                    return
                batch = await queue.get()
                if isinstance(batch, BaseException):
                    is_over = True  # the replica is gone: nothing to cancel there
                    raise batch
        finally:
            self._queues.pop(stream_id, None)
            if not is_over:  # the client went away or its deadline passed: stop generating on the replica
                try:
                    self.actor.stream_cancel.remote(self.channel_id, stream_id)
                except Exception:  # noqa: BLE001 — Ray knows the actor is gone: nothing left generating there
                    pass

    async def _take_while_open(self) -> None:
        try:
            while self._queues:
                for batch in await self.actor.stream_take.remote(self.channel_id):
                    queue = self._queues.pop(batch.stream_id, None) if batch.is_last else self._queues.get(batch.stream_id)
                    if queue is not None:
                        queue.put_nowait(batch)
        except Exception as exc:  # noqa: BLE001 — a dead actor or node ends every stream open on it
            for queue in self._queues.values():
                queue.put_nowait(exc)
        finally:
            self._taking = None


class RayReplicaEngine:
    """The `Engine` for a replica actor. `start` creates the actor (via `make_actor`) and waits for its engine."""

    def __init__(self, replica_id: str, expert_id: str, node_id: str, make_actor: Any, actor: Any = None,
                 channel: StreamChannel | None = None) -> None:
        self.replica_id = replica_id
        self.expert_id = expert_id
        self.node_id = node_id
        self._make_actor = make_actor
        self.actor = actor
        self.last_cold_start: Any = None
        self.lost: str | None = None
        self.channel = channel
        """Where this engine's streams are fetched (pass one to share it with other engines for this actor)."""

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
        """The replica's events, fetched in batches (`StreamChannel`, shared by this process's streams on it)."""
        from ray.exceptions import RayError

        self._running_actor()
        if self.channel is None or self.channel.actor != self.actor:
            self.channel = StreamChannel(self.actor)
        try:
            async for event in self.channel.stream(request):
                if isinstance(event, RemoteEngineError):
                    raise event.to_exception()
                yield event
        except RayError as exc:
            raise self._failure(exc) from None
