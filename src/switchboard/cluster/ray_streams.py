"""A gateway's requests to a replica actor, streamed or whole, opened in batches and fetched in batches by plain
calls (docs/ray.md, "Streaming" and "Batched calls"; issue 17) — over a direct connection to the replica
(`ray_direct`), or as Ray actor calls (`ActorCalls`): `OpenStreams` inside the replica actor, `StreamChannel` in
the gateway; and `RemoteEngineError`, an engine error as a value that crosses the process boundary. Ray-free (the
actor handle and the connection are passed in), so the protocol is tested in-process."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from switchboard.cluster.ray_wire import pack_event, pack_request, unpack_event
from switchboard.engines import base as engine_base
from switchboard.engines.base import EngineError, GenerationRequest, StreamEvent


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


def pack_batches(batches: list[StreamBatch]) -> list[list[Any]]:
    """Batches as they cross to the gateway: each [stream id, is last, [its events, packed]] (`ray_wire`)."""
    return [[batch.stream_id, batch.is_last, [pack_event(event) for event in batch.events]] for batch in batches]


def unpack_batch(packed: list[Any]) -> StreamBatch:
    """The `StreamBatch` of one `pack_batches` item."""
    stream_id, is_last, events = packed
    return StreamBatch(stream_id, [unpack_event(event) for event in events], is_last)


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
        self.num_open_calls = 0
        self.num_opened = 0
        self.num_take_calls = 0
        """Calls answered and streams opened, for the benchmarks' calls per request (issue 17)."""

    def __len__(self) -> int:
        return len(self._open)

    def _channel(self, channel_id: str) -> _Channel:
        channel = self._channels.get(channel_id)
        if channel is None:
            channel = self._channels[channel_id] = _Channel(self.clock())
        return channel

    async def open(self, events: AsyncIterator[StreamEvent], expert_id: str, channel_id: str, stream_id: int) -> StreamBatch:
        """Starts `events` as stream `stream_id` of `channel_id`; returns once its first event is ready, with every
        event ready then."""
        (batch,) = await self.open_many([(stream_id, events)], expert_id, channel_id, None)
        return batch

    async def open_many(self, opened: list[tuple[int, AsyncIterator[StreamEvent]]], expert_id: str, channel_id: str,
                        wait_s: float | None) -> list[StreamBatch]:
        """Starts each (stream id, events) as a stream of `channel_id`, all at once; returns once each has an event
        ready, or `wait_s` passed (None: no bound), with one batch per stream, in order: every event ready then
        (none yet: an empty batch; its events come from `take`, as all later ones do)."""
        self._cancel_abandoned()
        self.num_open_calls += 1
        self.num_opened += len(opened)
        channel = self._channel(channel_id)
        num_waiting = len(opened)
        loop = asyncio.get_running_loop()
        # A future and a timer rather than `wait_for(event.wait(), ...)`, which costs a task more per call.
        all_ready = loop.create_future()

        def ready() -> None:
            if not all_ready.done():
                all_ready.set_result(None)

        def on_first() -> None:
            nonlocal num_waiting
            num_waiting -= 1
            if num_waiting == 0:
                ready()

        started = [self._start((channel_id, stream_id), events, expert_id, channel, on_first) for stream_id, events in opened]
        if num_waiting > 0:
            timer = None if wait_s is None else loop.call_later(wait_s, ready)
            try:
                await all_ready
            finally:
                if timer is not None:
                    timer.cancel()
        batches = []
        for key, stream in started:
            batch = self._drain(key, stream, [])
            if not batch.is_last:
                stream.is_in_channel = True  # from now on its events wake the channel's take
            batches.append(batch)
        return batches

    def _start(self, key: StreamKey, events: AsyncIterator[StreamEvent], expert_id: str, channel: _Channel,
               on_first: Any) -> tuple[StreamKey, _OpenStream]:
        """The stream, its engine events pumped into its queue; `on_first()` is called with its first event."""
        ready: asyncio.Queue[Any] = asyncio.Queue()
        is_first = True

        def put(item: Any) -> None:
            nonlocal is_first
            ready.put_nowait(item)
            if is_first:
                is_first = False
                on_first()
            stream = self._open.get(key)
            if stream is not None and stream.is_in_channel:
                channel.ready_ids[key[1]] = None
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
        return key, stream

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
        self.num_take_calls += 1
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

    def cancel_channel(self, channel_id: str) -> None:
        """The channel's caller is gone for good (its direct connection closed): stop all its streams."""
        self._channels.pop(channel_id, None)
        for key in [k for k in self._open if k[0] == channel_id]:
            self.cancel(key)

    def _cancel_abandoned(self) -> None:
        now = self.clock()
        for channel_id, channel in list(self._channels.items()):
            if channel.taken_at is not None and now - channel.taken_at > self.abandoned_after_s:
                del self._channels[channel_id]
                for key in [k for k in self._open if k[0] == channel_id]:
                    self.cancel(key)


class ActorCalls:
    """The protocol's calls as the actor's own Ray calls: what `StreamChannel` uses with no `connect`
    (`cluster.direct_requests: false`), and where a replica's direct socket cannot be reached."""

    is_closed = False

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    def open_many(self, requests: list[list[Any]], channel_id: str, wait_s: float | None) -> Any:
        return self.actor.open_many.remote(requests, channel_id, wait_s)

    def stream_take(self, channel_id: str) -> Any:
        return self.actor.stream_take.remote(channel_id)

    def stream_cancel(self, channel_id: str, stream_id: int) -> None:
        self.actor.stream_cancel.remote(channel_id, stream_id)


OPEN_WAIT_S = 0.002
"""How long a replica waits, at most, for the first event of each request of a batch before it answers the call
that opened them (the rest then comes by `take`): longer holds back the next batch, shorter costs an extra call
for answers that take a moment."""
OPEN_GATHER_S = 0.002
"""How long a channel's next batch waits, at most, for the clients its last answers went to (they are about to
send their next requests) before its call goes: one actor call costs both processes far more CPU than a request's
own work on the bare path (issue 17), so gathering those clients into one call, rather than sending whatever
queued behind the last call and leaving them for the call after, is what lets several gateways share the cores.
Counted from the later of the batch's first arrival and the last answer: with no client answered and not back
yet (concurrency 1: its one client is back), a batch never waits."""


class _ToOpen:
    __slots__ = ("stream_id", "request", "is_whole", "answer", "is_sent", "queued_at", "calls", "events")

    def __init__(self, stream_id: int, request: GenerationRequest, is_whole: bool, answer: asyncio.Future,
                 queued_at: float) -> None:
        self.stream_id = stream_id
        self.request = request
        self.is_whole = is_whole
        self.answer = answer
        self.is_sent = False
        self.queued_at = queued_at
        """The event loop's time when it was queued."""
        self.calls: Any = None
        """What it was sent through (its later events and its cancel go the same way)."""
        self.events: asyncio.Queue = asyncio.Queue()
        """Its batches after the first (from `stream_take`), or the error that ended them."""


class StreamChannel:
    """This process's requests to one replica actor (`OpenStreams`' caller side), streamed or whole. Requests are
    opened in batches, one `open_many` call in flight at a time: those that arrive while a call is in flight go
    together in the next (one call for many requests: what lets one gateway carry more than one actor call per
    request allows), and a batch goes once every client answered since the last batch went has sent its next
    request, or `gather_s` after that batch's first request arrived or the last answer, whichever is later — so
    the requests that queued behind a call and those its answers bring back go together, instead of alternating
    in two half-size calls, and a lone request (concurrency 1: its client is back) goes at once. Each request's first
    batch answers its `open_many`; the rest of all of them comes from one `stream_take` call in flight at a
    time, made while any is open, whose batches go to each request's queue. The calls go through what `connect`
    makes (a direct connection: `ray_direct.connect_direct`), made again for the next batch once it is lost (the
    requests on the lost one fail), or as the actor's Ray calls with no `connect`. Not thread-safe: one event loop
    owns it."""

    def __init__(self, actor: Any, open_wait_s: float = OPEN_WAIT_S, gather_s: float = OPEN_GATHER_S,
                 connect: Callable[[Any], Awaitable[Any]] | None = None) -> None:
        self.actor = actor
        self._connect = connect
        """Makes the object the calls go through (`ray_direct.connect_direct`: a direct connection to the actor);
        None: the actor's own Ray calls."""
        self._calls: Any = None if connect is not None else ActorCalls(actor)
        self.open_wait_s = open_wait_s
        self.gather_s = gather_s
        self._num_returning = 0
        """Requests answered in full whose clients have not sent another yet (each new request counts as one
        back): what the next batch waits for, up to `gather_s`."""
        self._answered_at = float("-inf")
        """The event loop's time of the last answer counted in `_num_returning`."""
        self._gathered: asyncio.Future | None = None
        """Set while the next batch waits to fill up; answered when it has."""
        self.channel_id = uuid.uuid4().hex
        self._ids = itertools.count(1)
        self._streams: dict[int, _ToOpen] = {}
        """Stream id -> the request, while its events may still come from a take."""
        self._taking: asyncio.Task | None = None
        self._to_open: list[_ToOpen] = []
        self._opening: asyncio.Task | None = None
        self._is_closing = False

    async def stream(self, request: GenerationRequest, *, whole: bool = False) -> AsyncIterator[StreamEvent | RemoteEngineError]:
        """The request's events in order (an engine failure as a `RemoteEngineError`, last; `whole`: its one event
        is the whole answer, a `Completion`); a Ray error (the actor or its node died, also under the batch it was
        opened in) is raised. Closed early, it cancels the request on the replica (or before it is sent)."""
        stream_id = next(self._ids)
        loop = asyncio.get_running_loop()
        item = _ToOpen(stream_id, request, whole, loop.create_future(), loop.time())
        queue = item.events
        self._streams[stream_id] = item  # before the open: a take may bring its events first
        self._to_open.append(item)
        self._num_returning = max(0, self._num_returning - 1)
        if self._opening is None:
            self._opening = asyncio.create_task(self._open_queued())
        elif self._gathered is not None and self._num_returning == 0 and not self._gathered.done():
            self._gathered.set_result(None)
        is_over = False
        try:
            batch = await item.answer
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
            self._streams.pop(stream_id, None)
            if not item.is_sent:  # the caller left before its batch went: it is never sent
                self._to_open = [x for x in self._to_open if x is not item]
            elif not is_over:  # the client went away or its deadline passed: stop generating on the replica
                try:
                    item.calls.stream_cancel(self.channel_id, stream_id)
                except Exception:  # noqa: BLE001 — Ray knows the actor is gone: nothing left generating there
                    pass
            self._close_if_idle()

    async def _open_queued(self) -> None:
        """Sends what is waiting to be opened, one `open_many` call at a time, until nothing is."""
        try:
            while self._to_open:
                await self._gather()
                batch, self._to_open = self._to_open, []
                if not batch:  # their callers all left while it gathered
                    continue
                try:
                    calls = await self._calls_now()
                    for item in batch:
                        item.is_sent = True
                        item.calls = calls
                    answers = await calls.open_many(
                        [pack_request(item.stream_id, item.request, item.is_whole) for item in batch], self.channel_id,
                        self.open_wait_s)
                except Exception as exc:  # noqa: BLE001 — a dead actor or node ends every request of the batch
                    answers = [exc] * len(batch)
                for item, answer in zip(batch, answers):
                    if item.answer.done():  # its caller left meanwhile (it cancels the request on the replica)
                        continue
                    if isinstance(answer, BaseException):
                        item.answer.set_exception(answer)
                    else:
                        item.answer.set_result(self._answered(unpack_batch(answer)))
        finally:
            self._opening = None

    def _answered(self, batch: StreamBatch) -> StreamBatch:
        """Counts `batch`'s request as answered in full, if it is: its client's next request is on its way."""
        if batch.is_last:
            self._num_returning += 1
            self._answered_at = asyncio.get_running_loop().time()
        return batch

    async def _gather(self) -> None:
        """Returns once every client answered since the last batch went is back (`_num_returning`), or `gather_s`
        after the waiting batch's first request arrived or the last answer, whichever is later (then the clients
        still out are not waited for again)."""
        if self._num_returning == 0:
            return
        loop = asyncio.get_running_loop()
        delay_s = max(self._to_open[0].queued_at, self._answered_at) + self.gather_s - loop.time()
        if delay_s > 0:
            self._gathered = loop.create_future()
            timer = loop.call_later(delay_s, lambda: self._gathered.done() or self._gathered.set_result(None))
            try:
                await self._gathered
            finally:
                timer.cancel()
                self._gathered = None
        self._num_returning = 0  # those not back by now are not coming soon

    async def _calls_now(self) -> Any:
        """What this batch's calls go through: the current connection, or a new one if it was lost."""
        if self._calls is None or self._calls.is_closed:
            assert self._connect is not None
            self._calls = await self._connect(self.actor)
        return self._calls

    def close_when_idle(self) -> None:
        """Closes this channel's direct connection, if it has one, once no request is open or waiting on it (the
        gateway dropped the replica from its view; a later request through it connects again)."""
        self._is_closing = True
        self._close_if_idle()

    def _close_if_idle(self) -> None:
        if self._is_closing and not self._streams and not self._to_open:
            self._is_closing = False
            close = getattr(self._calls, "close", None)
            if close is not None:
                close()

    async def _take_while_open(self) -> None:
        """Takes the events of the open streams while any is open, each through the connection it was opened on
        (the current one: a request goes through a new connection only once the last was lost, and a lost one
        fails every stream still open on it)."""
        try:
            while self._streams:
                calls = self._calls
                try:
                    taken = await calls.stream_take(self.channel_id)
                except Exception as exc:  # noqa: BLE001 — a dead actor or node (or a lost connection) ends its streams
                    for stream_id, item in list(self._streams.items()):
                        if item.calls is calls:
                            del self._streams[stream_id]
                            item.events.put_nowait(exc)
                    if self._calls is calls:
                        return  # no newer connection (or Ray calls: the actor is gone): nothing more to take
                    continue  # streams opened on the connection that replaced it are taken from there
                for packed in taken:
                    batch = self._answered(unpack_batch(packed))
                    item = self._streams.pop(batch.stream_id, None) if batch.is_last else self._streams.get(batch.stream_id)
                    if item is not None:
                        item.events.put_nowait(batch)
        finally:
            self._taking = None
