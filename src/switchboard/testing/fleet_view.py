"""Waiting on conditions, and on a live gateway's fleet, for tests that drive one over HTTP or an actor's
protocol in-process (tests/cluster)."""

from __future__ import annotations

import asyncio
import time

import httpx


def wait_for(condition, timeout_s: float, what: str):
    """Polls `condition` until it returns something truthy (returned), or fails naming `what` after `timeout_s`.
    The tests wait on conditions like this, never on sleeps of a guessed length."""
    deadline = time.monotonic() + timeout_s
    while not (found := condition()):
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f} s waiting for: {what}"
        time.sleep(0.05)
    return found


async def until(condition, timeout_s: float = 10.0, what: str = "the condition") -> None:
    """`wait_for` on a running event loop: polls `condition` (every 2 ms, yielding to the loop) until it is true,
    or fails naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f} s waiting for: {what}"
        await asyncio.sleep(0.002)


def fleet_view(url: str) -> dict:
    """The gateway's `GET /admin/fleet`."""
    return httpx.get(url + "/admin/fleet", timeout=10).json()


def replicas_of(view: dict, expert_id: str, state: str = "warm") -> list[dict]:
    """The replicas of `expert_id` in `state` in a fleet view."""
    expert = next(e for e in view["experts"] if e["id"] == expert_id)
    return [r for r in expert["replicas"] if r["state"] == state]
