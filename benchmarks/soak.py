"""Soak: a real `switchboard serve` under a fixed rate of mixed streaming / whole-answer traffic for
`--duration-s` (default 10 minutes), with a fault injected every few seconds, checking that

- no request is lost: every request sent got an answer or an explicit error, and every one the gateway
  accepted (it names an `x-request-id`) is in the request log exactly once, after a graceful shutdown;
- no error is unexplained: every failed request ended with an explicit OpenAI-style error (a JSON error body or
  an SSE error event) while a fault was being injected; anything else (a transport error, a stream cut without
  an error event, a client-side timeout, an error outside every fault window) is "unexplained";
- the gateway's resident memory does not grow: RSS after warm-up vs at the end (target: growth < 5%).

Experts: two upstreams on a mock OpenAI server in this process (`up-a`, `up-b`: faults switched on and off by
name), one upstream served by a separate mock *process* that is SIGKILLed and restarted (`up-c`: a replica
process dying mid-stream), and two simulated experts (`sim-a`, `sim-b`); the upstreams fall back to `sim-a`.
Faults cycle through: up-a 500, up-a garbage, up-b stall after headers, up-b slowloris, up-a stall mid-stream,
up-a cut mid-stream, up-c process killed.

Run: .venv/bin/python benchmarks/soak.py [--duration-s 600] [--rate 20] [--fault-every-s 5] [--out soak.json]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import orjson
from sqlalchemy import create_engine, select

from switchboard.storage.models import requests_table
from switchboard.testing.servers import free_port, serve_in_thread
from switchboard.testing.upstream import MockUpstream

MODELS = ("up-a", "up-b", "up-c", "sim-a", "sim-b", "auto")
FAULTS = (("up-a", "fail-500"), ("up-a", "garbage"), ("up-b", "stall-after-headers"), ("up-b", "slowloris"),
          ("up-a", "stall-mid-stream"), ("up-a", "cut-mid-stream"), ("up-c", "process-killed"))
MOCK_PROCESS = "import sys, uvicorn; from switchboard.testing.upstream import MockUpstream; " \
               "uvicorn.run(MockUpstream(num_chunks=8, chunk_interval_s=0.01), host='127.0.0.1', port=int(sys.argv[1]), log_level='error')"


def gateway_config(mock_url: str, mock_process_url: str, db_url: str) -> str:
    return f"""
experts:
  - id: up-a
    backend: {{kind: openai, base_url: "{mock_url}", model: up-a, read_timeout_s: 1}}
    fallbacks: [sim-a]
  - id: up-b
    backend: {{kind: openai, base_url: "{mock_url}", model: up-b, read_timeout_s: 1}}
    fallbacks: [sim-a]
  - id: up-c
    backend: {{kind: openai, base_url: "{mock_process_url}", model: up-c, read_timeout_s: 1, connect_timeout_s: 1}}
    fallbacks: [sim-a]
  - id: sim-a
    backend: {{kind: simulated, hardware: a10g, time_scale: 0.02, default_output_tokens: 16}}
  - id: sim-b
    backend: {{kind: simulated, hardware: l4, time_scale: 0.02, default_output_tokens: 16}}
defaults: {{expert: sim-b}}
gateway: {{request_timeout_s: 10, drain_timeout_s: 15}}
storage: {{url: "{db_url}", flush_interval_s: 0.5}}
"""


@dataclasses.dataclass
class Result:
    model: str
    stream: bool
    started_at: float
    ended_at: float
    request_id: str | None
    kind: str  # "ok", an explicit error ("http 502 bad_upstream_response", "event 504 expert_timeout"), or "unexplained: ..."


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def one_request(client: httpx.AsyncClient, model: str, stream: bool, n: int) -> Result:
    body = {"model": model, "messages": [{"role": "user", "content": f"Request {n}: say something."}], "max_tokens": 16, "stream": stream}
    started_at = time.monotonic()
    request_id = None
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            request_id = response.headers.get("x-request-id")
            if response.status_code != 200:
                error = orjson.loads(await response.aread()).get("error", {})
                kind = f"http {response.status_code} {error.get('code')}"
            elif not stream:
                data = orjson.loads(await response.aread())
                kind = "ok" if data["choices"][0]["finish_reason"] else "unexplained: answer without finish_reason"
            else:
                kind = "unexplained: stream cut without an error event"
                finished = False
                async for line in response.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        kind = "ok" if finished else "unexplained: [DONE] without finish_reason"
                        break
                    chunk = orjson.loads(line[6:])
                    if "error" in chunk:
                        kind = f"event {chunk['error'].get('type')} {chunk['error'].get('code')}"
                        break
                    finished = finished or any(c.get("finish_reason") for c in chunk.get("choices") or ())
    except httpx.TimeoutException:
        kind = "unexplained: client timeout (a hang)"
    except httpx.HTTPError as exc:
        kind = f"unexplained: transport {type(exc).__name__}"
    return Result(model, stream, started_at, time.monotonic(), request_id, kind)


class FaultInjector:
    """Every `every_s`, switches the next fault on for `for_s`; records the windows (monotonic times)."""

    def __init__(self, upstream: MockUpstream, mock_port: int, every_s: float, for_s: float) -> None:
        self.upstream = upstream
        self.mock_port = mock_port
        self.every_s = every_s
        self.for_s = for_s
        self.windows: list[tuple[float, float, str]] = []
        self.process = self._spawn()

    def _spawn(self) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", MOCK_PROCESS, str(self.mock_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def run(self, until: float) -> None:
        i = 0
        while time.monotonic() + self.every_s < until:
            await asyncio.sleep(self.every_s - self.for_s)
            expert, fault = FAULTS[i % len(FAULTS)]
            i += 1
            start = time.monotonic()
            if fault == "process-killed":
                self.process.kill()
                self.process.wait()
            else:
                self.upstream.faults[expert] = fault
            await asyncio.sleep(self.for_s)
            if fault == "process-killed":
                self.process = self._spawn()
            else:
                self.upstream.faults.pop(expert, None)
            # A fault explains errors of requests that were in flight while it was on (plus the request
            # timeout for stalls that outlive the window).
            self.windows.append((start, time.monotonic() + 10.5, f"{expert} {fault}"))

    def explains(self, result: Result) -> bool:
        return any(start <= result.ended_at and result.started_at <= end for start, end, _ in self.windows)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


async def drive(url: str, args: argparse.Namespace, injector: FaultInjector, gateway_pid: int) -> tuple[list[Result], dict]:
    rng = random.Random(args.seed)
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=128)
    results: list[Result] = []
    memory: dict = {"samples": []}
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        t0 = time.monotonic()
        end_at = t0 + args.duration_s
        warmup_s = min(30.0, args.duration_s / 10)
        faults = asyncio.create_task(injector.run(end_at))
        tasks: set[asyncio.Task] = set()

        async def sample_memory() -> None:
            await asyncio.sleep(warmup_s)
            memory["start_kib"] = rss_kib(gateway_pid)
            while True:
                memory["samples"].append((round(time.monotonic() - t0), rss_kib(gateway_pid)))
                await asyncio.sleep(10)

        sampler = asyncio.create_task(sample_memory())
        n = 0
        while True:  # open loop: request n is due at t0 + n / rate, whatever the answers are doing
            due = t0 + n / args.rate
            if due >= end_at:
                break
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            task = asyncio.create_task(one_request(client, rng.choice(MODELS), rng.random() < args.stream_fraction, n))
            task.add_done_callback(lambda t: (tasks.discard(t), results.append(t.result())))
            tasks.add(task)
            n += 1
        if tasks:
            await asyncio.wait(tasks)
        memory["end_kib"] = rss_kib(gateway_pid)
        sampler.cancel()
        await faults
    return results, memory


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration-s", type=float, default=600.0)
    parser.add_argument("--rate", type=float, default=20.0, help="Requests per second (open loop).")
    parser.add_argument("--stream-fraction", type=float, default=0.5)
    parser.add_argument("--fault-every-s", type=float, default=5.0)
    parser.add_argument("--fault-for-s", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="Also write the results as JSON here.")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="switchboard-soak-"))
    db_url = f"sqlite:///{work}/requests.db"
    upstream = MockUpstream(num_chunks=8, chunk_interval_s=0.01)
    mock_port, port = free_port(), free_port()
    with serve_in_thread(upstream) as mock_url:
        config = work / "switchboard.yaml"
        config.write_text(gateway_config(mock_url + "/v1", f"http://127.0.0.1:{mock_port}/v1", db_url))
        injector = FaultInjector(upstream, mock_port, args.fault_every_s, args.fault_for_s)
        gateway = subprocess.Popen([sys.executable, "-m", "switchboard.cli", "serve", "--config", str(config), "--port", str(port), "--no-router",
                                    "--log-level", "warning"], env={**os.environ, "PYTHONUNBUFFERED": "1"}, stderr=(work / "gateway.log").open("w"))
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if gateway.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the gateway did not start; see {work / 'gateway.log'}")
                time.sleep(0.2)
            time.sleep(2)  # simulated replicas warm up
            results, memory = asyncio.run(drive(url, args, injector, gateway.pid))
            circuits = {e["id"]: e["circuit"]["times_opened"] for e in httpx.get(url + "/admin/fleet").json()["experts"]}
        finally:
            gateway.send_signal(signal.SIGTERM)  # graceful: drains, then flushes the request log
            exit_code = gateway.wait(timeout=60)
            injector.stop()

    engine = create_engine(db_url)
    with engine.connect() as connection:
        logged = Counter(r.id for r in connection.execute(select(requests_table.c.id)))
    engine.dispose()

    kinds = Counter(r.kind for r in results)
    accepted = [r.request_id for r in results if r.request_id]
    no_response = [r for r in results if r.request_id is None]
    missing = [i for i in accepted if logged[i] == 0]
    duplicated = [i for i in accepted if logged[i] > 1]
    unexplained = [r for r in results if r.kind != "ok" and (r.kind.startswith("unexplained") or not injector.explains(r))]
    growth_pct = 100.0 * (memory["end_kib"] - memory["start_kib"]) / memory["start_kib"]
    # The trend: a leak keeps growing in the second half; buffers and caches filling up do not.
    middle_kib = next((k for t, k in memory["samples"] if t >= args.duration_s / 2), memory["start_kib"])
    second_half_pct = 100.0 * (memory["end_kib"] - middle_kib) / middle_kib
    report = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "duration_s": args.duration_s, "rate_per_s": args.rate, "stream_fraction": args.stream_fraction,
        "faults_injected": len(injector.windows), "requests_sent": len(results), "requests_ok": kinds["ok"],
        "errors_by_kind": {k: n for k, n in sorted(kinds.items()) if k != "ok"},
        "unexplained_errors": len(unexplained), "unexplained_examples": [dataclasses.asdict(r) for r in unexplained[:5]],
        "lost": {"no_response": len(no_response), "not_in_log": len(missing), "logged_twice": len(duplicated),
                 "log_rows": sum(logged.values()), "accepted": len(accepted)},
        "circuit_openings": circuits,
        "rss_mib": {"start_after_warmup": round(memory["start_kib"] / 1024, 1), "end": round(memory["end_kib"] / 1024, 1),
                    "growth_pct": round(growth_pct, 2), "growth_second_half_pct": round(second_half_pct, 2), "samples_s_mib": [(t, round(k / 1024, 1)) for t, k in memory["samples"]]},
        "gateway_exit_code": exit_code,
    }
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    lost = len(no_response) + len(missing) + len(duplicated)
    ok = lost == 0 and not unexplained and growth_pct < 5.0
    print(f"\nserved {kinds['ok']} of {len(results)}; errors {len(results) - kinds['ok']} (unexplained {len(unexplained)}); lost {lost}; "
          f"RSS {report['rss_mib']['start_after_warmup']} → {report['rss_mib']['end']} MiB ({growth_pct:+.2f}%): {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
