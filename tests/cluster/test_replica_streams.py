"""A replica actor's streams fetched in batches (`ray_streams.OpenStreams` on the replica, `StreamChannel` in the
gateway), without Ray: every event arrives once and in order, a batch returns as soon as one event is ready
(never waiting for a later one), many streams share one take, engine failures end a stream as a value, and
cancelled or abandoned streams stop generating."""

from __future__ import annotations

import asyncio

from switchboard.cluster.ray_replica import ReplicaActor
from switchboard.cluster.ray_streams import OpenStreams, RemoteEngineError, StreamChannel
from switchboard.engines.base import EngineError, Finish, GenerationRequest, TextDelta, Usage
from switchboard.testing.actor_handles import InProcessHandle
from switchboard.testing.fleet_view import until


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


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_a_stream_ready_at_once_is_one_batch():
    streams = OpenStreams()
    batch = await streams.open(instant(16), "e", "gw", 1)
    assert batch.is_last  # ended: nothing more to take
    assert [e.text for e in batch.events[:-1]] == [f"t{i}" for i in range(16)]
    assert isinstance(batch.events[-1], Finish)
    assert len(streams) == 0 and streams.num_completed == 1


async def test_a_batch_returns_with_the_one_ready_event_and_later_ones_follow_in_order():
    streams, gate = OpenStreams(), Gate()
    opening = asyncio.ensure_future(streams.open(gate.events(3), "e", "gw", 1))
    await settle()
    assert not opening.done()  # nothing ready yet: the first batch waits for the first event
    gate.opened.put_nowait(None)
    first = await opening  # returns with that one token, without waiting for the second
    assert [e.text for e in first.events] == ["t0"] and not first.is_last
    taking = asyncio.ensure_future(streams.take("gw"))
    await settle()
    assert not taking.done()
    gate.opened.put_nowait(None)
    (second,) = await taking
    assert second.stream_id == 1 and [e.text for e in second.events] == ["t1"] and not second.is_last
    gate.opened.put_nowait(None)
    seen = []
    while not seen or not seen[-1].is_last:
        seen += await streams.take("gw")
    assert [getattr(e, "text", None) for b in seen for e in b.events] == ["t2", None] and isinstance(seen[-1].events[-1], Finish)
    assert streams.num_completed == 1 and len(streams) == 0


async def test_one_take_brings_the_ready_events_of_every_stream_of_its_channel_only():
    streams, gates = OpenStreams(), [Gate() for _ in range(4)]
    for index, gate in enumerate(gates):
        gate.opened.put_nowait(None)
        await streams.open(gate.events(2), "e", "gw-a" if index < 3 else "gw-b", index)
    for gate in gates:
        gate.opened.put_nowait(None)
    await settle()
    taken = await streams.take("gw-a")
    assert sorted(b.stream_id for b in taken) == [0, 1, 2]
    assert all([getattr(e, "text", None) for e in b.events] == ["t1", None] and b.is_last for b in taken)
    (other,) = await streams.take("gw-b")
    assert other.stream_id == 3 and other.is_last and streams.num_completed == 4


async def test_an_engine_failure_ends_the_stream_as_a_value():
    async def failing():
        yield TextDelta("a")
        raise EngineError("e", "out of memory", status=503, code="engine_down")

    streams = OpenStreams()
    batch = await streams.open(failing(), "e", "gw", 1)
    events = list(batch.events)
    while not batch.is_last:
        (batch,) = await streams.take("gw")
        events += batch.events
    assert events[0] == TextDelta("a")
    assert events[-1] == RemoteEngineError("EngineError", "e", "out of memory", 503, "engine_down")
    assert streams.num_completed == 0  # not answered in full


async def test_cancel_stops_generating_and_wakes_a_waiting_take():
    streams, gate = OpenStreams(), Gate()
    gate.opened.put_nowait(None)
    await streams.open(gate.events(100), "e", "gw", 1)
    taking = asyncio.ensure_future(streams.take("gw"))
    await settle()
    streams.cancel(("gw", 1))
    assert await taking == []  # nothing left to wait for
    await settle()
    assert gate.is_closed and len(streams) == 0 and streams.num_completed == 0


async def test_streams_of_a_channel_nobody_takes_from_are_cancelled_when_another_opens():
    now = [0.0]
    streams, gate = OpenStreams(clock=lambda: now[0], abandoned_after_s=60.0), Gate()
    gate.opened.put_nowait(None)
    await streams.open(gate.events(100), "e", "dead-gw", 1)
    now[0] = 59.0
    await streams.open(instant(1), "e", "gw", 1)
    assert len(streams) == 1  # not yet abandoned
    now[0] = 61.0
    await streams.open(instant(1), "e", "gw", 2)
    await settle()
    assert len(streams) == 0 and gate.is_closed


def chat(num_tokens: int) -> GenerationRequest:
    body = {"model": "sim", "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": num_tokens, "stream": True}
    return GenerationRequest("r", "chat", body, num_tokens, 4)


async def test_sixteen_streams_through_one_channel_each_get_their_whole_answer():
    replica = ReplicaActor({"id": "sim", "backend": {"kind": "simulated", "time_scale": 0.05}})
    await replica.start()
    channel = StreamChannel(InProcessHandle(replica))

    async def collect(num_tokens: int) -> list:
        return [event async for event in channel.stream(chat(num_tokens))]

    answers = await asyncio.gather(*(collect(4 + i) for i in range(16)))
    for index, events in enumerate(answers):
        assert [type(e) for e in events] == [TextDelta] * (4 + index) + [Finish]
        assert events[-1].usage.completion_tokens == 4 + index
    assert replica.num_completed == 16 and len(replica.streams) == 0

    # A client that leaves mid-stream: the replica stops generating it.
    stream = channel.stream(chat(1000))
    assert isinstance(await stream.__anext__(), TextDelta)
    await stream.aclose()
    await settle()
    assert len(replica.streams) == 0 and replica.num_completed == 16
    await replica.stop()


class Counting(InProcessHandle):
    """`InProcessHandle`, counting the requests of each `open_many` call."""

    def __init__(self, actor: ReplicaActor) -> None:
        super().__init__(actor)
        self.batches: list[int] = []

    def __getattr__(self, name: str):
        remote = super().__getattr__(name)
        if name != "open_many":
            return remote
        batches = self.batches

        class Counted:
            @staticmethod
            def remote(requests, *args):
                batches.append(len(requests))
                return remote.remote(requests, *args)

        return Counted


def whole(num_tokens: int) -> GenerationRequest:
    body = {"model": "sim", "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": num_tokens}
    return GenerationRequest("r", "chat", body, num_tokens, 4)


class Held:
    """Wraps a replica's engine: nothing starts answering until `go` is set."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.go = asyncio.Event()

    async def complete(self, request):
        await self.go.wait()
        return await self.engine.complete(request)

    async def stream(self, request):
        await self.go.wait()
        async for event in self.engine.stream(request):
            yield event

    async def stop(self) -> None:
        await self.engine.stop()


async def test_requests_arriving_while_a_call_is_in_flight_go_together_in_the_next_one():
    from switchboard.cluster.ray_replica import RayReplicaEngine

    replica = ReplicaActor({"id": "sim", "backend": {"kind": "simulated", "time_scale": 0}})
    await replica.start()
    handle = Counting(replica)
    engine = RayReplicaEngine("sim#1", "sim", "node", make_actor=None, actor=handle)
    alone = await engine.complete(whole(3))  # alone: one call, out at once, answered whole in it
    assert alone.finish.usage.completion_tokens == 3 and handle.batches == [1]
    together = await asyncio.gather(*(engine.complete(whole(2)) for _ in range(16)))  # arriving at once: one call
    assert handle.batches == [1, 16] and all(c.finish.usage.completion_tokens == 2 for c in together)

    async def streamed(num_tokens: int) -> list:
        return [event async for event in engine.stream(chat(num_tokens))]

    handle.batches.clear()
    replica.engine = held = Held(replica.engine)
    engine.channel = StreamChannel(handle, open_wait_s=60.0)  # the call waits for the first events, however long
    requests = [asyncio.ensure_future(engine.complete(whole(1)))]
    await until(lambda: handle.batches == [1])  # in flight: its replica waits for its first event
    requests += [asyncio.ensure_future(engine.complete(whole(1 + i)) if i % 2 else streamed(1 + i)) for i in range(1, 16)]
    await settle()
    assert handle.batches == [1]  # queued behind the call in flight
    held.go.set()
    answers = await asyncio.gather(*requests)
    assert handle.batches == [1, 15]  # then all together, in the next call
    for index, answer in enumerate(answers):  # each its own answer, once
        if index % 2 or index == 0:
            assert answer.finish.usage.completion_tokens == 1 + index
        else:
            assert [type(e) for e in answer] == [TextDelta] * (1 + index) + [Finish]
    assert replica.num_completed == 33 and len(replica.streams) == 0
    await replica.stop()


async def test_a_batch_waits_for_the_clients_the_last_one_answered_and_a_lone_request_goes_at_once():
    from switchboard.cluster.ray_replica import RayReplicaEngine

    replica = ReplicaActor({"id": "sim", "backend": {"kind": "simulated", "time_scale": 0}})
    await replica.start()
    handle = Counting(replica)
    channel = StreamChannel(handle, gather_s=60.0)
    engine = RayReplicaEngine("sim#1", "sim", "node", make_actor=None, actor=handle, channel=channel)
    await asyncio.gather(*(engine.complete(whole(2)) for _ in range(4)))
    assert handle.batches == [4]
    # Their clients come back one by one: the next call waits for all of them...
    requests = [asyncio.ensure_future(engine.complete(whole(2)))]
    for _ in range(2):
        await settle()
        requests.append(asyncio.ensure_future(engine.complete(whole(2))))
    await settle()
    assert handle.batches == [4]
    requests.append(asyncio.ensure_future(engine.complete(whole(2))))
    await asyncio.gather(*requests)
    assert handle.batches == [4, 4]
    # ... for at most `gather_s` after the first arrived (or the last answer); a client that leaves meanwhile is never sent.
    channel.gather_s = 0.05
    leaving = asyncio.ensure_future(engine.complete(whole(2)))
    await settle()
    leaving.cancel()
    staying = await engine.complete(whole(3))
    assert staying.finish.usage.completion_tokens == 3 and handle.batches == [4, 4, 1]
    # After a lone request, the next one goes at once, however long the window.
    channel.gather_s = 60.0
    await asyncio.wait_for(engine.complete(whole(2)), timeout=10)
    assert handle.batches == [4, 4, 1, 1] and replica.num_completed == 10
    await replica.stop()


async def test_the_requests_queued_behind_a_call_wait_for_the_clients_it_answers_and_go_with_them():
    """Two groups of clients on one channel (those answered by the call in flight, those queued behind it) merge
    into one call per round instead of alternating in two (issue 17: three gateways at concurrency 16)."""
    from switchboard.cluster.ray_replica import RayReplicaEngine

    replica = ReplicaActor({"id": "sim", "backend": {"kind": "simulated", "time_scale": 0}})
    await replica.start()
    handle = Counting(replica)
    replica.engine = held = Held(replica.engine)
    engine = RayReplicaEngine("sim#1", "sim", "node", make_actor=None, actor=handle,
                              channel=StreamChannel(handle, open_wait_s=60.0, gather_s=0.5))

    async def client(num_requests: int) -> int:
        for _ in range(num_requests):
            await engine.complete(whole(2))
        return num_requests

    first = [asyncio.ensure_future(client(2)) for _ in range(3)]
    await until(lambda: handle.batches == [3])  # in flight, held on the replica
    queued = [asyncio.ensure_future(client(1)) for _ in range(2)]
    await asyncio.sleep(1.0)  # the call in flight outlasts `gather_s`: the queued ones have waited longer than it
    held.go.set()
    assert await asyncio.gather(*first, *queued) == [2, 2, 2, 1, 1]
    # Still they wait for the 3 just answered (up to `gather_s` after the answer) and go with them.
    assert handle.batches == [3, 5] and replica.num_completed == 8
    await replica.stop()


async def test_a_batch_answers_without_waiting_for_its_slow_requests():
    streams, gate = OpenStreams(), Gate()
    opening = asyncio.ensure_future(streams.open_many([(1, instant(2)), (2, gate.events(1))], "e", "gw", 0.01))
    first, slow = await opening  # after 10 ms at most: the slow one has nothing yet
    assert first.is_last and len(first.events) == 3
    assert slow.events == [] and not slow.is_last
    gate.opened.put_nowait(None)
    taken = []
    while not taken or not taken[-1].is_last:
        taken += await streams.take("gw")
    assert [type(e) for b in taken for e in b.events] == [TextDelta, Finish] and streams.num_completed == 2


class Dying:
    """A replica actor handle whose actor dies: calls in flight, and later ones, fail as Ray fails them."""

    def __init__(self, actor: ReplicaActor) -> None:
        self.inner = InProcessHandle(actor)
        self.died = asyncio.Event()
        self.batches: list[int] = []

    def __getattr__(self, name: str):
        remote = self.inner.__getattr__(name)
        died, batches = self.died, self.batches
        if name == "stream_cancel":  # not awaited by its caller (a dead actor's cancel changes nothing)
            return remote

        class Method:
            @staticmethod
            def remote(*args):
                if name == "open_many":
                    batches.append(len(args[0]))

                async def call():
                    from ray.exceptions import ActorDiedError

                    answer = asyncio.ensure_future(remote.remote(*args))
                    await asyncio.wait([answer, asyncio.ensure_future(died.wait())], return_when=asyncio.FIRST_COMPLETED)
                    if died.is_set():
                        answer.cancel()
                        raise ActorDiedError()
                    return answer.result()
                return call()

        return Method


async def test_a_replica_dying_mid_batch_ends_every_request_of_the_batch_as_lost():
    """Dying while a batch's call is in flight (15 more queued behind it), or while a batch's requests are open
    and answering: every request ends once, as `ReplicaLost` (the fleet's 503 and retry), none hangs."""
    from switchboard.cluster.ray_replica import RayReplicaEngine
    from switchboard.engines.base import ReplicaLost

    for open_wait_s in (60.0, 0.01):
        replica = ReplicaActor({"id": "sim", "backend": {"kind": "simulated", "time_scale": 0}})
        await replica.start()
        replica.engine = Held(replica.engine)
        handle = Dying(replica)
        engine = RayReplicaEngine("sim#1", "sim", "node", make_actor=None, actor=handle,
                                  channel=StreamChannel(handle, open_wait_s=open_wait_s))

        async def one(index: int):
            try:
                if index % 2:
                    return await engine.complete(whole(50))
                return [event async for event in engine.stream(chat(50))]
            except ReplicaLost as exc:
                return exc

        requests = [asyncio.ensure_future(one(0))]
        await until(lambda: handle.batches == [1])
        requests += [asyncio.ensure_future(one(i)) for i in range(1, 16)]
        if open_wait_s < 1:  # both calls answered (nothing ready yet): all 16 open on the replica, a take in flight
            await until(lambda: handle.batches == [1, 15] and len(replica.streams) == 16)
        else:
            await settle()
        handle.died.set()
        outcomes = await asyncio.wait_for(asyncio.gather(*requests), timeout=30)
        assert all(isinstance(o, ReplicaLost) and "its actor died" in o.detail for o in outcomes), outcomes
        assert handle.batches == [1, 15] and not engine.is_running
        await replica.stop()
