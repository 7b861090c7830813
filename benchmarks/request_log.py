"""The request log's costs: what it adds on the request path (begin + finish: building one row and appending it
to the queue), against the metrics `finish` call the same requests already make, and how fast the background
writer empties the queue into SQLite and PostgreSQL (rows per second, in max_batch transactions).

Then the whole gateway (`switchboard serve`, a simulated expert answering instantly, 64 connections, closed
loop) with the log off and on (SQLite), alternated, reporting requests/s, their ratio, and whether every
request answered is in the log after shutdown.

Run: .venv/bin/python benchmarks/request_log.py [--rows 50000] [--pg-url URL] [--duration 5]
(--pg-url defaults to $SWITCHBOARD_TEST_PG_URL; scripts/postgres.sh prints one.)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine, text

from switchboard.config import parse_config
from switchboard.engines.base import Usage
from switchboard.observability.metrics import GatewayMetrics, Outcome
from switchboard.storage.writer import RequestLog


class _Replica:
    replica_id = "e#0"
    hardware = "l4"


class _Lease:
    replica = _Replica()
    was_cold = False


CONFIG = parse_config("experts: [{id: e, backend: {kind: simulated}, usd_per_mtok_input: 1, usd_per_mtok_output: 2}]")


def request_path_us(num_rows: int) -> tuple[float, float]:
    """µs per request: request log begin+finish, and metrics finish (the baseline), best of 5 rounds."""
    log = RequestLog.for_config(CONFIG, {"HOME": tempfile.gettempdir()})
    metrics = GatewayMetrics(CONFIG, CollectorRegistry())
    usage, lease = Usage(100, 50), _Lease()
    log_rounds, metric_rounds = [], []
    for _ in range(5):
        log._requests.clear()
        log._unflushed_ids.clear()
        started = time.perf_counter()
        for i in range(num_rows):
            entry = log.begin(f"chatcmpl-{i}", "chat", "e", None, "What is the capital of France?")
            log.finish(entry, Outcome.OK, 200, started, lease=lease, first_token_at=started, usage=usage)
        log_rounds.append((time.perf_counter() - started) / num_rows * 1e6)
        started = time.perf_counter()
        for i in range(num_rows):
            metrics.finish("e", Outcome.OK, started, usage=usage, request_id="x", replica_id="e#0", status=200)
        metric_rounds.append((time.perf_counter() - started) / num_rows * 1e6)
    return min(log_rounds), min(metric_rounds)


async def flush_rate(url: str, num_rows: int, max_batch: int) -> tuple[float, float]:
    """Rows per second written by `flush()` (one thread, max_batch rows per transaction) and the mean batch."""
    config = CONFIG.model_copy(update={"storage": CONFIG.storage.model_copy(update={"url": url, "max_batch": max_batch, "flush_interval_s": 3600})})
    log = RequestLog.for_config(config, {})
    await log.start()
    usage, lease = Usage(100, 50), _Lease()
    run = uuid.uuid4().hex[:8]
    for i in range(num_rows):
        entry = log.begin(f"chatcmpl-{run}-{i}", "chat", "e", '{"reason":"router"}', "What is the capital of France?")
        log.finish(entry, Outcome.OK, 200, time.perf_counter(), lease=lease, usage=usage)
    started = time.perf_counter()
    assert await log.flush()
    elapsed = time.perf_counter() - started
    await log.stop()
    return num_rows / elapsed, statistics.mean(log.batch_sizes)


GATEWAY_CONFIG = """
experts:
  - id: fast
    backend: {{kind: simulated, time_scale: 0, max_concurrency: 256}}
control_plane: {{policies: {{admission: {{kind: always}}}}}}
storage: {storage}
"""


def gateway_rps(tmp: str, duration_s: float, storage_on: bool) -> tuple[float, int, int | None]:
    """(requests/s, requests answered 200, rows in the log after shutdown or None when off)."""
    sys.path.insert(0, os.path.dirname(__file__))
    from _load import build_request, run_load

    from switchboard.testing.servers import free_port

    db = os.path.join(tmp, f"gw-{uuid.uuid4().hex[:6]}.db")
    storage = f'{{url: "sqlite:///{db}"}}' if storage_on else "{enabled: false}"
    config_path = os.path.join(tmp, "gateway.yaml")
    with open(config_path, "w") as fh:
        fh.write(GATEWAY_CONFIG.format(storage=storage))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "switchboard.cli", "serve", "--config", config_path, "--port", str(port), "--log-level", "warning"])
    try:
        import httpx

        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("gateway did not start")
                time.sleep(0.1)
        body = b'{"model": "fast", "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 16}'
        result = asyncio.run(run_load("127.0.0.1", port, build_request("127.0.0.1", port, "/v1/chat/completions", body),
                                      concurrency=64, duration_s=duration_s, warmup_s=0.5))
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    logged = None
    if storage_on:
        engine = create_engine(f"sqlite:///{db}")
        with engine.connect() as connection:
            logged = connection.execute(text("SELECT count(*) FROM requests WHERE status = 200")).scalar_one()
        engine.dispose()
    return result.rps, result.num_requests - result.num_errors, logged


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--pg-url", default=os.environ.get("SWITCHBOARD_TEST_PG_URL"))
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per gateway run")
    args = parser.parse_args()
    log_us, metrics_us = request_path_us(args.rows)
    print(f"request path, µs per request: request log {log_us:.2f}, metrics finish {metrics_us:.2f} (ratio {log_us / metrics_us:.2f})")
    with tempfile.TemporaryDirectory() as tmp:
        targets = [("sqlite (WAL, synchronous=FULL)", f"sqlite:///{tmp}/bench.db")]
        if args.pg_url:
            targets.append(("postgresql", args.pg_url))
        print(f"{'database':34} {'max_batch':>9} {'rows/s':>10} {'mean batch':>10}")
        for label, url in targets:
            for max_batch in (100, 500):
                rate, batch = asyncio.run(flush_rate(url, args.rows, max_batch))
                print(f"{label:34} {max_batch:>9} {rate:>10,.0f} {batch:>10.0f}")
        runs: dict[bool, list[float]] = {False: [], True: []}
        for storage_on in (False, True, False, True):
            rps, answered, logged = gateway_rps(tmp, args.duration, storage_on)
            runs[storage_on].append(rps)
            extra = f"; {logged} logged with status 200 after shutdown (warm-up requests included)" if logged is not None else ""
            print(f"gateway, log {'on ' if storage_on else 'off'}: {rps:,.0f} req/s, {answered} answered in the measured window{extra}")
        off, on = statistics.mean(runs[False]), statistics.mean(runs[True])
        print(f"gateway req/s with the log / without: {on / off:.3f}")


if __name__ == "__main__":
    main()
