"""The sleep tier (warm → asleep → cold) in the simulator and in the keep-alive rule."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switchboard.fleet.activity import ExpertActivity
from switchboard.fleet.sleep import AsleepReplicas
from switchboard.perf.roofline import engine_profile
from switchboard.perf.sleep import MEASURED_RECAPTURE_S, wake_time_s
from switchboard.policies.keepalive import KeepAliveAction, KeepAliveReasonCode, KeepAliveWindow, decide_from_window
from switchboard.sim import workload as wl
from switchboard.sim.cluster import ClusterSpec, ExpertSimSpec, PoolSpec
from switchboard.sim.quality import routing_inputs
from switchboard.sim.scenario import Knobs, run_policy
from switchboard.types import ExpertId

A = ExpertId("a")
SPEC = ClusterSpec(name="one-h100", pools=[PoolSpec(hardware="h100", workers=1, devices_per_worker=1)],
                   experts=[ExpertSimSpec(id="llama-3.1-8b-instruct", params_b=8, usd_per_mtok=0.2)])


def test_wake_time_is_the_measured_bandwidth_per_device_shard_plus_a_recapture():
    eight_b = engine_profile(8, "h100")
    assert wake_time_s(eight_b) == pytest.approx(eight_b.weights_bytes / 51.7e9 + MEASURED_RECAPTURE_S)
    assert 0.3 < wake_time_s(eight_b) < 0.5 < eight_b.cold_start_s  # the "~0.4 s where cold needs 8-20 s"
    seventy_b = engine_profile(70, "h100")
    assert wake_time_s(seventy_b) < seventy_b.weights_bytes / 51.7e9  # four shards over four links at once


@settings(max_examples=300, deadline=None)
@given(prewarm_s=st.floats(0, 1000), keepalive_s=st.floats(0, 1000), sleep_after_s=st.floats(0, 500),
       dt=st.floats(0, 3000), num_in_flight=st.integers(0, 2))
def test_sleeps_only_when_idle_past_sleep_after_and_never_while_busy(prewarm_s, keepalive_s, sleep_after_s, dt, num_in_flight):
    activity = ExpertActivity(A, num_in_flight=num_in_flight, num_arrivals=5, idle_since_at=100.0)
    d = decide_from_window(A, activity, KeepAliveWindow(prewarm_s, keepalive_s, "test"), has_replica=True,
                           cold_start_s=20.0, now_s=100.0 + dt, sleep_after_s=sleep_after_s)
    if d.reason.code is KeepAliveReasonCode.SLEEP:
        assert d.action is KeepAliveAction.SCALE_TO_ZERO and not num_in_flight and dt >= sleep_after_s
    without = decide_from_window(A, activity, KeepAliveWindow(prewarm_s, keepalive_s, "test"), has_replica=True,
                                 cold_start_s=20.0, now_s=100.0 + dt)
    if d.reason.code is not KeepAliveReasonCode.SLEEP:
        assert d == without  # the tier changes nothing but warm-in-window → asleep


def test_asleep_replicas_wake_only_on_their_worker_and_expire():
    asleep = AsleepReplicas(asleep_keepalive_s=100.0)
    asleep.note_drain("r1", KeepAliveReasonCode.SLEEP)
    asleep.note_drain("r2", KeepAliveReasonCode.WINDOW_EXPIRED)
    assert asleep.should_sleep("r1") and not asleep.should_sleep("r2") and not asleep.should_sleep("r1")
    asleep.put("r1", A, "w0", "h100", 0.4, now_s=10.0)
    assert asleep.cold_start_overrides() == {(A, "h100"): 0.4}
    assert asleep.take(A, "w1", 20.0) is None  # its weights are in w0's host memory
    assert asleep.take(A, "w0", 20.0).replica_id == "r1" and asleep.cold_start_overrides() == {}
    asleep.put("r3", A, "w0", "h100", 0.4, now_s=10.0)
    assert asleep.take(A, "w0", 110.0) is None and [a.replica_id for a in asleep.expired(110.0)] == ["r3"]


def test_a_sleeping_replica_wakes_in_the_wake_time_and_costs_nothing_while_asleep():
    data = wl.load_routing_data()
    # Requests 200 s apart on one expert: without the tier the replica stays warm between them (the fallback
    # window is 600 s); with it, once the expert has a history of idle gaps (`min_samples`, 10) to bet a wake
    # on, it sleeps after 30 s idle and the next request wakes it.
    rng = np.random.default_rng(0)
    arrivals = np.arange(0.0, 14 * 200.0, 200.0)
    n = len(arrivals)
    w = wl.attach_prompts(wl.Workload.from_arrays(arrivals, np.full(n, 200), np.full(n, 20)), 5608, rng)
    routing = lambda ids: routing_inputs(w, data, ids)  # noqa: E731
    warm, _ = run_policy("switchboard", SPEC, w, routing, Knobs())
    tiered, run = run_policy("switchboard-sleep", SPEC, w, routing, dataclasses.replace(Knobs(), sleep_after_s=30.0))
    run.check_conservation()
    assert tiered.usd_cost < warm.usd_cost
    wakes = [r for r in run.replicas if r.is_wake]
    assert wakes and all(r.warm_at - r.created_at == pytest.approx(wake_time_s(engine_profile(8, "h100"))) for r in wakes)
    for r in wakes:  # the request that woke it: a wake (~0.4 s) plus the prefill, not an 18 s cold start
        woken = int(np.argmin(np.abs(arrivals - r.created_at)))
        assert run.first_token_at[woken] - arrivals[woken] < 1.0


@settings(max_examples=300, deadline=None)
@given(prewarm_s=st.floats(0, 1000), keepalive_s=st.floats(0, 1000), dt=st.floats(0, 3000),
       linger_s=st.sampled_from([0.0, 60.0]))
def test_an_expert_a_request_wakes_within_its_slo_is_never_prewarmed(prewarm_s, keepalive_s, dt, linger_s):
    activity = ExpertActivity(A, num_arrivals=5, idle_since_at=100.0)
    window = KeepAliveWindow(prewarm_s, keepalive_s, "test", linger_s=linger_s)
    d = decide_from_window(A, activity, window, has_replica=False, cold_start_s=0.8, now_s=100.0 + dt,
                           sleep_after_s=5.0, wakes_on_demand=True)
    assert d.action is not KeepAliveAction.PREWARM and not d.wants_replica


def test_a_bursts_linger_is_spent_asleep_once_idle_past_sleep_after():
    activity = ExpertActivity(A, num_arrivals=5, idle_since_at=100.0)
    window = KeepAliveWindow(600.0, 600.0, "test", linger_s=60.0)
    lingering = decide_from_window(A, activity, window, has_replica=True, cold_start_s=20.0, now_s=110.0)
    assert lingering.action is KeepAliveAction.KEEP_WARM  # without the tier: warm for the burst
    asleep = decide_from_window(A, activity, window, has_replica=True, cold_start_s=20.0, now_s=110.0,
                                sleep_after_s=5.0)
    assert asleep.action is KeepAliveAction.SCALE_TO_ZERO and asleep.reason.code is KeepAliveReasonCode.SLEEP
    early = decide_from_window(A, activity, window, has_replica=True, cold_start_s=20.0, now_s=103.0,
                               sleep_after_s=5.0)
    assert early.action is KeepAliveAction.KEEP_WARM


def test_requests_seconds_apart_wake_the_asleep_replica_and_nothing_wakes_it_ahead():
    """A steady trickle (a request every ~20 s): each request wakes the replica, which sleeps 5 s after it;
    route-aware pre-warming and keep-alive's pre-warm must not wake it in between (they did: an expert put to
    sleep was restarted in the same control step, so the tier saved nothing)."""
    data = wl.load_routing_data()
    rng = np.random.default_rng(0)
    arrivals = np.arange(0.0, 600.0, 20.0)
    w = wl.attach_prompts(wl.Workload.from_arrays(arrivals, np.full(len(arrivals), 200), np.full(len(arrivals), 20)),
                          5608, rng)
    routing = lambda ids: routing_inputs(w, data, ids)  # noqa: E731
    warm, _ = run_policy("switchboard", SPEC, w, routing, Knobs())
    tiered, run = run_policy("switchboard-sleep", SPEC, w, routing, dataclasses.replace(Knobs(), sleep_after_s=5.0))
    run.check_conservation()
    wakes = [r for r in run.replicas if r.is_wake]
    assert len(wakes) >= len(arrivals) - 13 and not any(r.is_prewarm for r in wakes)  # once 10 gaps are known
    assert tiered.usd_cost < 0.75 * warm.usd_cost
    assert tiered.ttft_slo_attainment == pytest.approx((len(arrivals) - 1) / len(arrivals))  # all but the cold start


def test_sleeping_is_bet_on_the_rest_of_the_idle_gap_exceeding_the_wake():
    from switchboard.policies.keepalive import IdleHistogram, _expected_residual_idle_s

    def activity_of(gaps, num_arrivals=None, decayed_arrivals=1.0):
        return ExpertActivity(A, num_arrivals=len(gaps) + 1 if num_arrivals is None else num_arrivals,
                              recent_idle_gaps_s=tuple(gaps), idle_since_at=100.0, last_arrival_at=99.0,
                              decayed_arrivals=decayed_arrivals)

    def residual(gaps, idle_s, **kw):
        return _expected_residual_idle_s(IdleHistogram.empty(60.0, 4), activity_of(gaps, **kw), 100.0 + idle_s,
                                         min_samples=10)

    lulls = [0.5] * 18 + [1.5, 2.5]  # a busy expert: idle gaps well under a second, rarely two
    assert residual(lulls, 1.0) == pytest.approx(1.0)  # E[g − 1 | g > 1] over {1.5, 2.5}: shorter than a 1.03 s wake
    trickle = [4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 16.0, 18.0, 20.0, 22.0]
    assert residual(trickle, 1.0) == pytest.approx(12.0)
    assert residual(trickle, 30.0) == float("inf")  # longer than any seen: nothing says it ends soon
    assert residual(trickle[:5], 1.0) == 0.0  # too little history to bet a wake on


def test_wakes_are_priced_where_the_replica_sleeps_and_the_pricing_is_idempotent():
    """`price_wakes`, which the simulator and the live fleet both apply whenever the asleep set changes: the
    wake on the worker a replica sleeps on, the cold start on the kind's other workers, and back once taken."""
    from switchboard.fleet.sleep import price_wakes
    from switchboard.fleet.state import ServingEstimate

    key = (A, "h100")
    cold = ServingEstimate(A, "h100", 20.0, 18.0, 1e4, 0.01, 0.02, 8, 10_000, wake_s=0.4)
    asleep = AsleepReplicas(asleep_keepalive_s=100.0)
    asleep.put("r1", A, "w0", "h100", 0.4, now_s=0.0)
    priced = price_wakes({key: cold}, asleep)[key]
    assert (priced.cold_start_s, priced.asleep_worker_ids) == (0.4, ("w0",))
    assert (priced.start_s_on("w0"), priced.start_s_on("w1")) == (0.4, 18.0)
    assert price_wakes({key: priced}, asleep)[key] == priced and priced.unpriced() == cold
    asleep.take(A, "w0", 1.0)
    assert price_wakes({key: priced}, asleep)[key] == cold
    assert price_wakes({key: priced}, None)[key] == cold


def test_keepalive_sleeps_only_where_a_wake_keeps_the_fleets_ttft_tail():
    """`start_keeps_tail`: a wake is allowed where the expert's 99th-percentile request, woken, is no slower than
    the slowest other warm expert's 99th-percentile request already is — so the wake adds no new tail."""
    from switchboard.fleet.state import ExpertSpec, FleetSnapshot, ServingEstimate, Worker
    from switchboard.fleet import ops
    from switchboard.policies import predict
    from switchboard.types import HardwareKind, ReplicaId, ReplicaState, WorkerId

    def est(e, prefill):
        return ServingEstimate(ExpertId(e), HardwareKind("l4"), 10.0, 7.0, prefill, 0.02, 0.05, 16, 50_000, wake_s=0.6)

    def snapshot(other_prefill):
        workers = {WorkerId("w0"): Worker(WorkerId("w0"), HardwareKind("l4"), 24.0, 0.8)}
        s = FleetSnapshot(now_s=0.0, workers=workers,
                          experts={ExpertId(e): ExpertSpec(ExpertId(e), 7, 0.2, ttft_slo_s=2.0) for e in ("a", "b")},
                          estimates={(ExpertId("a"), "l4"): est("a", 4000.0), (ExpertId("b"), "l4"): est("b", other_prefill)})
        for t in (1.0, 2.0):
            s = ops.at_time(s, t)
            for e in ("a", "b"):
                s = ops.record_arrival(s, ExpertId(e), 200, 50)
        s = ops.add_replica(s, ReplicaId("b#1"), s.estimates[(ExpertId("b"), "l4")], WorkerId("w0"))
        for state in (ReplicaState.STARTING, ReplicaState.WARM):
            s = ops.transition(s, ReplicaId("b#1"), state)
        return s

    # a's woken p99 request: 0.6 s + 4.6 × 200 / 4000 ≈ 0.85 s; b's warm one 4.6 × 200 / b's prefill rate.
    for other_prefill, keeps in ((4000.0, False), (400.0, True)):
        s = snapshot(other_prefill)
        assert predict.start_fits_slo(s, A, 0.6, s.estimates[(A, "l4")])  # the SLO alone would let it sleep
        assert predict.start_keeps_tail(s, A, 0.6, s.estimates[(A, "l4")]) is keeps


def test_the_fleets_warm_ttft_percentile_is_the_rate_weighted_mixture_of_its_warm_experts():
    """`predict.warm_ttft_percentile_s` (slow-wake hiding's bound): with one other expert warm, that expert's own
    99th-percentile request (prefill of 4.6 × its mean prompt, plus a decode step); with a second, faster one
    added, lower, and the lower the more of the traffic the fast one carries — the fleet's p99, not its slowest
    expert's. None with no other expert warm."""
    import math

    from switchboard.fleet.state import ExpertSpec, FleetSnapshot, Replica, Worker
    from switchboard.perf.serving import serving_estimate
    from switchboard.policies import predict
    from switchboard.types import HardwareKind, ReplicaId, ReplicaState, WorkerId

    kinds = {"slow": "l4", "fast": "h100", "me": "l4"}
    estimates = {(ExpertId(e), HardwareKind(hw)): serving_estimate(ExpertId(e), engine_profile(8, hw)) for e, hw in kinds.items()}
    workers = {WorkerId(hw): Worker(WorkerId(hw), HardwareKind(hw), 80.0, 1.0) for hw in ("l4", "h100")}

    def snapshot(rates: dict[str, float]) -> FleetSnapshot:
        replicas, activity = {}, {}
        for e, rate in rates.items():
            estimate = estimates[(ExpertId(e), HardwareKind(kinds[e]))]
            replicas[ReplicaId(f"{e}#0")] = Replica(ReplicaId(f"{e}#0"), ExpertId(e), WorkerId(kinds[e]), HardwareKind(kinds[e]),
                                                    estimate.memory_gb, estimate.capacity, ReplicaState.WARM)
            # A steady `rate` requests/s of 1,000-token prompts (the decayed count over the demand window).
            count = rate * 300.0
            activity[ExpertId(e)] = ExpertActivity(ExpertId(e), num_arrivals=100, first_arrival_at=0.0, last_arrival_at=1e4,
                                                   idle_since_at=1e4, decayed_arrivals=count, decayed_prompt_tokens=1000.0 * count)
        return FleetSnapshot(now_s=1e4, workers=workers, experts={ExpertId(e): ExpertSpec(ExpertId(e), 8, 0.2) for e in kinds},
                             estimates=estimates, replicas=replicas, activity=activity)

    slow = estimates[(ExpertId("slow"), HardwareKind("l4"))]
    own_p99_s = -math.log(0.01) * 1000.0 / slow.prefill_tokens_per_s + slow.decode_step_s_batch_1
    assert predict.warm_ttft_percentile_s(snapshot({"slow": 1.0}), ExpertId("me"), 99.0) == pytest.approx(own_p99_s, rel=1e-6)
    mixed = [predict.warm_ttft_percentile_s(snapshot({"slow": 1.0, "fast": f}), ExpertId("me"), 99.0) for f in (1.0, 10.0)]
    assert own_p99_s > mixed[0] > mixed[1]
    assert predict.warm_ttft_percentile_s(snapshot({"me": 1.0}), ExpertId("me"), 99.0) is None


def test_an_unload_until_prewarm_sleeps_only_where_sleeping_frees_an_accelerator():
    """Keep-alive's `unloaded-until-prewarm` is a sleep code wherever the replica is; on a worker without declared
    devices (the embedded CPU worker, `placement.sleep_frees_accelerator`) the executors stop it instead, so with
    the tier on nothing sleeps there."""
    asleep = AsleepReplicas(asleep_keepalive_s=600.0)
    asleep.note_drain("cpu#1", KeepAliveReasonCode.PREWARM_GAP, frees_accelerator=False)
    asleep.note_drain("gpu#1", KeepAliveReasonCode.PREWARM_GAP, frees_accelerator=True)
    assert not asleep.should_sleep("cpu#1") and asleep.should_sleep("gpu#1")
