"""Per-request cost of API keys: the same gateway with auth off, and on (Bearer check, rate limits, budgets,
usage metering, key_id in the request log), and on with a cost ceiling (the key policy at choosing time).

The apps are driven in-process through ASGI (no sockets), against an instantly answering simulated expert,
so the gateway's own work is all that is timed; the three variants take turns request by request in the same
process, and the report is their ratio and the added microseconds per request (p50, mean, and the median of
the paired differences between neighbouring requests).

Run: .venv/bin/python benchmarks/auth_overhead.py [--requests 3000] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from switchboard.config import parse_config
from switchboard.gateway.app import build_app
from switchboard.storage import database
from switchboard.tenants.keys import KeyLimits
from switchboard.tenants.store import create_key

ADMIN = {"SWITCHBOARD_ADMIN_KEY": "admin-" + "b" * 40}
CONFIG = """
experts:
  - id: fast
    backend: {{kind: simulated, time_scale: 0}}
    usd_per_mtok_input: 0.1
    usd_per_mtok_output: 0.2
storage: {{url: "{url}", flush_interval_s: 0.5}}
auth: {{enabled: {auth}}}
"""
BODY = json.dumps({"model": "auto", "messages": [{"role": "user", "content": "Hello there, how are you today?"}], "max_tokens": 16}).encode()


class Lifespan:
    """Runs an ASGI app's lifespan (startup on enter, shutdown on exit)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.outbox: asyncio.Queue = asyncio.Queue()

    async def __aenter__(self) -> None:
        self.task = asyncio.create_task(self.app({"type": "lifespan", "asgi": {"version": "3.0"}}, self.inbox.get, self.outbox.put))
        await self.inbox.put({"type": "lifespan.startup"})
        message = await self.outbox.get()
        assert message["type"] == "lifespan.startup.complete", message

    async def __aexit__(self, *exc: Any) -> None:
        await self.inbox.put({"type": "lifespan.shutdown"})
        await self.outbox.get()
        await self.task


async def one_request(app: Any, headers: list[tuple[bytes, bytes]]) -> int:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode()), *headers],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000)}
    sent = False
    status = 0

    async def receive() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": BODY, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def main(num_requests: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="switchboard-auth-bench-"))
    variants: dict[str, tuple[Any, list]] = {}
    for name, auth, limits in (("off", "false", None),
                               ("on", "true", KeyLimits(rpm=10**9, tpm=10**12, usd_per_day=1e9, usd_per_month=1e9)),
                               ("on+ceiling", "true", KeyLimits(rpm=10**9, tpm=10**12, usd_per_day=1e9, usd_per_month=1e9, usd_per_mtok_ceiling=1.0))):
        url = f"sqlite:///{workdir / (name + '.db')}"
        headers: list = []
        if limits is not None:
            engine = database.open_engine(url)
            database.migrate(engine)
            _, secret = create_key(engine, name, "bench", limits)
            engine.dispose()
            headers = [(b"authorization", f"Bearer {secret}".encode())]
        variants[name] = (build_app(parse_config(CONFIG.format(url=url, auth=auth)), environ=ADMIN), headers)
    timings: dict[str, list[float]] = {name: [] for name in variants}
    lifespans = [Lifespan(app) for app, _ in variants.values()]
    for lifespan in lifespans:
        await lifespan.__aenter__()
    try:
        for name, (app, headers) in variants.items():  # warm-up
            for _ in range(200):
                assert await one_request(app, headers) == 200
        # Request by request in turn (rotating which goes first), so machine noise and drift hit all alike.
        order = list(variants.items())
        for i in range(num_requests):
            for name, (app, headers) in order[i % len(order):] + order[:i % len(order)]:
                started = time.perf_counter()
                status = await one_request(app, headers)
                timings[name].append(time.perf_counter() - started)
                assert status == 200, (name, status)
    finally:
        for lifespan in lifespans:
            await lifespan.__aexit__()
    base_p50, base_mean = statistics.median(timings["off"]), statistics.fmean(timings["off"])
    rows = []
    for name, values in timings.items():
        p50, mean = statistics.median(values), statistics.fmean(values)
        # Paired: request i of this variant ran right next to request i with auth off; the median difference
        # of the pairs is the least noise-sensitive estimate on a busy machine.
        paired = statistics.median(v - o for v, o in zip(values, timings["off"]))
        rows.append({"variant": name, "requests": len(values), "p50_us": p50 * 1e6, "mean_us": mean * 1e6,
                     "p50_ratio": p50 / base_p50, "added_p50_us": (p50 - base_p50) * 1e6, "added_mean_us": (mean - base_mean) * 1e6,
                     "added_paired_median_us": paired * 1e6})
    return {"rows": rows, "python": sys.version.split()[0]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="Timed requests per variant.")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    args = parser.parse_args()
    result = asyncio.run(main(args.requests))
    print(f"{'variant':<12}{'requests':>9}{'p50 µs':>10}{'mean µs':>10}{'p50 ratio':>11}{'+p50 µs':>9}{'+mean µs':>10}{'+paired µs':>12}")
    for r in result["rows"]:
        print(f"{r['variant']:<12}{r['requests']:>9}{r['p50_us']:>10.0f}{r['mean_us']:>10.0f}{r['p50_ratio']:>11.3f}{r['added_p50_us']:>9.0f}"
              f"{r['added_mean_us']:>10.0f}{r['added_paired_median_us']:>12.0f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
