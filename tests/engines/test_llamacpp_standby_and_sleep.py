"""The llama.cpp worker's fast paths on the real SmolLM2 model: a cold start that adopts a pre-started standby
worker (no spawn on its path); sleep at level 1 (context freed, model and KV cells kept) and level 2 (model
freed) then wake in the same process; the chat template prefix's KV cells kept on disk for the next worker."""

from __future__ import annotations

import httpx
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


async def test_level_2_sleep_frees_the_model_and_wake_reloads_it_in_the_same_process():
    engine = LlamaCppEngine("smol", n_ctx=512, n_threads=1, sleep_level=2)
    await engine.start()
    try:
        pid = engine.process.pid
        before = (await engine.complete(_request())).text
        await engine.sleep()
        assert engine.is_asleep and engine.is_running
        health = httpx.get(f"http://127.0.0.1:{engine.port}/health").json()
        assert health["sleep_level"] == 2 and health["kept_kv_bytes"] == 0
        with pytest.raises(EngineError) as asleep:
            await engine.complete(_request())
        assert asleep.value.status == 503
        await engine.wake()
        assert not engine.is_asleep and engine.last_wake.call == "wake" and engine.process.pid == pid
        assert (await engine.complete(_request())).text == before  # same model, greedy: same answer
    finally:
        await engine.stop()


async def test_level_1_sleep_keeps_the_model_and_the_kv_cells_and_wake_reuses_them():
    engine = LlamaCppEngine("smol", n_ctx=512, n_threads=1)  # level 1 is the default
    await engine.start()
    try:
        pid = engine.process.pid
        first = await engine.complete(_request())
        await engine.sleep()
        health = httpx.get(f"http://127.0.0.1:{engine.port}/health").json()
        assert health["is_sleeping"] and health["sleep_level"] == 1 and health["kept_kv_bytes"] > 0
        with pytest.raises(EngineError) as asleep:
            await engine.complete(_request())
        assert asleep.value.status == 503
        bad = httpx.post(f"http://127.0.0.1:{engine.port}/sleep?level=3")
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_sleep_level"
        await engine.wake()
        assert engine.process.pid == pid
        again = await engine.complete(_request())
        assert again.text == first.text
        # The cells kept across the sleep hold the previous prompt: all of it but its last token is reused.
        assert again.finish.usage.cached_prompt_tokens == again.finish.usage.prompt_tokens - 1
    finally:
        await engine.stop()


async def test_the_template_prefix_is_in_the_cache_at_ready_and_the_next_worker_restores_it(tmp_path):
    answers, anatomies, usages = [], [], []
    for _ in range(2):
        engine = LlamaCppEngine("smol", n_ctx=512, n_threads=1, prefix_cache_dir=tmp_path)
        await engine.start()
        try:
            completion = await engine.complete(_request())
        finally:
            await engine.stop()
        answers.append(completion.text)
        anatomies.append(engine.last_cold_start)
        usages.append(completion.finish.usage)
    assert [a.prefix_restored for a in anatomies] == [False, True]
    assert anatomies[0].prefix_tokens == anatomies[1].prefix_tokens > 0
    assert [u.cached_prompt_tokens for u in usages] == [anatomies[0].prefix_tokens] * 2  # the first request reuses it
    assert answers[0] == answers[1]
    assert len(list(tmp_path.glob("*.kv"))) == 1
