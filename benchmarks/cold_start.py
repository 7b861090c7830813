"""Cold-start anatomy of the local llama.cpp engine, and what a cold expert costs a request at the gateway.

Part 1 — repeated starts of a real SmolLM2-135M worker process: process spawn (interpreter up, llama.cpp
imported), model load, ready (listening), and first token of a first request; p50/p99 over N starts.
Part 2 — the gateway with the live control plane: the same request to a cold expert (scaled to zero; the
request wakes it) and to a warm one, side by side; reports time to first token and total latency for each
and their ratio.

The measured numbers feed the simulator's CPU calibration (switchboard.sim cluster `calibration`).

Run: .venv/bin/python benchmarks/cold_start.py [--starts 10] [--requests 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import httpx
import numpy as np

from switchboard.config import parse_config
from switchboard.engines.base import GenerationRequest
from switchboard.engines.llamacpp.engine import LlamaCppEngine
from switchboard.gateway.app import build_app
from switchboard.testing.servers import serve_in_thread

PROMPT = [{"role": "user", "content": "Name one colour."}]

GATEWAY_CONFIG = """
experts:
  - id: smol
    backend: {kind: llamacpp}
    params_b: 0.135
    context_tokens: 1024
    warm_at_start: false
    ttft_slo_s: 30
control_plane:
  step_interval_s: 0.1
  policies:
    keepalive: {kind: fixed, idle_timeout_s: 1}
    autoscale: {min_replicas: 0, max_replicas: 1, downscale_delay_s: 0}
    prewarm: {kind: none}
"""


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


async def engine_starts(num_starts: int) -> dict[str, list[float]]:
    phases: dict[str, list[float]] = {"spawn_s": [], "load_s": [], "warmup_s": [], "ready_s": [], "first_token_s": [], "total_s": []}
    request = GenerationRequest("bench", "chat", {"messages": PROMPT, "max_tokens": 4, "temperature": 0}, 4, 8)
    for _ in range(num_starts):
        engine = LlamaCppEngine("smol", n_ctx=1024)
        t0 = time.perf_counter()
        await engine.start()
        t_ready = time.perf_counter()
        async for _event in engine.stream(request):
            phases["first_token_s"].append(time.perf_counter() - t_ready)
            break
        phases["total_s"].append(time.perf_counter() - t0)
        anatomy = engine.last_cold_start
        phases["spawn_s"].append(anatomy.spawn_s)
        phases["load_s"].append(anatomy.load_s)
        phases["warmup_s"].append(anatomy.warmup_s)
        phases["ready_s"].append(anatomy.ready_s)
        await engine.stop()
    return phases


def gateway_cold_vs_warm(num_requests: int) -> dict[str, dict[str, list[float]]]:
    out = {"cold": {"ttft_s": [], "total_s": []}, "warm": {"ttft_s": [], "total_s": []}}
    body = {"model": "smol", "messages": PROMPT, "max_tokens": 8, "temperature": 0, "stream": True}
    with serve_in_thread(build_app(parse_config(GATEWAY_CONFIG))) as url, httpx.Client(base_url=url, timeout=120) as http:
        def states() -> list[str]:
            return [r["state"] for r in http.get("/admin/fleet").json()["experts"][0]["replicas"]]

        def timed(expect_cold: bool) -> tuple[float, float]:
            t0 = time.perf_counter()
            ttft = None
            with http.stream("POST", "/v1/chat/completions", json=body) as response:
                assert response.status_code == 200, response.read()
                assert response.headers["x-switchboard-cold-start"] == ("true" if expect_cold else "false")
                for line in response.iter_lines():
                    if ttft is None and '"content":"' in line and '"content":""' not in line:
                        ttft = time.perf_counter() - t0
            return ttft or float("nan"), time.perf_counter() - t0

        for _ in range(num_requests):
            deadline = time.monotonic() + 60
            while states():  # wait for scale-to-zero
                assert time.monotonic() < deadline, "expert never scaled to zero"
                time.sleep(0.1)
            ttft, total = timed(expect_cold=True)
            out["cold"]["ttft_s"].append(ttft)
            out["cold"]["total_s"].append(total)
            ttft, total = timed(expect_cold=False)
            out["warm"]["ttft_s"].append(ttft)
            out["warm"]["total_s"].append(total)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--starts", type=int, default=10)
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    phases = asyncio.run(engine_starts(args.starts))
    print(f"llama.cpp worker cold start, SmolLM2-135M Q4_1, {args.starts} starts:")
    print(f"  {'phase':<16}{'p50 s':>8}{'p99 s':>8}")
    for name, values in phases.items():
        print(f"  {name:<16}{pct(values, 50):8.3f}{pct(values, 99):8.3f}")

    gw = gateway_cold_vs_warm(args.requests)
    print(f"\ngateway, same streamed request ({args.requests} each), cold expert (woken by the request) vs warm:")
    print(f"  {'':<6}{'TTFT p50 s':>12}{'TTFT p99 s':>12}{'total p50 s':>13}")
    for kind in ("cold", "warm"):
        print(f"  {kind:<6}{pct(gw[kind]['ttft_s'], 50):12.3f}{pct(gw[kind]['ttft_s'], 99):12.3f}{pct(gw[kind]['total_s'], 50):13.3f}")
    added = pct(gw["cold"]["ttft_s"], 50) - pct(gw["warm"]["ttft_s"], 50)
    print(f"  cold adds {added:.3f} s to TTFT p50 (x{pct(gw['cold']['ttft_s'], 50) / pct(gw['warm']['ttft_s'], 50):.1f}); "
          f"engine ready p50 is {pct(phases['ready_s'], 50):.3f} s of it")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"engine": phases, "gateway": gw}, fh, indent=2)


if __name__ == "__main__":
    main()
