"""The metric bookkeeping on its own: histogram buckets as Prometheus defines them, decisions counted exactly
once across the fleet's bounded deque, cold starts measured once per replica, percentiles."""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from typing import Any

from hypothesis import given, settings, strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families


from switchboard.config import parse_config
from switchboard.observability.feed import percentiles
from switchboard.observability.metrics import LATENCY_BUCKETS_S, FleetWatcher, GatewayMetrics, Outcome

from .conftest import CONFIG


def samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset], float]:
    text = generate_latest(registry).decode()
    return {(s.name, frozenset(s.labels.items())): s.value for f in text_string_to_metric_families(text) for s in f.samples}


@settings(deadline=None)
@given(st.lists(st.sampled_from([0.0, *LATENCY_BUCKETS_S, 0.003, 0.7, 400.0]), max_size=30))
def test_duration_buckets_are_cumulative_and_inclusive(durations):
    registry = CollectorRegistry()
    metrics = GatewayMetrics(parse_config(CONFIG), registry)
    now = time.perf_counter()
    for d in durations:
        metrics.finish("paid", Outcome.OK, now - d)
    late_s = time.perf_counter() - now  # every measured duration lies in [d, d + late_s]
    got = samples(registry)
    for bound in LATENCY_BUCKETS_S:
        le = frozenset({"expert": "paid", "outcome": "ok", "le": repr(bound)}.items())
        # finish() measures after `now` (by up to `late_s` on a busy machine), so a value near a bound may land
        # one bucket up: compare against the values surely below and the values up to the bound.
        n = got[("switchboard_request_duration_seconds_bucket", le)]
        assert sum(d < bound - late_s for d in durations) <= n <= sum(d <= bound for d in durations)
    inf = frozenset({"expert": "paid", "outcome": "ok", "le": "+Inf"}.items())
    assert got[("switchboard_request_duration_seconds_bucket", inf)] == len(durations)


@dataclasses.dataclass
class FakeReplica:
    expert: Any
    hardware: str
    cold_start: dict[str, float] | None = None


@dataclasses.dataclass
class FakeFleet:
    decisions: deque = dataclasses.field(default_factory=lambda: deque(maxlen=5))
    live: dict[str, FakeReplica] = dataclasses.field(default_factory=dict)


def decision(action: str, expert: str = "paid", code: str = "why", replica: str = "") -> dict[str, Any]:
    return {"at": 0.0, "action": action, "expert": expert, "replica": replica, "reason": "", "code": code}


@settings(deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=5), max_size=12))
def test_decisions_are_counted_once_even_when_the_deque_wraps(batches):
    fleet = FakeFleet()
    registry = CollectorRegistry()
    watcher = FleetWatcher(fleet, registry)  # type: ignore[arg-type]
    total = 0
    for n in batches:  # at most maxlen between syncs, as the once-a-second sync guarantees
        for _ in range(n):
            fleet.decisions.append(decision("DrainReplica"))
        total += n
        watcher.sync()
    key = ("switchboard_decisions_total", frozenset({"action": "DrainReplica", "expert": "paid", "reason": "why"}.items()))
    assert samples(registry).get(key, 0.0) == total


def test_cold_starts_are_measured_once_per_replica(config):
    fleet = FakeFleet()
    registry = CollectorRegistry()
    watcher = FleetWatcher(fleet, registry)  # type: ignore[arg-type]
    expert = config.experts[1]
    fleet.live["spare#1"] = FakeReplica(expert, "h100")
    fleet.decisions.append(decision("StartReplica", "spare", "wake", "spare#1"))
    watcher.sync()
    fleet.live["spare#1"].cold_start = {"spawn_s": 0.5, "load_s": 1.0, "warmup_s": 0.2, "ready_s": 2.0}
    watcher.sync()
    watcher.sync()
    got = samples(registry)
    labels = frozenset({"expert": "spare", "hardware": "h100"}.items())
    assert got[("switchboard_cold_starts_total", labels)] == 1
    assert got[("switchboard_cold_start_duration_seconds_count", labels)] == 1
    assert got[("switchboard_cold_start_duration_seconds_sum", labels)] == 2.0
    assert got[("switchboard_last_cold_start_seconds", frozenset({"expert": "spare", "phase": "load"}.items()))] == 1.0
    assert [c["replica"] for c in watcher.recent_cold_starts] == ["spare#1"]


def test_percentiles():
    assert percentiles([]) == {"p50": None, "p95": None, "p99": None}
    values = [float(i) for i in range(1, 101)]
    assert percentiles(values) == {"p50": 51.0, "p95": 96.0, "p99": 100.0}
    assert percentiles([3.0]) == {"p50": 3.0, "p95": 3.0, "p99": 3.0}
