"""Prometheus metrics for the gateway, in a `CollectorRegistry` of the app's own (never the global one, so
several apps can live in one process).

Two sources, two mechanisms:

- **per request**, one call at its end (`GatewayMetrics.finish`): a dict lookup and a few additions on plain
  numbers (about 5 µs on our 2-core machine; the gateway targets ≥1,500 req/s), turned into Prometheus counters and histograms
  only when scraped;
- **the fleet**, read when Prometheus scrapes (`FleetCollector`): replicas by state and hardware, queue depth,
  in-flight requests — gauges computed from `LiveFleet.snapshot()` and the fleet model, never kept twice.

Things that happen inside the fleet between scrapes (control decisions, cold starts) are picked up by
`FleetWatcher.sync()`, which the app calls once a second and before every scrape.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
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
RECENT_BATCHES_KEPT = 10
RECENT_ROUTES_KEPT = 50
NO_EXPERT = "none"
"""The `expert` label of requests refused before an expert was chosen (bad JSON, unknown model, ...)."""


class Outcome(str, enum.Enum):
    OK = "ok"
    INVALID = "invalid"  # 4xx before or at the expert: the client's fault
    REJECTED = "rejected"  # admission said 429/503
    ERROR = "error"  # the expert failed (5xx), before or during the answer
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"  # the client went away


class _Series:
    """One (expert, outcome)'s counts: plain numbers, because the gateway's one event loop is their only writer
    (prometheus_client's locked children cost ~19 µs a request on our 2-core machine; these ~5)."""

    __slots__ = ("num", "duration_counts", "duration_sum_s", "ttft_counts", "ttft_sum_s")

    def __init__(self) -> None:
        self.num = 0
        self.duration_counts = [0] * (len(LATENCY_BUCKETS_S) + 1)  # the last one is +Inf
        self.duration_sum_s = 0.0
        self.ttft_counts = [0] * (len(LATENCY_BUCKETS_S) + 1)
        self.ttft_sum_s = 0.0


class _ExpertTotals:
    __slots__ = ("tokens_in", "tokens_out", "usd", "usd_per_token_in", "usd_per_token_out")

    def __init__(self, usd_per_token_in: float, usd_per_token_out: float) -> None:
        self.tokens_in = 0
        self.tokens_out = 0
        self.usd = 0.0
        self.usd_per_token_in = usd_per_token_in
        self.usd_per_token_out = usd_per_token_out


class GatewayMetrics:
    """Per-request metrics plus a short window of recent requests for the dashboard's percentiles.

    `recent` holds `(at_s, expert_id, outcome, duration_s, ttft_s | None)` tuples, newest last.
    """

    def __init__(self, config: SwitchboardConfig, registry: CollectorRegistry, *, access_log: bool = False) -> None:
        self.access_log = access_log
        self._prices = config.usd_per_token()
        self.series: dict[tuple[str, Outcome], _Series] = {}
        self.experts: dict[str, _ExpertTotals] = {}
        self.recent: deque[tuple[float, str, Outcome, float, float | None]] = deque(maxlen=RECENT_REQUESTS_KEPT)
        self.routes: dict[tuple[str, str], int] = {}
        self.recent_routes: deque[tuple[float, str, Any]] = deque(maxlen=RECENT_ROUTES_KEPT)
        self.failed_attempts: dict[tuple[str, str, str], int] = {}
        for expert in config.experts:  # every expert shows up (at zero) from the first scrape
            self._new_series(expert.id, Outcome.OK)
        registry.register(_RequestCollector(self))

    def _new_series(self, expert_id: str, outcome: Outcome) -> _Series:
        series = self.series[(expert_id, outcome)] = _Series()
        if expert_id not in self.experts:
            self.experts[expert_id] = _ExpertTotals(*self._prices.get(expert_id, (0.0, 0.0)))
        return series

    def routed(self, expert_id: str, choice: Any) -> None:
        """An `auto` request went to `expert_id` (an `ExpertChoice`, possibly re-scored by the fleet). The label is
        the fleet's reason code when fleet-aware routing ran, else `router`; the full sentence goes to the
        dashboard's recent routes only (free text is no label)."""
        info = choice.route_info
        code = info.get("fleet", "router") if info else "router"
        key = (expert_id, code)
        self.routes[key] = self.routes.get(key, 0) + 1
        self.recent_routes.append((time.time(), expert_id, choice))

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
        duration_s = time.perf_counter() - started_at
        series = self.series.get((expert_id, outcome)) or self._new_series(expert_id, outcome)
        series.num += 1
        series.duration_counts[bisect_left(LATENCY_BUCKETS_S, duration_s)] += 1  # first bound ≥ value: `le`
        series.duration_sum_s += duration_s
        ttft_s = None
        if first_token_at is not None:
            ttft_s = first_token_at - started_at
            series.ttft_counts[bisect_left(LATENCY_BUCKETS_S, ttft_s)] += 1
            series.ttft_sum_s += ttft_s
        usd = 0.0
        if usage is not None:
            totals = self.experts[expert_id]
            totals.tokens_in += usage.prompt_tokens
            totals.tokens_out += usage.completion_tokens
            usd = usage.prompt_tokens * totals.usd_per_token_in + usage.completion_tokens * totals.usd_per_token_out
            totals.usd += usd
        self.recent.append((time.time(), expert_id, outcome, duration_s, ttft_s))
        if self.access_log:
            logs.access(request_id, expert_id, replica_id, outcome.value, status, duration_s, ttft_s, usage, usd, was_cold)

    def attempt_failed(self, expert_id: str, code: str, next_step: str) -> None:
        """One attempt of a request failed with error `code`; `next_step` is retry, fallback or give-up."""
        key = (expert_id, code, next_step)
        self.failed_attempts[key] = self.failed_attempts.get(key, 0) + 1

    def invalid(self, started_at: float, status: int) -> None:
        """A request refused before it reached an expert."""
        self.finish(NO_EXPERT, Outcome.INVALID, started_at, status=status)


def _cumulative(counts: list[int]) -> list[tuple[str, float]]:
    buckets, total = [], 0
    for bound, n in zip((*LATENCY_BUCKETS_S, float("inf")), counts):
        total += n
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), total))
    return buckets


class _RequestCollector(Collector):
    """`GatewayMetrics`' numbers in Prometheus' shape, at scrape time."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterable[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        m = self.metrics
        requests = CounterMetricFamily("switchboard_requests", "Requests answered, by expert and outcome.", labels=["expert", "outcome"])
        duration = HistogramMetricFamily("switchboard_request_duration_seconds", "Time from the request's arrival to its last byte.",
                                         labels=["expert", "outcome"])
        ttft = HistogramMetricFamily("switchboard_request_ttft_seconds", "Time to the first streamed chunk (streamed answers only).",
                                     labels=["expert", "outcome"])
        for (expert_id, outcome), s in sorted(m.series.items()):
            labels = [expert_id, outcome.value]
            requests.add_metric(labels, s.num)
            duration.add_metric(labels, _cumulative(s.duration_counts), s.duration_sum_s)
            if sum(s.ttft_counts):
                ttft.add_metric(labels, _cumulative(s.ttft_counts), s.ttft_sum_s)
        tokens = CounterMetricFamily("switchboard_tokens", "Tokens processed, by expert and direction (input: prompt, output: completion).",
                                     labels=["expert", "direction"])
        cost = CounterMetricFamily("switchboard_cost_usd", "USD spent: tokens times the expert's configured prices.", labels=["expert"])
        routes = CounterMetricFamily("switchboard_routes", "Requests for model 'auto', by chosen expert and reason (fleet-aware routing's code, or 'router').",
                                     labels=["expert", "reason"])
        for (expert_id, code), n in sorted(m.routes.items()):
            routes.add_metric([expert_id, code], n)
        for expert_id, t in sorted(m.experts.items()):
            tokens.add_metric([expert_id, "input"], t.tokens_in)
            tokens.add_metric([expert_id, "output"], t.tokens_out)
            cost.add_metric([expert_id], t.usd)
        attempts = CounterMetricFamily("switchboard_failed_attempts", "Failed attempts (a request may make several), by expert, error code "
                                       "and what followed (retry, fallback, give-up).", labels=["expert", "code", "next"])
        for (expert_id, code, next_step), n in sorted(m.failed_attempts.items()):
            attempts.add_metric([expert_id, code, next_step], n)
        yield from (requests, duration, ttft, tokens, cost, routes, attempts)


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
        circuits = GaugeMetricFamily("switchboard_circuit_open", "1 while a circuit breaker refuses requests (open, or half-open with its "
                                     "probe out), by scope (expert or replica) and id.", labels=["scope", "id"])
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
            circuits.add_metric(["expert", expert["id"]], 0.0 if self.fleet.is_available(expert["id"]) else 1.0)
            for r in expert["replicas"]:
                if "circuit" in r:
                    circuits.add_metric(["replica", r["replica_id"]], 0.0 if r["circuit"]["state"] == "closed" else 1.0)
        by_kind: dict[str, int] = {}
        for w in snapshot["workers"]:
            by_kind[w["hardware"]] = by_kind.get(w["hardware"], 0) + 1
        for kind, n in sorted(by_kind.items()):
            workers.add_metric([kind], n)
        yield from (replicas, queued, running, workers, circuits)


class BatchMetrics:
    """What the batch runner does (gateway/batches/runner.py): each request of a batch by its answer's status class
    (its request is also counted with the live ones, by the handlers), the waits of refused-for-now requests, the
    requests in flight, the batches ended by final status."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("switchboard_batch_requests", "Requests of batches answered, by endpoint and status class (2xx, 4xx, 5xx).",
                                ["endpoint", "status"], registry=registry)
        self.waits = Counter("switchboard_batch_request_waits", "Requests of batches refused for now (429, 503 with Retry-After) and "
                             "sent again after the wait they were told.", ["status"], registry=registry)
        self.in_flight = Gauge("switchboard_batch_requests_in_flight", "Requests of batches being answered now.", registry=registry)
        self.ended = Counter("switchboard_batches_ended", "Batches ended, by final status (completed, failed, expired, cancelled).",
                             ["status"], registry=registry)
        self.running: dict[str, dict[str, Any]] = {}
        """The batches this gateway runs now, by id: their endpoint, status and request counts (the dashboard's)."""
        self.recent_ended: deque[dict[str, Any]] = deque(maxlen=RECENT_BATCHES_KEPT)
        """The last batches this gateway ended, as they ended (oldest first)."""

    def end(self, progress: dict[str, Any]) -> None:
        self.running.pop(progress["id"], None)
        self.ended.labels(progress["status"]).inc()
        self.recent_ended.append(progress)


@dataclasses.dataclass
class Observability:
    """Everything the app publishes about itself: one registry, the request metrics, the fleet watcher and the
    batch runner's counts."""

    registry: CollectorRegistry
    requests: GatewayMetrics
    watcher: FleetWatcher
    batches: BatchMetrics

    @classmethod
    def for_app(cls, config: SwitchboardConfig, fleet: "LiveFleet", registry: CollectorRegistry | None = None,
                *, access_log: bool = False) -> "Observability":
        registry = registry if registry is not None else CollectorRegistry()
        requests = GatewayMetrics(config, registry, access_log=access_log)
        watcher = FleetWatcher(fleet, registry)
        registry.register(FleetCollector(fleet))
        return cls(registry, requests, watcher, BatchMetrics(registry))
