"""Keep-alive: scale-to-zero after the idle window and never before; the histogram learns pre-warm times."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy_builders import L4, at, estimate, fleet, with_replica
from switchboard.fleet import ExpertActivity
from switchboard.fleet import ops
from switchboard.policies.keepalive import (
    IdleHistogram,
    KeepAliveAction,
    KeepAliveReasonCode,
    KeepAliveSettings,
    KeepAliveState,
    KeepAliveWindow,
    decide_from_window,
    make_keepalive,
)
from switchboard.types import ExpertId, ReplicaState

A = ExpertId("a")


def _served_once(finish_at: float):
    """Fleet with one warm replica of `a` whose only request ran 0 → finish_at."""
    s = with_replica(fleet(), "r1")
    s = ops.record_arrival(s, A)
    s = ops.record_finish(at(s, finish_at), A)
    return s


def _decide(policy, s, state=None):
    decisions, state = policy.decide(s, state or KeepAliveState(), {A: 20.0})
    return decisions[A], state


def test_fixed_keeps_warm_until_the_timeout_then_scales_to_zero():
    policy = make_keepalive(KeepAliveSettings(kind="fixed", idle_timeout_s=600))
    s = _served_once(10.0)
    assert _decide(policy, at(s, 10.0))[0].action is KeepAliveAction.KEEP_WARM
    assert _decide(policy, at(s, 609.9))[0].action is KeepAliveAction.KEEP_WARM
    d, _ = _decide(policy, at(s, 610.0))
    assert d.action is KeepAliveAction.SCALE_TO_ZERO
    assert d.reason.code is KeepAliveReasonCode.WINDOW_EXPIRED


def test_busy_expert_is_always_kept():
    policy = make_keepalive(KeepAliveSettings(kind="fixed", idle_timeout_s=1))
    s = ops.record_arrival(with_replica(fleet(), "r1"), A)
    d, _ = _decide(policy, at(s, 10_000))
    assert d.action is KeepAliveAction.KEEP_WARM and d.reason.code is KeepAliveReasonCode.BUSY


def test_external_expert_is_always_warm():
    policy = make_keepalive(KeepAliveSettings(kind="fixed", idle_timeout_s=1))
    d, _ = _decide(policy, at(fleet(external=("a",)), 10_000))
    assert d.action is KeepAliveAction.KEEP_WARM and d.reason.code is KeepAliveReasonCode.EXTERNAL


def test_cold_expert_with_expired_window_stays_cold():
    policy = make_keepalive(KeepAliveSettings(kind="fixed", idle_timeout_s=60))
    s = ops.record_finish(at(ops.record_arrival(fleet(), A), 1.0), A)
    assert _decide(policy, at(s, 100))[0].action is KeepAliveAction.STAY_COLD


def _periodic_activity(period_s: float, n: int) -> ExpertActivity:
    a, t = ExpertActivity(A), 0.0
    for _ in range(n):
        a = a.on_arrival(t).on_finish(t + 1.0)
        t += period_s
    return a


def test_histogram_ingests_each_gap_once():
    a = _periodic_activity(301.0, 12)
    h = IdleHistogram.empty(60.0, 240).ingest(a)
    assert h.num_samples == 11 and h.counts[5] == 11
    assert h.ingest(a) == h  # idempotent: nothing new
    assert h.ingest(a.on_arrival(a.idle_since_at + 30)).counts[0] == 1


def test_hybrid_learns_a_prewarm_window_for_periodic_traffic():
    settings = KeepAliveSettings(kind="hybrid-histogram", min_samples=5)
    policy = make_keepalive(settings)
    # One request every ~10 minutes: idle gaps all fall in bin 9 (540–600 s).
    hist = IdleHistogram.empty(60.0, 240).ingest(_periodic_activity(571.0, 20))
    window = policy.window(hist)
    assert window.prewarm_s == 9 * 60 * 0.9
    assert window.prewarm_s + window.keepalive_s == 10 * 60 * 1.1


def test_hybrid_falls_back_with_too_little_history():
    policy = make_keepalive(KeepAliveSettings(kind="hybrid-histogram", min_samples=10, fallback_keepalive_s=900))
    window = policy.window(IdleHistogram.empty(60.0, 240).ingest(_periodic_activity(571.0, 3)))
    assert (window.prewarm_s, window.keepalive_s) == (0.0, 900)
    assert "fallback" in window.reason


def test_hybrid_falls_back_when_idle_times_are_out_of_bounds():
    policy = make_keepalive(KeepAliveSettings(kind="hybrid-histogram", min_samples=3, fallback_keepalive_s=900,
                                              num_bins=10, bin_width_s=60))
    window = policy.window(IdleHistogram.empty(60.0, 10).ingest(_periodic_activity(5000.0, 10)))
    assert window.keepalive_s == 900 and "beyond" in window.reason


def test_hybrid_unloads_during_the_prewarm_gap_then_prewarms():
    policy = make_keepalive(KeepAliveSettings(kind="hybrid-histogram", min_samples=5))
    s = with_replica(fleet(), "r1")
    a = _periodic_activity(571.0, 20)
    s = ops.at_time(s, a.idle_since_at)
    s = dataclasses.replace(s, activity={A: a})
    d, state = _decide(policy, s)
    assert d.action is KeepAliveAction.SCALE_TO_ZERO and d.reason.code is KeepAliveReasonCode.PREWARM_GAP
    # With the replica gone, the decision is a pre-warm ahead of the window, early by the cold start (20 s).
    cold = ops.transition(s, "r1", ReplicaState.DRAINING)
    d, _ = _decide(policy, cold, state)
    assert d.action is KeepAliveAction.PREWARM
    assert d.at_s == a.idle_since_at + 9 * 60 * 0.9 - 20.0
    due, _ = _decide(policy, at(cold, d.at_s), state)
    assert due.action is KeepAliveAction.PREWARM and due.wants_replica


def _bursty_activity(period_s: float, num_bursts: int, burst_size: int = 3, gap_s: float = 5.0) -> ExpertActivity:
    """A scheduled job: every `period_s`, `burst_size` one-second requests `gap_s` apart."""
    a = ExpertActivity(A)
    for k in range(num_bursts):
        for j in range(burst_size):
            t = k * period_s + j * (gap_s + 1.0)
            a = a.on_arrival(t).on_finish(t + 1.0)
    return a


def test_hybrid_lingers_through_a_bursts_gaps_then_unloads_until_the_next_burst():
    policy = make_keepalive(KeepAliveSettings(kind="hybrid-histogram", min_samples=5))
    a = _bursty_activity(900.0, 12)  # 2 of every 3 idle gaps are 5 s (bin 0); the others ~888 s (bin 14)
    window = policy.window(IdleHistogram.empty(60.0, 240).ingest(a))
    # Without lingering, the 5th percentile would be bin 0: no pre-warm gap, warm all the time.
    assert window.linger_s == 60.0 and window.prewarm_s == 14 * 60 * 0.9
    s = dataclasses.replace(ops.at_time(with_replica(fleet(), "r1"), a.idle_since_at), activity={A: a})
    d, state = _decide(policy, at(s, a.idle_since_at + 30))
    assert d.action is KeepAliveAction.KEEP_WARM  # the burst may not be over
    d, state = _decide(policy, at(s, a.idle_since_at + 61), state)
    assert d.action is KeepAliveAction.SCALE_TO_ZERO and d.reason.code is KeepAliveReasonCode.PREWARM_GAP
    cold = ops.transition(at(s, a.idle_since_at + 61), "r1", ReplicaState.DRAINING)
    d, _ = _decide(policy, cold, state)
    assert d.action is KeepAliveAction.PREWARM and d.at_s == a.idle_since_at + 14 * 60 * 0.9 - 20.0


@settings(max_examples=300, deadline=None)
@given(
    prewarm_s=st.floats(0, 1000),
    keepalive_s=st.floats(0, 1000),
    cold_start_s=st.floats(0, 100),
    idle_since=st.floats(0, 1000),
    dt=st.floats(0, 3000),
    has_replica=st.booleans(),
    num_in_flight=st.integers(0, 2),
)
def test_never_scales_to_zero_while_busy_or_inside_the_window(prewarm_s, keepalive_s, cold_start_s, idle_since, dt,
                                                                 has_replica, num_in_flight):
    activity = ExpertActivity(A, num_in_flight=num_in_flight, num_arrivals=5, idle_since_at=idle_since)
    now = idle_since + dt
    d = decide_from_window(A, activity, KeepAliveWindow(prewarm_s, keepalive_s, "test"), has_replica=has_replica,
                           cold_start_s=cold_start_s, now_s=now)
    if num_in_flight:
        assert d.action is KeepAliveAction.KEEP_WARM
    if d.action is KeepAliveAction.SCALE_TO_ZERO:
        assert has_replica
        # Either the whole window has passed, or it has not opened yet (an unload worth a cold start).
        end = prewarm_s + keepalive_s
        assert dt >= end - 1e-9 or (prewarm_s > cold_start_s and dt < prewarm_s - cold_start_s)
    if d.action is KeepAliveAction.PREWARM:
        assert d.at_s >= now or d.at_s == now


@settings(max_examples=100, deadline=None)
@given(timeout_s=st.floats(1, 5000), dt=st.floats(0, 10_000))
def test_fixed_scale_to_zero_exactly_at_the_timeout(timeout_s, dt):
    policy = make_keepalive(KeepAliveSettings(kind="fixed", idle_timeout_s=timeout_s))
    s = _served_once(1.0)
    d, _ = _decide(policy, at(s, 1.0 + dt))
    expected = KeepAliveAction.SCALE_TO_ZERO if dt >= timeout_s else KeepAliveAction.KEEP_WARM
    assert d.action is expected


@pytest.mark.parametrize("num_devices", [1, 0])
def test_the_sleep_tier_sleeps_a_replica_only_where_that_frees_an_accelerator(num_devices):
    # Asleep holds host RAM and no accelerator: on a worker that declares none (the embedded CPU worker) that is
    # what warm holds, so `sleep_after_s: 0` must not put it to sleep after every request.
    s = fleet(estimates=[dataclasses.replace(estimate("a", L4), wake_s=0.1)])
    s = s.evolve(workers={w: dataclasses.replace(x, num_devices=num_devices) for w, x in s.workers.items()})
    s = with_replica(s, "r1")
    for k in range(12):  # requests 100 s apart, each done at once: the expert's idle gaps are ~100 s
        s = ops.record_finish(ops.record_arrival(ops.at_time(s, 100.0 * k), A, 200, 20), A)
    s = ops.at_time(s, 1105.0)  # idle 5 s, ~95 s expected to come: the wake (0.1 s) pays where it saves
    policy = make_keepalive(KeepAliveSettings(kind="fixed", sleep_after_s=0.0))
    decision = policy.decide(s, KeepAliveState(), {})[0][A]
    expected = ((KeepAliveAction.SCALE_TO_ZERO, KeepAliveReasonCode.SLEEP) if num_devices
                else (KeepAliveAction.KEEP_WARM, KeepAliveReasonCode.IN_WINDOW))
    assert (decision.action, decision.reason.code) == expected
