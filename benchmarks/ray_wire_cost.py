"""What one request's values cost to cross between a gateway and a replica actor, as objects and packed
(`switchboard.cluster.ray_wire`; docs/ray.md, "What crosses per request").

Ray packs an actor call's arguments and answer with msgpack and hands what msgpack does not hold natively to
cloudpickle (one pass over all of them), unpickled on the other side with `pickle.loads`. This times those same
operations, in one process, on one request's values: the request, a streamed answer of 16 tokens (16 text pieces
and a `Finish`, in one batch) and a whole answer (a `Completion`), each as the objects the code used to send and as
`ray_wire` packs them. A CPU-time measure of one process: robust to a shared machine's load, unlike the
end-to-end runs.

Run: PYTHONPATH=$PWD/src .venv/bin/python benchmarks/ray_wire_cost.py [--repeats 5000]
"""

from __future__ import annotations

import argparse
import pickle
import time
from typing import Any

import msgpack
from ray import cloudpickle

from switchboard.cluster.ray_streams import StreamBatch, pack_batches
from switchboard.cluster.ray_wire import pack_request
from switchboard.engines.base import Completion, Finish, GenerationRequest, TextDelta, Usage
from switchboard.engines.simulated import placeholder_text, split_into
from switchboard.types import FinishReason


def _cost_us(function: Any, value: Any, repeats: int) -> float:
    started = time.process_time()
    for _ in range(repeats):
        function(value)
    return (time.process_time() - started) / repeats * 1e6


def _send_cost_us(value: Any, repeats: int) -> tuple[float, float]:
    """CPU µs to pack and to unpack `value` as Ray does: msgpack for what it holds natively, else cloudpickle."""
    try:
        packed = msgpack.packb(value, strict_types=True)
        return _cost_us(lambda v: msgpack.packb(v, strict_types=True), value, repeats), _cost_us(msgpack.unpackb, packed, repeats)
    except TypeError:  # not msgpack-native: pickled
        pickled = cloudpickle.dumps(value, protocol=5)
        return _cost_us(lambda v: cloudpickle.dumps(v, protocol=5), value, repeats), _cost_us(pickle.loads, pickled, repeats)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5000)
    args = parser.parse_args()
    body = {"model": "instant", "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 16, "stream": True}
    request = GenerationRequest("chatcmpl-0123456789abcdef", "chat", body, 16, 4)
    pieces = split_into(placeholder_text("instant", 16), 16)
    finish = Finish(FinishReason.LENGTH, Usage(4, 16))
    streamed = [StreamBatch(1, [TextDelta(p) for p in pieces] + [finish], True)]
    whole = [StreamBatch(1, [Completion("".join(pieces), finish)], True)]
    cases = [
        ("request", [(1, request, True)], [pack_request(1, request, True)]),
        ("streamed answer, 16 tokens", streamed, pack_batches(streamed)),
        ("whole answer", whole, pack_batches(whole)),
    ]
    print(f"{'value':28} {'objects: pack':>14} {'unpack':>7} {'packed: pack':>13} {'unpack':>7}   (CPU us, {args.repeats} repeats)")
    for name, objects, packed in cases:
        as_objects, as_packed = _send_cost_us(objects, args.repeats), _send_cost_us(packed, args.repeats)
        print(f"{name:28} {as_objects[0]:14.1f} {as_objects[1]:7.1f} {as_packed[0]:13.1f} {as_packed[1]:7.1f}")


if __name__ == "__main__":
    main()
