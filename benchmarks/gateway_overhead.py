"""Gateway overhead: a fast local upstream measured directly and through the gateway, in the same run.

For concurrency 1, 8 and 64, non-streaming and streaming, prints requests/s, p50/p99 latency (for streams also
time to first byte) directly and through the gateway, their ratios, the added p50 at concurrency 1, and the
gateway's resident memory. Also compares upstream HTTP clients (our engines/http1.py, aiohttp, httpx) against the
same upstream, which is how the gateway's client was chosen.

Processes: the upstream (raw ASGI on uvicorn), the gateway (`switchboard serve`, one worker) and this load
generator each run in their own process on this 2-core machine, so absolute numbers include CPU contention
among the three; the ratios compare like with like.

Run: .venv/bin/python benchmarks/gateway_overhead.py [--duration 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time

import httpx
import psutil
import uvloop

sys.path.insert(0, os.path.dirname(__file__))
from _load import build_request, run_load  # noqa: E402

from switchboard.testing.servers import free_port  # noqa: E402

UPSTREAM_CODE = """
import sys, uvicorn
from switchboard.testing.upstream import MockUpstream
uvicorn.run(MockUpstream(num_chunks=16), host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", http="httptools",
            log_level="warning", access_log=False)
"""


def _wait_http(url: str, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def _body(stream: bool, model: str) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "Hello there, how are you today?"}],
                       "max_tokens": 16, "stream": stream}).encode()


async def _client_comparison(port: int, duration_s: float) -> list[dict]:
    """Our http1 client vs aiohttp vs httpx as the upstream client, closed loop against the upstream, in this process."""
    import aiohttp

    from switchboard.engines.http1 import ConnectionPool

    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    body = _body(False, "mock")
    rows = []
    for concurrency in (1, 64):
        for name in ("http1", "aiohttp", "httpx"):
            latencies: list[float] = []
            stop_at = time.perf_counter() + duration_s
            if name == "http1":
                session = ConnectionPool("127.0.0.1", port, max_connections=256)
                head = session.request_head("POST", "/v1/chat/completions", {"content-type": "application/json"})
                async def call():
                    r = await session.request(head, body)
                    try:
                        await r.read()
                    finally:
                        r.release()
            elif name == "aiohttp":
                session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
                async def call():
                    async with session.post(url, data=body, headers={"content-type": "application/json"}) as r:
                        await r.read()
            else:
                session = httpx.AsyncClient(limits=httpx.Limits(max_connections=256, max_keepalive_connections=256))
                async def call():
                    r = await session.post(url, content=body, headers={"content-type": "application/json"})
                    r.read()

            async def worker():
                while time.perf_counter() < stop_at:
                    t0 = time.perf_counter()
                    await call()
                    latencies.append(time.perf_counter() - t0)

            t_start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            elapsed = time.perf_counter() - t_start
            await (session.aclose() if name == "httpx" else session.close())
            latencies.sort()
            rows.append({"client": name, "concurrency": concurrency, "rps": len(latencies) / elapsed,
                         "p50_ms": latencies[len(latencies) // 2] * 1000})
    return rows


def _framework_comparison(config_path: str, results: list[dict], duration_s: float) -> list[dict]:
    """The same gateway on FastAPI (benchmarks/_fastapi_gateway.py), measured right after ours."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(__file__), "_fastapi_gateway.py"), config_path, str(port)])
    rows = []
    try:
        _wait_http(f"http://127.0.0.1:{port}/healthz", proc)
        for concurrency in (1, 64):
            ours = next(r for r in results if not r["stream"] and r["concurrency"] == concurrency)["gateway"]
            request = build_request("127.0.0.1", port, "/v1/chat/completions", _body(False, "fast"))
            result = asyncio.run(run_load("127.0.0.1", port, request, concurrency=concurrency, duration_s=duration_s))
            rows.append({"concurrency": concurrency, "ours_rps": ours["rps"], "ours_p50_ms": ours["p50_ms"],
                         "fastapi_rps": result.rps, "fastapi_p50_ms": result.pct_ms(50)})
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per cell")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    up_port, gw_port = free_port(), free_port()
    upstream = subprocess.Popen([sys.executable, "-c", UPSTREAM_CODE, str(up_port)])
    config = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    config.write(f"""experts:
  - id: fast
    backend: {{kind: openai, base_url: "http://127.0.0.1:{up_port}/v1", model: mock}}
""")
    config.close()
    gateway = subprocess.Popen([sys.executable, "-m", "switchboard.cli", "serve", "--config", config.name,
                                "--port", str(gw_port), "--log-level", "warning"])
    results = []
    try:
        _wait_http(f"http://127.0.0.1:{up_port}/v1/models", upstream)
        _wait_http(f"http://127.0.0.1:{gw_port}/healthz", gateway)
        gw_proc = psutil.Process(gateway.pid)
        rss_idle_mb = gw_proc.memory_info().rss / 2**20
        uvloop.install()
        for stream in (False, True):
            for concurrency in (1, 8, 64):
                row = {"stream": stream, "concurrency": concurrency}
                for target, port, model in (("direct", up_port, "mock"), ("gateway", gw_port, "fast")):
                    request = build_request("127.0.0.1", port, "/v1/chat/completions", _body(stream, model))
                    result = asyncio.run(run_load("127.0.0.1", port, request, concurrency=concurrency, duration_s=args.duration))
                    row[target] = {"rps": result.rps, "p50_ms": result.pct_ms(50), "p99_ms": result.pct_ms(99),
                                   "ttfb_p50_ms": result.pct_ms(50, ttfb=True), "errors": result.num_errors,
                                   "requests": result.num_requests}
                row["rps_ratio"] = row["gateway"]["rps"] / row["direct"]["rps"]
                row["added_p50_ms"] = row["gateway"]["p50_ms"] - row["direct"]["p50_ms"]
                results.append(row)
                print(f"stream={stream!s:5} c={concurrency:<3} direct {row['direct']['rps']:8.0f} rps p50 {row['direct']['p50_ms']:6.2f} ms p99 {row['direct']['p99_ms']:6.2f} ms | "
                      f"gateway {row['gateway']['rps']:8.0f} rps p50 {row['gateway']['p50_ms']:6.2f} ms p99 {row['gateway']['p99_ms']:6.2f} ms | "
                      f"rps ratio {row['rps_ratio']:.2f}, added p50 {row['added_p50_ms']:+.2f} ms, errors {row['gateway']['errors']}", flush=True)
        rss_loaded_mb = gw_proc.memory_info().rss / 2**20
        frameworks = _framework_comparison(config.name, results, args.duration)
        clients = asyncio.run(_client_comparison(up_port, min(args.duration, 3.0)))
    finally:
        for proc in (gateway, upstream):
            proc.terminate()
            proc.wait(timeout=30)
        os.unlink(config.name)

    print("\nframework (the same gateway, non-streaming; ours = Starlette with the hot-path dispatcher):")
    for row in frameworks:
        print(f"  c={row['concurrency']:<3} ours {row['ours_rps']:7.0f} rps p50 {row['ours_p50_ms']:.2f} ms | "
              f"FastAPI {row['fastapi_rps']:7.0f} rps p50 {row['fastapi_p50_ms']:.2f} ms | ours/FastAPI rps {row['ours_rps'] / row['fastapi_rps']:.2f}")
    print(f"\ngateway resident memory: {rss_idle_mb:.0f} MB idle, {rss_loaded_mb:.0f} MB after the load")
    print("\nupstream HTTP client (closed loop against the same upstream, in one process):")
    for row in clients:
        print(f"  {row['client']:8} c={row['concurrency']:<3} {row['rps']:8.0f} rps  p50 {row['p50_ms']:.2f} ms")
    c1 = next(r for r in results if not r["stream"] and r["concurrency"] == 1)
    c64 = next(r for r in results if not r["stream"] and r["concurrency"] == 64)
    print(f"\nadded p50 at concurrency 1 (non-streaming): {c1['added_p50_ms']:.3f} ms (target <= 1 ms)")
    print(f"gateway non-streaming throughput at concurrency 64: {c64['gateway']['rps']:.0f} rps (target >= 1500)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"cells": results, "rss_idle_mb": rss_idle_mb, "rss_loaded_mb": rss_loaded_mb, "clients": clients, "frameworks": frameworks}, fh, indent=2)


if __name__ == "__main__":
    main()
