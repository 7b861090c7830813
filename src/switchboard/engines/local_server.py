"""What the engines that run their own local server process share: their control calls (sleep, wake) over
loopback HTTP, and what those calls took."""

from __future__ import annotations

import dataclasses
import time

import httpx

from switchboard.engines.base import EngineError, EngineUnavailable


@dataclasses.dataclass(frozen=True, slots=True)
class HttpCall:
    """One HTTP call an engine makes to its server (sleep, wake): method and path (with its query)."""

    method: str
    path: str


@dataclasses.dataclass(frozen=True, slots=True)
class WakeTiming:
    """A sleep or wake call and how long the server took to answer it."""

    call: str
    took_s: float


async def call_server(expert_id: str, port: int | None, call: HttpCall, timeout_s: float) -> float:
    """Makes `call` to the server on 127.0.0.1:`port`; returns the seconds it took. Raises EngineUnavailable if
    the server cannot be reached, EngineError if it answers other than 2xx."""
    if port is None:
        raise EngineUnavailable(expert_id, "the server process is not running")
    t0 = time.perf_counter()
    try:
        async with httpx.AsyncClient(timeout=timeout_s) as client:
            response = await client.request(call.method, f"http://127.0.0.1:{port}{call.path}")
    except httpx.HTTPError as exc:
        raise EngineUnavailable(expert_id, f"{call.method} {call.path} failed: {type(exc).__name__}: {exc}") from None
    if not response.is_success:
        raise EngineError(expert_id, f"{call.method} {call.path} answered {response.status_code}: {response.text[:200]}")
    return time.perf_counter() - t0
