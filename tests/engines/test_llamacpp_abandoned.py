"""A whole (non-streamed) answer whose caller leaves before it is ready, on the real SmolLM2 model: the worker stops
generating at the next token and serves the next request (it went on to `max_tokens` for nobody, holding its one
sequence from the requests behind). A stream already stopped when its reader left; the gateway's side of a
client leaving: tests/gateway/test_client_leaves.py."""

from __future__ import annotations

import asyncio
import contextlib

import httpx
import pytest

from switchboard.engines.base import GenerationRequest
from switchboard.engines.llamacpp.engine import LlamaCppEngine

pytestmark = pytest.mark.llamacpp

# SmolLM2's end-of-text tokens (<|endoftext|>, <|im_end|>) banned: the answer runs all its max_tokens unless stopped.
NEVER_ENDS = {"0": -100, "2": -100}
LONG = {"messages": [{"role": "user", "content": "Count from 1 to 1000, one number per line."}], "max_tokens": 900,
        "temperature": 0, "logit_bias": NEVER_ENDS}


async def test_the_worker_stops_a_whole_answer_whose_caller_left_and_serves_the_next():
    engine = LlamaCppEngine("smol", n_ctx=1024, n_threads=1)
    await engine.start()
    try:
        long = asyncio.ensure_future(engine.complete(GenerationRequest("long", "chat", LONG, 900, 16)))
        await asyncio.sleep(1.5)
        assert not long.done()  # generating (900 tokens take this CPU well over 5 s)
        long.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await long
        async with httpx.AsyncClient() as client:
            for _ in range(100):
                if (await client.get(f"http://127.0.0.1:{engine.port}/health")).json()["num_cancelled"] == 1:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the worker went on generating for a caller that had left")
        body = {"messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 3, "temperature": 0}
        assert (await engine.complete(GenerationRequest("next", "chat", body, 3, 8))).finish.usage.completion_tokens > 0
    finally:
        await engine.stop()
