"""A small closed-loop HTTP/1.1 load generator on raw asyncio streams (keep-alive, no pipelining).

Written by hand rather than with an HTTP client library because the client must cost far less CPU than the
servers it measures on a 2-core machine; it understands exactly what our servers send (Content-Length or
chunked bodies) and nothing more.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import numpy as np


@dataclasses.dataclass
class LoadResult:
    num_requests: int
    num_errors: int
    elapsed_s: float
    latencies_s: np.ndarray
    ttfb_s: np.ndarray

    @property
    def rps(self) -> float:
        return self.num_requests / self.elapsed_s

    def pct_ms(self, q: float, ttfb: bool = False) -> float:
        data = self.ttfb_s if ttfb else self.latencies_s
        return float(np.percentile(data, q) * 1000) if len(data) else float("nan")


def build_request(host: str, port: int, path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    ).encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, float]:
    head = await reader.readuntil(b"\r\n\r\n")
    t_first = time.perf_counter()
    status = int(head[9:12])
    lower = head.lower()
    idx = lower.find(b"content-length:")
    if idx >= 0:
        end = lower.index(b"\r\n", idx)
        await reader.readexactly(int(lower[idx + 15 : end]))
    elif b"transfer-encoding: chunked" in lower:
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status, t_first


async def run_load(host: str, port: int, request: bytes, *, concurrency: int, duration_s: float, warmup_s: float = 0.5) -> LoadResult:
    """Keeps `concurrency` connections busy for `duration_s` (after `warmup_s` unmeasured) and times each request."""
    latencies: list[float] = []
    ttfbs: list[float] = []
    errors = 0
    start = time.perf_counter()
    measure_from = start + warmup_s
    stop_at = measure_from + duration_s

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while True:
                t0 = time.perf_counter()
                if t0 >= stop_at:
                    return
                writer.write(request)
                status, t_first = await _read_response(reader)
                t1 = time.perf_counter()
                if t0 >= measure_from:
                    if status == 200:
                        latencies.append(t1 - t0)
                        ttfbs.append(t_first - t0)
                    else:
                        errors += 1
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - measure_from
    return LoadResult(len(latencies), errors, elapsed, np.array(latencies), np.array(ttfbs))
