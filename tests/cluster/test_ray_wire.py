"""What crosses between a gateway and a replica actor per request (`ray_wire`, `ray_streams.pack_batches`): every
value comes out equal to what went in, and a request and the events every answer has are made only of values
msgpack holds natively (Ray then pickles nothing for them), without Ray."""

from __future__ import annotations

from typing import Any

from switchboard.cluster.ray_streams import RemoteEngineError, StreamBatch, pack_batches, unpack_batch
from switchboard.cluster.ray_wire import pack_event, pack_request, unpack_event, unpack_request
from switchboard.engines.base import Completion, Finish, GenerationRequest, RawChunk, TextDelta, Usage
from switchboard.types import FinishReason


def is_native(value: Any) -> bool:
    """Made only of what Ray's msgpack packs without pickling (exact types: no tuples, no subclasses)."""
    kind = type(value)
    if kind is list:
        return all(is_native(v) for v in value)
    if kind is dict:
        return all(type(k) is str and is_native(v) for k, v in value.items())
    return value is None or kind in (str, bytes, int, float, bool)


COMMON = [
    TextDelta("Hello"),
    TextDelta(""),
    Finish(FinishReason.LENGTH, Usage(4, 16)),
    Finish(FinishReason.STOP, Usage(4, 16, cached_prompt_tokens=3), is_relayed=True, index=2),
    Completion("Hello world", Finish(FinishReason.STOP, Usage(7, 2))),
]
UNCOMMON = [
    TextDelta("x", raw_delta={"content": "x", "tool_calls": []}),
    TextDelta("x", index=1),
    TextDelta("x", logprobs={"content": [{"token": "x", "logprob": -0.1}]}),
    Finish("stop", Usage(1, 2)),  # a reason outside FinishReason
    RawChunk(b"data: {}\n\n", ((b"x-upstream", b"1"),)),
    Completion("a", Finish(FinishReason.STOP, Usage(1, 1)), raw_choice={"message": {"content": "a"}}),
    Completion("a", Finish(FinishReason.STOP, Usage(2, 2)), more_choices=(Completion("b", Finish(FinishReason.STOP, Usage(2, 2))),)),
    RemoteEngineError("EngineError", "sim", "boom", 502, "upstream_error"),
]


def test_the_events_every_answer_has_travel_packed_and_come_out_equal():
    for event in COMMON:
        packed = pack_event(event)
        assert is_native(packed), event
        unpacked = unpack_event(packed)
        assert unpacked == event
        finish = unpacked.finish if isinstance(unpacked, Completion) else unpacked
        if isinstance(finish, Finish):  # the enum itself (`==` does not tell it from its string value)
            assert type(finish.reason) is FinishReason


def test_any_other_event_travels_as_itself():
    for event in UNCOMMON:
        assert pack_event(event) is event
        assert unpack_event(pack_event(event)) == event


def test_a_request_travels_packed_and_comes_out_equal():
    body = {"model": "sim", "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 16, "stream": True,
            "temperature": 0.5, "stop": ["\n"], "user": None}
    request = GenerationRequest("chatcmpl-1", "chat", body, 16, 4)
    packed = pack_request(7, request, True)
    assert is_native(packed)
    assert unpack_request(packed) == (7, request, True)


def test_batches_travel_packed_and_come_out_equal():
    batches = [StreamBatch(1, COMMON[:3], False), StreamBatch(2, [], False), StreamBatch(3, COMMON[3:], True),
               StreamBatch(4, UNCOMMON, True)]
    packed = pack_batches(batches)
    assert all(is_native(p) for p in packed[:3])
    assert [unpack_batch(p) for p in packed] == batches
