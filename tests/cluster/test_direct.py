"""Requests over a direct connection from a gateway to a replica actor (`ray_direct`), without Ray: the same
answers as through actor calls, objects the wire format leaves alone cross pickled (from the replica only), a
wrong token or a pickled frame from a gateway is refused, a lost connection ends each request in flight once
(as `ReplicaLost` when Ray says the actor is gone, as a 502 naming the connection when it is alive) and the next
request connects again, and the replica stops generating what a closed connection left open."""

from __future__ import annotations

import asyncio

import pytest

from switchboard.cluster.ray_direct import DirectConnection, DirectConnectionLost, connect_direct, frame, read_frame
from switchboard.cluster.ray_replica import RayReplicaEngine, ReplicaActor
from switchboard.cluster.ray_streams import StreamChannel
from switchboard.engines.base import EngineError, Finish, GenerationRequest, RawChunk, ReplicaLost, TextDelta
from switchboard.testing.actor_handles import InProcessHandle
from switchboard.testing.fleet_view import until


def chat(num_tokens: int, *, stream: bool = True) -> GenerationRequest:
    body = {"model": "sim", "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": num_tokens, "stream": stream}
    return GenerationRequest("r", "chat", body, num_tokens, 4)


class Handle(InProcessHandle):
    """An in-process replica actor handle whose `describe` (what a lost connection asks) answers as Ray would:
    the actor's description while `is_alive`, Ray's `RayActorError` once not."""

    def __init__(self, actor: ReplicaActor) -> None:
        super().__init__(actor)
        self.is_alive = True

    def __getattr__(self, name: str):
        if name != "describe":
            return super().__getattr__(name)
        handle = self

        class Describe:
            @staticmethod
            def remote():
                from ray.exceptions import RayActorError

                done = asyncio.get_running_loop().create_future()
                if handle.is_alive:
                    done.set_result({"expert_id": "sim"})
                else:
                    done.set_exception(RayActorError())
                return done

        return Describe


async def replica_with(backend: dict) -> tuple[ReplicaActor, Handle]:
    replica = ReplicaActor({"id": "sim", "backend": backend})
    replica.direct_host = "127.0.0.1"
    await replica.start()
    return replica, Handle(replica)


async def test_answers_over_a_direct_connection_are_those_of_actor_calls():
    replica, handle = await replica_with({"kind": "simulated", "time_scale": 0.02})
    direct = StreamChannel(handle, connect=connect_direct)
    by_calls = StreamChannel(handle)

    async def collect(channel: StreamChannel, num_tokens: int) -> list:
        return [event async for event in channel.stream(chat(num_tokens))]

    answers = await asyncio.gather(*(collect(direct, 4 + i) for i in range(16)))
    expected = await asyncio.gather(*(collect(by_calls, 4 + i) for i in range(16)))
    assert answers == expected
    for index, events in enumerate(answers):
        assert [type(e) for e in events] == [TextDelta] * (4 + index) + [Finish]
    (completion,) = [event async for event in direct.stream(chat(8, stream=False), whole=True)]
    assert completion.finish.usage.completion_tokens == 8
    assert replica.direct.num_connections == 1  # one connection carried all of them
    calls = replica.call_counts()
    assert calls["opened"] == 33 and replica.num_completed == 33

    # A client that leaves mid-stream: the replica stops generating it.
    stream = direct.stream(chat(1000))
    assert isinstance(await stream.__anext__(), TextDelta)
    await stream.aclose()
    await until(lambda: len(replica.streams) == 0)
    assert replica.num_completed == 33
    await replica.stop()


class Odd:
    """An engine whose events are ones the wire format leaves as objects: a `RawChunk`, and a failure."""

    async def stream(self, request):
        yield RawChunk(b"data: {}\n\n", ((b"x-upstream", b"1"),))
        yield TextDelta("hi", logprobs={"content": [{"token": "hi", "logprob": -0.5}]})
        raise EngineError("sim", "upstream said no", status=429, code="rate_limited")

    async def complete(self, request):
        raise EngineError("sim", "upstream said no", status=429, code="rate_limited")

    async def stop(self) -> None:
        return None


async def test_events_the_wire_leaves_as_objects_cross_pickled_and_errors_keep_their_status():
    replica, handle = await replica_with({"kind": "simulated", "time_scale": 0})
    replica.engine = Odd()
    engine = RayReplicaEngine("sim#1", "sim", "node", make_actor=None, actor=handle,
                              channel=StreamChannel(handle, connect=connect_direct))
    seen = []
    with pytest.raises(EngineError) as raised:
        async for event in engine.stream(chat(4)):
            seen.append(event)
    assert seen == [RawChunk(b"data: {}\n\n", ((b"x-upstream", b"1"),)),
                    TextDelta("hi", logprobs={"content": [{"token": "hi", "logprob": -0.5}]})]
    assert raised.value.status == 429 and raised.value.code == "rate_limited" and "said no" in raised.value.detail
    with pytest.raises(EngineError) as raised:
        await engine.complete(chat(4, stream=False))
    assert raised.value.status == 429 and engine.is_running
    await replica.stop()


async def test_a_wrong_token_or_a_pickled_frame_from_a_gateway_is_refused():
    replica, handle = await replica_with({"kind": "simulated", "time_scale": 0})
    host, port, token = await replica.direct_address()
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(frame("not the token") + frame(["take", 1]))
    with pytest.raises(asyncio.IncompleteReadError):
        await asyncio.wait_for(read_frame(reader), 10)  # closed without an answer
    assert replica.direct.num_connections == 0

    reader, writer = await asyncio.open_connection(host, port)
    writer.write(frame(token) + frame(["open", 1, [[1, "r", "chat", {"x": object()}, 4, 4, True]], None], allow_pickle=True))
    with pytest.raises(asyncio.IncompleteReadError):
        await asyncio.wait_for(read_frame(reader), 10)  # never unpickled: the connection ends
    assert replica.call_counts()["opened"] == 0
    await replica.stop()


async def test_a_lost_connection_ends_each_request_in_flight_once_and_the_next_connects_again():
    replica, handle = await replica_with({"kind": "simulated", "time_scale": 0.05})
    channel = StreamChannel(handle, connect=connect_direct)
    engine = RayReplicaEngine("sim#1", "sim", "node", make_actor=None, actor=handle, channel=channel)

    async def one(index: int):
        try:
            if index % 2:
                return await engine.complete(chat(200, stream=False))
            return [event async for event in engine.stream(chat(200))]
        except EngineError as exc:
            return exc

    # The actor is alive (only the connection went): a 502 naming the connection; the replica stays in service.
    requests = [asyncio.ensure_future(one(i)) for i in range(8)]
    await until(lambda: len(replica.streams) == 8)
    replica.direct.close()
    outcomes = await asyncio.wait_for(asyncio.gather(*requests), 30)
    assert all(type(o) is EngineError and o.status == 502 and "connection to replica sim#1 was lost" in o.detail
               for o in outcomes), outcomes
    assert engine.is_running
    await until(lambda: len(replica.streams) == 0)  # the replica stopped generating what the connection left
    assert replica.num_completed == 0

    replica.direct = None  # listens afresh on the next ask
    events = [event async for event in engine.stream(chat(3))]
    assert isinstance(events[-1], Finish) and replica.direct.num_connections == 1

    # The actor is gone (Ray says so): `ReplicaLost`, and the engine is marked lost.
    requests = [asyncio.ensure_future(one(i)) for i in range(4)]
    await until(lambda: len(replica.streams) == 4)
    handle.is_alive = False
    replica.direct.close()
    outcomes = await asyncio.wait_for(asyncio.gather(*requests), 30)
    assert all(isinstance(o, ReplicaLost) and "its actor died" in o.detail for o in outcomes), outcomes
    assert not engine.is_running
    await replica.stop()


async def test_a_connection_closes_when_its_replica_stops():
    replica, handle = await replica_with({"kind": "simulated", "time_scale": 0})
    connection = await DirectConnection.open(handle)
    assert await connection.open_many([], "ignored", None) == []  # a call goes through
    await replica.stop()
    await until(lambda: connection.is_closed)
    with pytest.raises(DirectConnectionLost):
        await connection.open_many([], "ignored", None)


async def test_a_replica_whose_socket_cannot_be_reached_is_called_through_ray():
    replica, handle = await replica_with({"kind": "simulated", "time_scale": 0})
    await replica.direct_address()
    replica.direct.address = ["127.0.0.1", 1, replica.direct.token]  # nothing listens on port 1
    channel = StreamChannel(handle, connect=connect_direct)
    events = [event async for event in channel.stream(chat(3))]
    assert isinstance(events[-1], Finish)
    assert replica.direct.num_connections == 0 and replica.call_counts()["open_calls"] == 1
    await replica.stop()


async def test_a_dropped_channel_closes_its_connection_once_its_requests_end():
    replica, handle = await replica_with({"kind": "simulated", "time_scale": 0.02})
    channel = StreamChannel(handle, connect=connect_direct)
    stream = channel.stream(chat(50))
    assert isinstance(await stream.__anext__(), TextDelta)
    connection = channel._calls
    channel.close_when_idle()  # the gateway dropped the replica from its view, a request still under way
    assert not connection.is_closed
    rest = [event async for event in stream]
    assert isinstance(rest[-1], Finish) and replica.num_completed == 1  # it finished whole
    assert connection.is_closed
    events = [event async for event in channel.stream(chat(3))]  # a later request through it connects again
    assert isinstance(events[-1], Finish) and replica.direct.num_connections == 2 and not channel._calls.is_closed
    await replica.stop()
