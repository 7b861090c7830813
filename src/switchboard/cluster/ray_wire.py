"""What crosses the boundary between a gateway and a replica actor for each request, packed as values Ray
serializes without pickling (docs/ray.md, "What crosses per request"; issue 17).

Ray packs an actor call's arguments and its answer with msgpack and pickles (cloudpickle) only what msgpack does
not hold natively: exact lists, dicts, str, bytes, int, float, bool and None travel as they are, but a tuple, a
dataclass or an enum is pickled, and unpickled on the other side by Python code per object (a frozen slotted
dataclass: `__getstate__`/`__setstate__` calls). A streamed answer of 16 tokens is 19 such objects: packing them
cost 67 µs of CPU and unpacking 36 µs here, as much as the engine's own work for the request; the same events as
strings and lists, under 1 µs each (`benchmarks/ray_wire_cost.py`). So requests, and the events every answer has
(plain text pieces, the `Finish`, a plain `Completion`), travel packed; any other event (a `RawChunk`, a
`TextDelta` with logprobs or a raw delta, a `RemoteEngineError`, a `Finish` with a reason outside `FinishReason`,
...) travels as itself, pickled by Ray as before, and comes out equal. `unpack_*(pack_*(x))` == x for every value.
"""

from __future__ import annotations

from typing import Any

from switchboard.engines.base import Completion, Finish, GenerationRequest, TextDelta, Usage
from switchboard.types import FinishReason

_FINISH = 0
_COMPLETION = 1
_REASONS = {reason.value: reason for reason in FinishReason}


def pack_request(stream_id: int, request: GenerationRequest, is_whole: bool) -> list[Any]:
    """[stream id, request id, kind, body, max tokens, prompt tokens estimate, is whole]: a list, never a tuple
    (msgpack holds lists natively; the body is the client's JSON, natively held too)."""
    return [stream_id, request.request_id, request.kind, request.body, request.max_tokens,
            request.num_prompt_tokens_estimate, is_whole]


def unpack_request(packed: list[Any]) -> tuple[int, GenerationRequest, bool]:
    """(stream id, request, is whole) of a `pack_request` value."""
    stream_id, request_id, kind, body, max_tokens, num_prompt_tokens, is_whole = packed
    return stream_id, GenerationRequest(request_id, kind, body, max_tokens, num_prompt_tokens), is_whole


def _pack_finish(finish: Finish) -> list[Any] | None:
    usage = finish.usage
    if type(finish.reason) is not FinishReason or type(usage) is not Usage:
        return None
    return [_FINISH, finish.reason.value, usage.prompt_tokens, usage.completion_tokens, usage.cached_prompt_tokens,
            finish.is_relayed, finish.index]


def _unpack_finish(packed: list[Any]) -> Finish:
    _, reason, prompt_tokens, completion_tokens, cached_prompt_tokens, is_relayed, index = packed
    return Finish(_REASONS[reason], Usage(prompt_tokens, completion_tokens, cached_prompt_tokens), is_relayed, index)


def pack_event(event: Any) -> Any:
    """A plain text piece as its string, a `Finish` or plain `Completion` as a tagged list; anything else as
    itself."""
    kind = type(event)
    if kind is TextDelta:
        if event.raw_delta is None and event.index == 0 and event.logprobs is None:
            return event.text
    elif kind is Finish:
        packed = _pack_finish(event)
        if packed is not None:
            return packed
    elif kind is Completion:
        if event.raw_choice is None and event.raw_body is None and not event.raw_headers and not event.more_choices:
            finish = _pack_finish(event.finish)
            if finish is not None:
                return [_COMPLETION, event.text, finish]
    return event


def unpack_event(packed: Any) -> Any:
    """The event a `pack_event` value stands for (events are never bare strings or lists)."""
    kind = type(packed)
    if kind is str:
        return TextDelta(packed)
    if kind is list:
        if packed[0] == _FINISH:
            return _unpack_finish(packed)
        return Completion(packed[1], _unpack_finish(packed[2]))
    return packed
