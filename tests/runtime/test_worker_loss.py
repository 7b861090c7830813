"""Losing a worker, without Ray (the `FakeCluster` adapter): its replicas are stopped as lost and re-placed on
a surviving worker by the placement policy; requests that had no answer yet are retried there, streams already
under way end with a clear `replica_lost` error, and nothing hangs."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai

from switchboard.cluster.fake import FakeCluster
from switchboard.config import parse_config
from switchboard.fleet.state import Worker
from switchboard.gateway.app import build_app
from switchboard.runtime.fleet import LiveFleet
from switchboard.testing.servers import serve_in_thread
from switchboard.types import HardwareKind, WorkerId

CONFIG = """
experts:
  - id: small
    backend: {kind: simulated, hardware: l4, time_scale: 0.2}
    params_b: 1
    max_output_tokens: 4000
router: {enabled: false}
storage: {enabled: false}
control_plane: {step_interval_s: 0.1}
"""


def l4(worker_id: str) -> Worker:
    return Worker(WorkerId(worker_id), HardwareKind("l4"), memory_gb=24, usd_per_hour=0.8)


def replicas(url: str) -> list[dict]:
    return httpx.get(url + "/admin/fleet", timeout=10).json()["experts"][0]["replicas"]


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while not (found := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for: {what}"
        time.sleep(0.05)
    return found


def test_lost_worker_replicas_are_replaced_and_requests_end_cleanly():
    config = parse_config(CONFIG)
    cluster = FakeCluster([l4("l4-a"), l4("l4-b")])
    app = build_app(config, fleet=LiveFleet(config, cluster=cluster))
    with serve_in_thread(app) as url:
        (first,) = wait_for(lambda: [r for r in replicas(url) if r["state"] == "warm"], 60, "a warm replica")

        async def scenario() -> tuple[list, list]:
            async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60) as client:
                messages = [{"role": "user", "content": "hi"}]
                streams = [await client.chat.completions.create(model="small", messages=messages, max_tokens=3000, stream=True) for _ in range(2)]
                firsts = [await anext(aiter(s)) for s in streams]  # these have answered already: a retry would repeat tokens
                assert all(f.choices for f in firsts)
                whole = [asyncio.create_task(client.chat.completions.with_raw_response.create(model="small", messages=messages, max_tokens=3000))
                         for _ in range(2)]
                await asyncio.to_thread(wait_for, lambda: sum(r["num_running"] for r in replicas(url)) == 4, 30, "4 running requests")
                cluster.lose(first["worker"])

                async def drain(stream) -> BaseException | None:
                    try:
                        async for _ in stream:
                            pass
                    except openai.APIError as exc:
                        return exc
                    return None

                stream_outcomes = await asyncio.wait_for(asyncio.gather(*(drain(s) for s in streams)), 60)
                whole_outcomes = await asyncio.wait_for(asyncio.gather(*whole, return_exceptions=True), 60)
                return stream_outcomes, whole_outcomes

        stream_outcomes, whole_outcomes = asyncio.run(scenario())
        for outcome in stream_outcomes:  # under way when the worker went: a clear error naming the loss
            assert isinstance(outcome, openai.APIError) and "lost" in str(outcome.message), outcome
        for outcome in whole_outcomes:  # not answered yet: retried on the replacement, answered in full
            assert not isinstance(outcome, BaseException), outcome
            assert outcome.headers["x-switchboard-replica"] != first["replica_id"]
            assert outcome.parse().choices[0].finish_reason == "length"

        now = wait_for(lambda: [r for r in replicas(url) if r["state"] == "warm"], 60, "a warm replacement")
        assert {r["worker"] for r in now} == {"l4-b"}
        decisions = httpx.get(url + "/admin/fleet", timeout=10).json()["decisions"]
        assert any(d["action"] == "StopReplica" and d["code"] in ("worker-lost", "engine-lost") and d["replica"] == first["replica_id"] for d in decisions)
        assert any(d["action"] == "StartReplica" and d["code"] == "replace-lost" for d in decisions)
    fleet = app.state.gateway.fleet
    assert not [r.replica_id for r in fleet.live.values() if r.num_outstanding], "a lost request still holds load"
