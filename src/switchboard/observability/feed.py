"""The dashboard's live feed: the fleet snapshot plus a summary of the request metrics, as server-sent events
(`GET /admin/events`, one `data:` line of JSON every `interval_s`), and the `/metrics` endpoint.

The summary reads the Prometheus metrics themselves (one source of truth); latency percentiles come from the
recent-requests window (the last minute, at most `RECENT_REQUESTS_KEPT` requests), because cumulative
histograms cannot say what the latency is *now*.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from switchboard.observability.metrics import NO_EXPERT, Observability, Outcome

if TYPE_CHECKING:
    from switchboard.runtime.fleet import LiveFleet

log = logging.getLogger("switchboard.metrics")
WINDOW_S = 60.0
DECISIONS_SHOWN = 40
ROUTES_SHOWN = 12
MIN_INTERVAL_S, MAX_INTERVAL_S = 0.2, 10.0


def percentiles(values: list[float], qs: tuple[float, ...] = (0.5, 0.95, 0.99)) -> dict[str, float | None]:
    """Nearest-rank percentiles (`p50`, ...) of `values`, None when there are none."""
    ordered = sorted(values)
    out: dict[str, float | None] = {}
    for q in qs:
        key = f"p{round(q * 100)}"
        out[key] = ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else None
    return out


def _samples(metric: Any, suffix: str = "_total") -> list[tuple[dict[str, str], float]]:
    return [(s.labels, s.value) for family in metric.collect() for s in family.samples if s.name.endswith(suffix)]


def metrics_summary(obs: Observability, now_s: float) -> dict[str, Any]:
    """Per expert: requests by outcome, tokens, USD, recent latency and TTFT percentiles; and the totals."""
    m = obs.requests
    experts: dict[str, dict[str, Any]] = {
        expert_id: {"requests": {}, "tokens_in": t.tokens_in, "tokens_out": t.tokens_out, "usd": t.usd}
        for expert_id, t in m.experts.items()
    }
    for (expert_id, outcome), series in m.series.items():
        experts[expert_id]["requests"][outcome.value] = series.num
    recent = [r for r in m.recent if r[0] >= now_s - WINDOW_S]
    ok_by_expert: dict[str, list[tuple[float, float | None]]] = {}
    for _, expert_id, outcome, duration_s, ttft_s in recent:
        if outcome is Outcome.OK:
            ok_by_expert.setdefault(expert_id, []).append((duration_s, ttft_s))
    for expert_id, rs in ok_by_expert.items():
        experts[expert_id]["latency_s"] = percentiles([d for d, _ in rs])
        experts[expert_id]["ttft_s"] = percentiles([t for _, t in rs if t is not None])
    ok_all = [pair for rs in ok_by_expert.values() for pair in rs]
    by_outcome: dict[str, int] = {}
    for (_, outcome), series in m.series.items():
        by_outcome[outcome.value] = by_outcome.get(outcome.value, 0) + series.num
    totals: dict[str, Any] = {
        "requests": sum(by_outcome.values()), "by_outcome": by_outcome,
        "usd": sum(e["usd"] for e in experts.values()),
        "tokens_in": sum(e["tokens_in"] for e in experts.values()),
        "tokens_out": sum(e["tokens_out"] for e in experts.values()),
        "cold_starts": int(sum(value for _, value in _samples(obs.watcher.cold_starts))),
    }
    return {
        "window_s": WINDOW_S,
        "experts": {k: v for k, v in experts.items() if k != NO_EXPERT or any(v["requests"].values())},
        "totals": totals,
        "latency_s": percentiles([d for d, _ in ok_all]),
        "ttft_s": percentiles([t for _, t in ok_all if t is not None]),
        "num_recent": len(recent),
    }


def dashboard_event(fleet: "LiveFleet", obs: Observability) -> dict[str, Any]:
    obs.watcher.sync()
    snapshot = fleet.snapshot()
    # Per-request routing has its own panel (`routes`); under `auto` traffic its entries would push the control
    # plane's actions out of the snapshot's short list, so pick those from the fleet's whole deque.
    snapshot["decisions"] = [d for d in fleet.decisions if d["action"] != "Route"][-DECISIONS_SHOWN:]
    model = fleet.model
    for expert in snapshot["experts"]:
        expert["num_unplaced"] = len(model.unplaced_of(expert["id"]))
    for worker in snapshot["workers"]:
        worker["memory_used_gb"] = round(model.memory_used_gb(worker["worker_id"]), 2)
    now_s = time.time()
    return {
        "at": now_s,
        "fleet": snapshot,
        "metrics": metrics_summary(obs, now_s),
        "cold_starts": list(obs.watcher.recent_cold_starts)[-20:],
        "routes": [_describe_route(at_s, expert_id, choice) for at_s, expert_id, choice in list(obs.requests.recent_routes)[-ROUTES_SHOWN:]],
        "batches": {"running": [dict(p) for p in obs.batches.running.values()], "ended": list(obs.batches.recent_ended)},
    }


def _describe_route(at_s: float, expert_id: str, choice: Any) -> dict[str, Any]:
    info = choice.route_info or {}
    return {"at": at_s, "expert": expert_id, "router_choice": info.get("router_choice", choice.expert_id),
            "reason": choice.reason, "fleet": info.get("fleet", ""), "fleet_reason": info.get("fleet_reason", "")}


class ObservabilityEndpoints:
    """`GET /metrics` (Prometheus text format) and `GET /admin/events` (the dashboard's SSE feed)."""

    def __init__(self, fleet: "LiveFleet", obs: Observability) -> None:
        self.fleet = fleet
        self.obs = obs
        self.is_ending = False

    def end_streams(self) -> None:
        """Ends every event stream at its next tick, so a shutting-down server does not wait for dashboards.
        Safe to call from a signal handler (it only sets a flag)."""
        self.is_ending = True

    async def metrics(self, request: Request) -> Response:
        self.obs.watcher.sync()
        return Response(generate_latest(self.obs.registry), media_type=CONTENT_TYPE_LATEST)

    async def events(self, request: Request) -> Response:
        try:
            interval_s = float(request.query_params.get("interval_s", "1"))
        except ValueError:
            interval_s = 1.0
        interval_s = min(MAX_INTERVAL_S, max(MIN_INTERVAL_S, interval_s))

        async def stream() -> AsyncIterator[bytes]:
            yield b"retry: 1000\n\n"
            while not self.is_ending:
                yield b"data: " + orjson.dumps(dashboard_event(self.fleet, self.obs)) + b"\n\n"
                await asyncio.sleep(interval_s)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"cache-control": "no-cache", "x-accel-buffering": "no"})

    async def sync_forever(self, interval_s: float = 1.0) -> None:
        """Counts decisions and cold starts as they happen, whether or not anyone scrapes."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                self.obs.watcher.sync()
            except Exception:  # noqa: BLE001 — metrics must never take the gateway down
                log.exception("fleet metrics sync failed")
