"""Gateway overhead: a fast local upstream measured directly and through the gateway, in the same run.

For concurrency 1, 8 and 64, non-streaming and streaming, prints requests/s, p50/p99 latency (for streams also
time to first byte) directly and through the gateway, their ratios, the added p50 at concurrency 1, and the
gateway's resident memory. Also compares upstream HTTP clients (our engines/http1.py, aiohttp, httpx) against the
same upstream, which is how the gateway's client was chosen.

Processes: the upstream (raw ASGI on uvicorn), the gateway (`switchboard serve`, one worker) and this load
generator each run in their own process on this 2-core machine, so absolute numbers include CPU contention
among the three; the ratios compare like with like.

Run: .venv/bin/python benchmarks/gateway_overhead.py [--duration 5] [--json out.json]

The streaming relay cell (issue 14's target): one gateway process pinned to one core with `taskset` in front of
a fast mock upstream (20-chunk streams), closed-loop load at concurrency 64 and 1, alternating round by round
(ABBA) with a baseline gateway — the same measurement on other code, e.g. main before a change:

    git archive main src | tar -x -C /tmp/sb-baseline
    .venv/bin/python benchmarks/gateway_overhead.py --relay-cell --baseline-src /tmp/sb-baseline/src [--rounds 6]

`--whole` runs the same cell with whole (non-streamed) answers ("streams" in its lines are then requests).
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


RELAY_UPSTREAM_CODE = UPSTREAM_CODE.replace("num_chunks=16", "num_chunks=20")


def _pinned(cpu: int, argv: list[str], src: str | None = None) -> subprocess.Popen:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = src
    return subprocess.Popen(["taskset", "-c", str(cpu), *argv], env=env)


def _relay_cell(args: argparse.Namespace) -> None:
    """Streams/s at c=64 and the added p50 per stream at c=1, current code vs `--baseline-src`, alternated."""
    gateway_cpu, other_cpu = args.gateway_cpu, 1 - args.gateway_cpu
    os.sched_setaffinity(0, {other_cpu})  # the load generator and the upstream share the other core
    up_port = free_port()
    upstream = _pinned(other_cpu, [sys.executable, "-c", RELAY_UPSTREAM_CODE, str(up_port)])
    here_src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    variants = {"current": here_src, "baseline": args.baseline_src}
    ports = {name: free_port() for name in variants}
    scratch = tempfile.TemporaryDirectory()
    configs = {}
    for name in variants:  # the default config (request log on), each gateway with its own log database
        configs[name] = os.path.join(scratch.name, f"{name}.yaml")
        with open(configs[name], "w") as fh:
            fh.write(f"""experts:
  - id: fast
    backend: {{kind: openai, base_url: "http://127.0.0.1:{up_port}/v1", model: mock}}
storage: {{url: "sqlite:///{scratch.name}/{name}.db"}}
""")
    gateways = {name: _pinned(gateway_cpu, [sys.executable, "-m", "switchboard.cli", "serve", "--config", configs[name],
                                            "--port", str(ports[name]), "--log-level", "warning"], src) for name, src in variants.items()}
    rows: list[dict] = []
    try:
        _wait_http(f"http://127.0.0.1:{up_port}/v1/models", upstream)
        for name, proc in gateways.items():
            _wait_http(f"http://127.0.0.1:{ports[name]}/healthz", proc)
        uvloop.install()
        body = _body(not args.whole, "fast")
        for round_ in range(args.rounds):
            order = list(variants) if round_ % 2 == 0 else list(reversed(variants))
            direct = asyncio.run(run_load("127.0.0.1", up_port, build_request("127.0.0.1", up_port, "/v1/chat/completions", _body(not args.whole, "mock")),
                                          concurrency=1, duration_s=args.duration / 2))
            for name in order:
                request = build_request("127.0.0.1", ports[name], "/v1/chat/completions", body)
                cpu = psutil.Process(gateways[name].pid)
                cpu_before = sum(cpu.cpu_times()[:2])
                c64 = asyncio.run(run_load("127.0.0.1", ports[name], request, concurrency=64, duration_s=args.duration, warmup_s=0))
                cpu_us = (sum(cpu.cpu_times()[:2]) - cpu_before) / max(1, c64.num_requests + 64) * 1e6
                c1 = asyncio.run(run_load("127.0.0.1", ports[name], request, concurrency=1, duration_s=args.duration / 2))
                row = {"round": round_, "variant": name, "streams_per_s": c64.rps, "p50_ms": c64.pct_ms(50), "errors": c64.num_errors + c1.num_errors,
                       "c1_added_p50_ms": c1.pct_ms(50) - direct.pct_ms(50), "cpu_us_per_stream": cpu_us}
                rows.append(row)
                print(f"round {round_} {name:8} c=64 {row['streams_per_s']:7.0f} streams/s p50 {row['p50_ms']:6.1f} ms, gateway CPU {cpu_us:5.0f} us/stream | "
                      f"c=1 added p50 {row['c1_added_p50_ms']:+.2f} ms | errors {row['errors']}", flush=True)
    finally:
        for proc in (*gateways.values(), upstream):
            proc.terminate()
            proc.wait(timeout=30)
        scratch.cleanup()
    import statistics

    def summary(name: str, key: str) -> str:
        values = sorted(r[key] for r in rows if r["variant"] == name)
        return f"median {statistics.median(values):.2f} (min {values[0]:.2f}, max {values[-1]:.2f})"

    ratios = sorted(a["streams_per_s"] / b["streams_per_s"] for a, b in zip(
        (r for r in rows if r["variant"] == "current"), (r for r in rows if r["variant"] == "baseline")))
    print(f"\nstreams/s at c=64, current:  {summary('current', 'streams_per_s')}")
    print(f"streams/s at c=64, baseline: {summary('baseline', 'streams_per_s')}")
    print(f"current/baseline per round: {', '.join(f'{r:.2f}' for r in ratios)} (median {statistics.median(ratios):.2f})")
    print(f"gateway CPU per stream at c=64 (us), current: {summary('current', 'cpu_us_per_stream')}; baseline: {summary('baseline', 'cpu_us_per_stream')}")
    print(f"added p50 per stream at c=1 (ms), current: {summary('current', 'c1_added_p50_ms')}; baseline: {summary('baseline', 'c1_added_p50_ms')}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"relay_cell": rows}, fh, indent=2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per cell")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--relay-cell", action="store_true", help="only the streaming relay cell, against --baseline-src")
    parser.add_argument("--whole", action="store_true", help="the relay cell with whole (non-streamed) answers instead of streams")
    parser.add_argument("--baseline-src", default=None, help="a `src` directory of the code to compare against")
    parser.add_argument("--rounds", type=int, default=6, help="relay cell: alternating rounds")
    parser.add_argument("--gateway-cpu", type=int, default=1, help="relay cell: the core the gateways are pinned to")
    args = parser.parse_args()
    if args.relay_cell:
        if not args.baseline_src:
            parser.error("--relay-cell needs --baseline-src")
        _relay_cell(args)
        return

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
