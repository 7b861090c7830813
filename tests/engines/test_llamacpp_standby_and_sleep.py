"""The llama.cpp worker's fast paths on the real SmolLM2 model: a cold start that adopts a pre-started standby
worker (no spawn on its path), and level-1 sleep (model freed, process kept) then wake in the same process."""

from __future__ import annotations

import pytest

from switchboard.engines.base import EngineError, GenerationRequest
from switchboard.engines.llamacpp.engine import LlamaCppEngine
from switchboard.engines.llamacpp.pool import StandbyPool

pytestmark = pytest.mark.llamacpp


def _request(max_tokens: int = 3) -> GenerationRequest:
    body = {"messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": max_tokens, "temperature": 0}
    return GenerationRequest("r", "chat", body, max_tokens, 8)


async def _wait_ready(pool: StandbyPool, n: int) -> None:
    import asyncio

    for _ in range(600):
        if pool.num_ready >= n:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the standby pool did not fill within 60 s")


async def test_a_cold_start_adopts_a_standby_worker_and_the_pool_refills():
    pool = StandbyPool(1)
    pool.start()
    await _wait_ready(pool, 1)
    engine = LlamaCppEngine("smol", n_ctx=512, n_threads=1, pool=pool)
    try:
        await engine.start()
        assert engine.last_cold_start.adopted and engine.last_cold_start.spawn_s == 0.0
        assert (await engine.complete(_request())).finish.usage.completion_tokens > 0
        await _wait_ready(pool, 1)  # refilled in the background
        assert pool.num_adopted == 1
    finally:
        await engine.stop()
        await pool.close()
    assert pool.num_ready == 0


async def test_sleep_frees_the_model_and_wake_reloads_it_in_the_same_process():
    engine = LlamaCppEngine("smol", n_ctx=512, n_threads=1)
    await engine.start()
    try:
        pid = engine.process.pid
        before = (await engine.complete(_request())).text
        await engine.sleep()
        assert engine.is_asleep and engine.is_running
        with pytest.raises(EngineError) as asleep:
            await engine.complete(_request())
        assert asleep.value.status == 503
        await engine.wake()
        assert not engine.is_asleep and engine.last_wake.call == "wake" and engine.process.pid == pid
        assert (await engine.complete(_request())).text == before  # same model, greedy: same answer
    finally:
        await engine.stop()
