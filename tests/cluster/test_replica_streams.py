"""A replica actor's streams fetched in batches (`ray_replica.OpenStreams`), without Ray: every event arrives once
and in order, a batch returns as soon as one event is ready (never waiting for a later one), engine failures end
the stream as a value, and cancelled or abandoned streams stop generating."""

from __future__ import annotations

import asyncio

from switchboard.cluster.ray_replica import OpenStreams, RemoteEngineError
from switchboard.engines.base import EngineError, Finish, TextDelta, Usage


class Gate:
    """An engine stream that yields a token each time the test opens the gate."""

    def __init__(self) -> None:
        self.opened = asyncio.Queue()
        self.is_closed = False

    async def events(self, num_tokens: int):
        try:
            for index in range(num_tokens):
                await self.opened.get()
                yield TextDelta(f"t{index}")
            yield Finish("stop", Usage(1, num_tokens))
        finally:
            self.is_closed = True


async def instant(num_tokens: int):
    for index in range(num_tokens):
        yield TextDelta(f"t{index}")
    yield Finish("length", Usage(1, num_tokens))


async def test_a_stream_ready_at_once_is_one_batch():
    streams = OpenStreams()
    batch = await streams.open(instant(16), "e")
    assert batch.stream_id is None  # ended: nothing more to ask for
    assert [e.text for e in batch.events[:-1]] == [f"t{i}" for i in range(16)]
    assert isinstance(batch.events[-1], Finish)
    assert len(streams) == 0 and streams.num_completed == 1


async def test_a_batch_returns_with_the_one_ready_event_and_later_ones_follow_in_order():
    streams, gate = OpenStreams(), Gate()
    opening = asyncio.ensure_future(streams.open(gate.events(3), "e"))
    await asyncio.sleep(0)
    assert not opening.done()  # nothing ready yet: the first batch waits for the first event
    gate.opened.put_nowait(None)
    first = await opening  # returns with that one token, without waiting for the second
    assert [e.text for e in first.events] == ["t0"] and first.stream_id is not None
    gate.opened.put_nowait(None)
    gate.opened.put_nowait(None)
    seen = []
    batch = await streams.next(first.stream_id)
    while True:
        seen += batch.events
        if batch.stream_id is None:
            break
        batch = await streams.next(batch.stream_id)
    assert [getattr(e, "text", None) for e in seen] == ["t1", "t2", None] and isinstance(seen[-1], Finish)
    assert streams.num_completed == 1 and len(streams) == 0


async def test_an_engine_failure_ends_the_stream_as_a_value():
    async def failing():
        yield TextDelta("a")
        raise EngineError("e", "out of memory", status=503, code="engine_down")

    streams = OpenStreams()
    batch = await streams.open(failing(), "e")
    events = list(batch.events)
    while batch.stream_id is not None:
        batch = await streams.next(batch.stream_id)
        events += batch.events
    assert events[0] == TextDelta("a")
    assert events[-1] == RemoteEngineError("EngineError", "e", "out of memory", 503, "engine_down")
    assert streams.num_completed == 0  # not answered in full


async def test_cancel_stops_generating_and_releases_a_waiting_batch():
    streams, gate = OpenStreams(), Gate()
    gate.opened.put_nowait(None)
    first = await streams.open(gate.events(100), "e")
    waiting = asyncio.ensure_future(streams.next(first.stream_id))
    await asyncio.sleep(0)
    streams.cancel(first.stream_id)
    assert (await waiting).stream_id is None
    for _ in range(10):
        await asyncio.sleep(0)
    assert gate.is_closed and len(streams) == 0 and streams.num_completed == 0
    gone = await streams.next(first.stream_id)  # asked again after it was cancelled: an error, not a hang
    assert gone.stream_id is None and isinstance(gone.events[0], RemoteEngineError)


async def test_a_stream_nobody_asks_for_is_cancelled_when_another_opens():
    now = [0.0]
    streams, gate = OpenStreams(clock=lambda: now[0], abandoned_after_s=60.0), Gate()
    gate.opened.put_nowait(None)
    orphan = await streams.open(gate.events(100), "e")
    now[0] = 59.0
    await streams.open(instant(1), "e")
    assert len(streams) == 1  # not yet abandoned
    now[0] = 61.0
    await streams.open(instant(1), "e")
    for _ in range(10):
        await asyncio.sleep(0)
    assert len(streams) == 0 and gate.is_closed
    assert orphan.stream_id is not None
