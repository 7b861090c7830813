"""Prometheus metrics for the gateway, in a `CollectorRegistry` of the app's own (never the global one, so
several apps can live in one process).

Two sources, two mechanisms:

- **per request**, one call at its end (`GatewayMetrics.finish`): the counter and histogram children for
  each (expert, outcome) are resolved once and cached, so a request costs a dict lookup and a handful of
  lock-protected increments (a few microseconds; the gateway targets ≥1,500 req/s);
- **the fleet**, read when Prometheus scrapes (`FleetCollector`): replicas by state and hardware, queue depth,
  in-flight requests — gauges computed from `LiveFleet.snapshot()` and the fleet model, never kept twice.

Things that happen inside the fleet between scrapes (control decisions, cold starts) are picked up by
`FleetWatcher.sync()`, which the app calls once a second and before every scrape.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from switchboard.config.schema import SwitchboardConfig
from switchboard.engines.base import Usage
from switchboard.observability import logs

if TYPE_CHECKING:
    from switchboard.runtime.fleet import LiveFleet

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
COLD_START_BUCKETS_S = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
RECENT_REQUESTS_KEPT = 2048
RECENT_COLD_STARTS_KEPT = 50
NO_EXPERT = "none"
"""The `expert` label of requests refused before an expert was chosen (bad JSON, unknown model, ...)."""


class Outcome(str, enum.Enum):
    OK = "ok"
    INVALID = "invalid"  # 4xx before or at the expert: the client's fault
    REJECTED = "rejected"  # admission said 429/503
    ERROR = "error"  # the expert failed (5xx), before or during the answer
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"  # the client went away


@dataclasses.dataclass(frozen=True, slots=True)
class RecentRequest:
    at_s: float
    expert_id: str
    outcome: Outcome
    duration_s: float
    ttft_s: float | None


@dataclasses.dataclass(slots=True)
class _Children:
    """The metric children of one (expert, outcome): resolved once, so the hot path skips `labels()`."""

    requests: Any
    duration: Any
    ttft: Any
    tokens_in: Any
    tokens_out: Any
    cost: Any
    usd_per_token_in: float
    usd_per_token_out: float


class GatewayMetrics:
    """Per-request metrics plus a short window of recent requests for the dashboard's percentiles."""

    def __init__(self, config: SwitchboardConfig, registry: CollectorRegistry, *, access_log: bool = False) -> None:
        self.registry = registry
        self.access_log = access_log
        self._prices = {e.id: (e.usd_per_mtok_input / 1e6, e.usd_per_mtok_output / 1e6) for e in config.experts}
        self.requests = Counter("switchboard_requests", "Requests answered, by expert and outcome.", ["expert", "outcome"], registry=registry)
        self.duration = Histogram("switchboard_request_duration_seconds", "Time from the request's arrival to its last byte.",
                                  ["expert", "outcome"], buckets=LATENCY_BUCKETS_S, registry=registry)
        self.ttft = Histogram("switchboard_request_ttft_seconds", "Time to first token (streamed answers: first chunk; whole answers: the answer).",
                              ["expert", "outcome"], buckets=LATENCY_BUCKETS_S, registry=registry)
        self.tokens = Counter("switchboard_tokens", "Tokens processed, by expert and direction (input: prompt, output: completion).",
                              ["expert", "direction"], registry=registry)
        self.cost = Counter("switchboard_cost_usd", "USD spent: tokens times the expert's configured prices.", ["expert"], registry=registry)
        self.recent: deque[RecentRequest] = deque(maxlen=RECENT_REQUESTS_KEPT)
        self._children: dict[tuple[str, Outcome], _Children] = {}
        for expert in config.experts:  # every expert shows up (at zero) from the first scrape
            self._child(expert.id, Outcome.OK)

    def _child(self, expert_id: str, outcome: Outcome) -> _Children:
        key = (expert_id, outcome)
        children = self._children.get(key)
        if children is None:
            usd_in, usd_out = self._prices.get(expert_id, (0.0, 0.0))
            children = _Children(
                self.requests.labels(expert_id, outcome.value), self.duration.labels(expert_id, outcome.value),
                self.ttft.labels(expert_id, outcome.value), self.tokens.labels(expert_id, "input"),
                self.tokens.labels(expert_id, "output"), self.cost.labels(expert_id), usd_in, usd_out,
            )
            self._children[key] = children
        return children

    def finish(
        self,
        expert_id: str,
        outcome: Outcome,
        started_at: float,
        *,
        first_token_at: float | None = None,
        usage: Usage | None = None,
        request_id: str = "",
        replica_id: str = "",
        status: int = 200,
        was_cold: bool = False,
    ) -> None:
        """Records one finished request. `started_at` / `first_token_at` are `time.perf_counter()` readings."""
        now = time.perf_counter()
        c = self._child(expert_id, outcome)
        duration_s = now - started_at
        c.requests.inc()
        c.duration.observe(duration_s)
        ttft_s = first_token_at - started_at if first_token_at is not None else None
        if ttft_s is not None:
            c.ttft.observe(ttft_s)
        usd = 0.0
        if usage is not None:
            c.tokens_in.inc(usage.prompt_tokens)
            c.tokens_out.inc(usage.completion_tokens)
            usd = usage.prompt_tokens * c.usd_per_token_in + usage.completion_tokens * c.usd_per_token_out
            if usd:
                c.cost.inc(usd)
        self.recent.append(RecentRequest(time.time(), expert_id, outcome, duration_s, ttft_s))
        if self.access_log:
            logs.access(request_id, expert_id, replica_id, outcome.value, status, duration_s, ttft_s, usage, usd, was_cold)

    def invalid(self, started_at: float, status: int) -> None:
        """A request refused before it reached an expert."""
        self.finish(NO_EXPERT, Outcome.INVALID, started_at, status=status)


class FleetWatcher:
    """Turns what the fleet did between two looks into counters: decisions by action and reason code, cold
    starts and their measured durations.

    `LiveFleet.decisions` is a bounded deque of dicts; the watcher remembers the last one it counted (by
    identity) and counts what came after. Syncing once a second keeps it well inside the deque's bound.
    """

    def __init__(self, fleet: "LiveFleet", registry: CollectorRegistry) -> None:
        self.fleet = fleet
        self.decisions = Counter("switchboard_decisions", "Routing and control-plane decisions, by action and reason code.",
                                 ["action", "expert", "reason"], registry=registry)
        self.cold_starts = Counter("switchboard_cold_starts", "Replicas started (cold → starting), by expert and hardware kind.",
                                   ["expert", "hardware"], registry=registry)
        self.cold_start_duration = Histogram("switchboard_cold_start_duration_seconds", "Measured time from start to ready of a replica.",
                                             ["expert", "hardware"], buckets=COLD_START_BUCKETS_S, registry=registry)
        self.last_cold_start = Gauge("switchboard_last_cold_start_seconds", "Phases of each expert's last measured cold start (llama.cpp: spawn, load, warmup, ready).",
                                     ["expert", "phase"], registry=registry)
        self.recent_cold_starts: deque[dict[str, Any]] = deque(maxlen=RECENT_COLD_STARTS_KEPT)
        self._last_decision: dict[str, Any] | None = None
        self._measured: set[str] = set()

    def sync(self) -> None:
        self._count_decisions()
        self._collect_cold_starts()

    def _count_decisions(self) -> None:
        decisions = self.fleet.decisions
        new: list[dict[str, Any]] = []
        for decision in reversed(decisions):
            if decision is self._last_decision:
                break
            new.append(decision)
        if not new:
            return
        self._last_decision = new[0]
        for d in reversed(new):
            self.decisions.labels(d["action"], d["expert"], d["code"] or "none").inc()
            if d["action"] == "StartReplica":
                replica = self.fleet.live.get(d["replica"])
                self.cold_starts.labels(d["expert"], replica.hardware if replica else "unknown").inc()

    def _collect_cold_starts(self) -> None:
        for replica_id, replica in list(self.fleet.live.items()):
            if replica.cold_start is None or replica_id in self._measured:
                continue
            self._measured.add(replica_id)
            anatomy = replica.cold_start
            ready_s = float(anatomy.get("ready_s", 0.0))
            self.cold_start_duration.labels(replica.expert.id, replica.hardware).observe(ready_s)
            for phase, seconds in anatomy.items():
                self.last_cold_start.labels(replica.expert.id, phase.removesuffix("_s")).set(float(seconds))
            self.recent_cold_starts.append({"at": time.time(), "replica": replica_id, "expert": replica.expert.id,
                                            "hardware": replica.hardware, "phases": dict(anatomy)})
        if len(self._measured) > 4 * len(self.fleet.live) + 64:  # forget replicas long stopped
            self._measured &= set(self.fleet.live)


class FleetCollector(Collector):
    """Gauges read from the live fleet at scrape time."""

    STATES = ("cold", "starting", "warm", "draining")

    def __init__(self, fleet: "LiveFleet") -> None:
        self.fleet = fleet

    def describe(self) -> Iterable[Any]:
        return []  # computed at scrape time; no fixed description to check for clashes

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snapshot = self.fleet.snapshot()
        replicas = GaugeMetricFamily("switchboard_replicas", "Replicas by expert, hardware kind and state.", labels=["expert", "hardware", "state"])
        queued = GaugeMetricFamily("switchboard_queue_depth", "Requests waiting for a replica (queued on one, or unplaced).", labels=["expert"])
        running = GaugeMetricFamily("switchboard_requests_in_flight", "Requests running on a replica.", labels=["expert"])
        workers = GaugeMetricFamily("switchboard_workers", "Workers by hardware kind.", labels=["hardware"])
        model = self.fleet.model
        for expert in snapshot["experts"]:
            counts: dict[tuple[str, str], int] = {}
            for r in expert["replicas"]:
                counts[(r["hardware"], r["state"])] = counts.get((r["hardware"], r["state"]), 0) + 1
            for (hardware, state), n in sorted(counts.items()):
                replicas.add_metric([expert["id"], hardware, state], n)
            num_unplaced = len(model.unplaced_of(expert["id"])) if hasattr(model, "unplaced_of") else 0
            queued.add_metric([expert["id"]], sum(r.get("num_queued", 0) for r in expert["replicas"]) + num_unplaced)
            running.add_metric([expert["id"]], sum(r.get("num_running", 0) for r in expert["replicas"]))
        by_kind: dict[str, int] = {}
        for w in snapshot["workers"]:
            by_kind[w["hardware"]] = by_kind.get(w["hardware"], 0) + 1
        for kind, n in sorted(by_kind.items()):
            workers.add_metric([kind], n)
        yield from (replicas, queued, running, workers)


@dataclasses.dataclass
class Observability:
    """Everything the app publishes about itself: one registry, the request metrics and the fleet watcher."""

    registry: CollectorRegistry
    requests: GatewayMetrics
    watcher: FleetWatcher

    @classmethod
    def for_app(cls, config: SwitchboardConfig, fleet: "LiveFleet", registry: CollectorRegistry | None = None,
                *, access_log: bool = False) -> "Observability":
        registry = registry if registry is not None else CollectorRegistry()
        requests = GatewayMetrics(config, registry, access_log=access_log)
        watcher = FleetWatcher(fleet, registry)
        registry.register(FleetCollector(fleet))
        return cls(registry, requests, watcher)
