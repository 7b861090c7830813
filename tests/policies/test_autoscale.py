"""Autoscaling: bounds always hold, delays give hysteresis, a cold expert with waiting requests wakes at once."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import math

from policy_builders import at, estimate, fleet, request, with_replica
from switchboard.fleet import ReplicaLoad
from switchboard.fleet import ops
from switchboard.policies import predict
from switchboard.policies.autoscale import (
    AutoscaleReasonCode,
    AutoscaleSettings,
    AutoscaleState,
    make_autoscale,
)
from switchboard.types import ExpertId, ReplicaState

A = ExpertId("a")


def _capacity(s):
    return {A: s.estimates[(A, "l4")].capacity}


def _loaded(num_tokens: int, num_replicas: int = 1, now_s: float = 0.0):
    s = fleet(workers=[(f"w{i}", "l4", 24.0, 0.8) for i in range(8)], now_s=now_s)
    for i in range(num_replicas):
        load = ReplicaLoad(num_running=1, num_running_tokens=num_tokens // num_replicas) if num_tokens else None
        s = with_replica(s, f"r{i}", worker=f"w{i}", load=load)
    return s


def test_tokens_drive_the_count_not_requests():
    policy = make_autoscale(AutoscaleSettings(upscale_delay_s=0, target_utilization=0.5, max_replicas=8))
    # kv 50k per replica at 50% utilization → 25k tokens each; 100k tokens → 4 replicas.
    decisions, _ = policy.decide(_loaded(100_000), AutoscaleState(), _capacity(_loaded(0)), {})
    assert decisions[A].num_desired == 4
    assert decisions[A].reason.code is AutoscaleReasonCode.SCALE_UP


def test_queue_depth_variant_counts_sequences():
    policy = make_autoscale(AutoscaleSettings(kind="queue-depth", upscale_delay_s=0, target_utilization=0.5))
    s = _loaded(0)
    s = ops.set_load(s, "r0", ReplicaLoad(num_running=16, num_running_tokens=16))
    decisions, _ = policy.decide(s, AutoscaleState(), _capacity(s), {})
    assert decisions[A].num_desired == 2  # 16 sequences / (0.5 × 16)


def test_upscale_waits_for_its_delay():
    policy = make_autoscale(AutoscaleSettings(upscale_delay_s=10, max_replicas=8))
    s = _loaded(100_000)
    d, state = policy.decide(s, AutoscaleState(), _capacity(s), {})
    assert d[A].num_desired == 1 and d[A].reason.code is AutoscaleReasonCode.WAITING_FOR_DELAY
    d, state = policy.decide(at(s, 9.9), state, _capacity(s), {})
    assert d[A].num_desired == 1
    d, state = policy.decide(at(s, 10.0), state, _capacity(s), {})
    assert d[A].num_desired > 1


def test_downscale_hysteresis_resets_when_load_returns():
    policy = make_autoscale(AutoscaleSettings(downscale_delay_s=60))
    idle = _loaded(0, num_replicas=3)
    d, state = policy.decide(idle, AutoscaleState(), _capacity(idle), {A: 1})
    assert d[A].num_desired == 3
    busy = ops.set_load(at(idle, 30), "r0", ReplicaLoad(1, 90_000))
    _, state = policy.decide(busy, state, _capacity(idle), {A: 1})  # wanted 3 again: memory resets
    d, state = policy.decide(at(idle, 70), state, _capacity(idle), {A: 1})
    assert d[A].num_desired == 3  # only 40 s of wanting fewer
    d, _ = policy.decide(at(idle, 131), state, _capacity(idle), {A: 1})
    assert d[A].num_desired == 1


def test_waiting_requests_wake_a_cold_expert_immediately():
    policy = make_autoscale(AutoscaleSettings(upscale_delay_s=1000))
    s = ops.enqueue(fleet(), request(1), None)
    d, _ = policy.decide(s, AutoscaleState(), _capacity(s), {})
    assert d[A].num_desired >= 1 and d[A].reason.code is AutoscaleReasonCode.WAKE_FOR_WAITING_REQUESTS


def test_keepalive_floor_keeps_one_and_zero_floor_allows_zero():
    policy = make_autoscale(AutoscaleSettings(downscale_delay_s=0))
    s = _loaded(0)
    assert policy.decide(s, AutoscaleState(), _capacity(s), {A: 1})[0][A].num_desired == 1
    assert policy.decide(s, AutoscaleState(), _capacity(s), {A: 0})[0][A].num_desired == 0


def _with_demand(s, rate_per_s, duration_s=300.0, prompt=1000, output=200):
    """`s` after arrivals of `rate_per_s` for `duration_s` that finished at once (clock at the end)."""
    for k in range(int(rate_per_s * duration_s)):
        s = ops.record_finish(ops.record_arrival(ops.at_time(s, k / rate_per_s), A, prompt, output), A)
    return ops.at_time(s, duration_s)


def _busy(s, replica="r0"):
    """One request outstanding: demand-at-slo sizes only experts with work."""
    return ops.set_load(s, replica, ReplicaLoad(num_running=1, num_running_tokens=500))


def test_demand_at_slo_sizes_a_busy_expert_by_its_arrival_rate():
    policy = make_autoscale(AutoscaleSettings(kind="demand-at-slo", upscale_delay_s=0, max_replicas=32))
    base = _loaded(0)
    per_replica = predict.replica_requests_per_s_at_slo(base.estimates[(A, "l4")], base.experts[A], 1000, 200, 99.0)
    for rate in (0.5 * per_replica, 2.5 * per_replica, 6.5 * per_replica):
        s = _busy(_with_demand(base, rate))
        d, _ = policy.decide(s, AutoscaleState(), _capacity(s), {})
        assert d[A].num_desired == math.ceil(rate / per_replica - 0.05)  # the decayed rate reads ~1% low


def test_demand_at_slo_headroom_provisions_for_a_multiple_of_the_rate():
    base = _loaded(0)
    per_replica = predict.replica_requests_per_s_at_slo(base.estimates[(A, "l4")], base.experts[A], 1000, 200, 99.0)
    s = _busy(_with_demand(base, 1.9 * per_replica))
    desired = {headroom: make_autoscale(AutoscaleSettings(kind="demand-at-slo", upscale_delay_s=0, max_replicas=32,
                                                          demand_headroom=headroom)).decide(s, AutoscaleState(), _capacity(s), {})[0][A].num_desired
               for headroom in (1.0, 1.5)}
    assert desired == {1.0: 2, 1.5: 3}  # 1.9 → 2 replicas; 1.9 × 1.5 = 2.85 → 3


def test_demand_at_slo_leaves_an_idle_expert_to_keepalive_and_keeps_kv_room():
    policy = make_autoscale(AutoscaleSettings(kind="demand-at-slo", upscale_delay_s=0, downscale_delay_s=0))
    s = _with_demand(_loaded(0), 5.0)  # a high rate, but nothing outstanding right now
    d, _ = policy.decide(s, AutoscaleState(), _capacity(s), {A: 1})
    assert d[A].num_desired == 1  # the keep-alive floor, not the rate
    s = _loaded(120_000)  # no recorded arrivals, 120k tokens outstanding on 50k-token replicas
    assert policy.decide(s, AutoscaleState(), _capacity(s), {})[0][A].num_desired == 3


def test_demand_at_slo_counts_a_shortfall_in_the_best_kind_and_retires_the_least_efficient_first():
    slow = estimate("a", "cpu", memory_gb=8, prefill=1000.0, step1=0.1, step_full=0.15, seqs=4, kv=20_000)
    fast = estimate("a", "l4", memory_gb=16, prefill=8000.0, step1=0.03, step_full=0.06, seqs=16, kv=50_000)
    s = fleet(workers=(("c0", "cpu", 32.0, 0.1), ("w0", "l4", 24.0, 0.8), ("w1", "l4", 24.0, 0.8)),
              estimates=[slow, fast])
    fleet_at_0 = s = with_replica(with_replica(s, "slow", worker="c0"), "fast", worker="w0")
    fast_rate, slow_rate = (predict.replica_requests_per_s_at_slo(e, s.experts[A], 1000, 200, 99.0) for e in (fast, slow))
    assert 0 < slow_rate < 0.2 * fast_rate
    s = _busy(_with_demand(s, 2.5 * fast_rate), "slow")
    policy = make_autoscale(AutoscaleSettings(kind="demand-at-slo", upscale_delay_s=0, downscale_delay_s=0))
    d, _ = policy.decide(s, AutoscaleState(), {A: fast.capacity}, {})
    # The fast and slow replicas carry what they can; the rest is counted in fast replicas (placement's choice
    # under load), not as rate ÷ the mean capacity, which the slow replica would inflate.
    assert d[A].num_desired == math.ceil(2 + (2.5 * fast_rate * 0.99 - fast_rate - slow_rate) / fast_rate)
    assert d[A].num_desired < math.ceil(2.5 * fast_rate * 0.99 / ((fast_rate + slow_rate) / 2))
    s = _busy(_with_demand(fleet_at_0, 0.5 * fast_rate), "slow")
    d, _ = policy.decide(s, AutoscaleState(), {A: fast.capacity}, {})
    assert d[A].num_desired == 1 and d[A].retire_first[0] == "slow"  # though the slow one is the busier


@pytest.mark.parametrize("kind", ["in-flight-tokens", "queue-depth", "demand-at-slo"])
def test_every_strategy_retires_the_least_efficient_kind_first_though_it_is_the_busier(kind):
    # Least loaded first retired the fast replica (its queue drains sooner) and left the slow one alone with
    # the next burst: p99 TTFT +560 ms on the code-like trace.
    slow = estimate("a", "cpu", memory_gb=8, prefill=1000.0, step1=0.1, step_full=0.15, seqs=4, kv=20_000)
    fast = estimate("a", "l4", memory_gb=16, prefill=8000.0, step1=0.03, step_full=0.06, seqs=16, kv=50_000)
    s = fleet(workers=(("c0", "cpu", 32.0, 0.1), ("w0", "l4", 24.0, 0.8)), estimates=[slow, fast])
    s = with_replica(with_replica(s, "slow", worker="c0"), "fast", worker="w0")
    s = _busy(_with_demand(s, 0.01), "slow")
    policy = make_autoscale(AutoscaleSettings(kind=kind, downscale_delay_s=0))
    d, _ = policy.decide(s, AutoscaleState(), {A: fast.capacity}, {})
    assert (d[A].num_current, d[A].num_desired, d[A].retire_first[0]) == (2, 1, "slow")


def test_demand_at_slo_retires_a_slow_replica_at_once_when_a_newer_better_kind_has_taken_over():
    slow = estimate("a", "cpu", memory_gb=8, prefill=1000.0, step1=0.1, step_full=0.15, seqs=4, kv=20_000)
    fast = estimate("a", "l4", memory_gb=16, prefill=8000.0, step1=0.03, step_full=0.06, seqs=16, kv=50_000)
    s = fleet(workers=(("c0", "cpu", 32.0, 0.1), ("w0", "l4", 24.0, 0.8), ("w1", "l4", 24.0, 0.8)),
              estimates=[slow, fast])
    rate = 0.5 * predict.replica_requests_per_s_at_slo(fast, s.experts[A], 1000, 200, 99.0)
    loaded = _with_demand(s, rate)
    policy = make_autoscale(AutoscaleSettings(kind="demand-at-slo", downscale_delay_s=120))

    def decide(first, second, second_state=ReplicaState.WARM):
        """`first` = (id, worker) started, then `second` 10 s later; the slow replica is the busy one."""
        f = with_replica(loaded, first[0], worker=first[1])
        f = with_replica(at(f, loaded.now_s + 10), second[0], worker=second[1], state=second_state)
        return policy.decide(_busy(f, "slow"), AutoscaleState(), {A: fast.capacity}, {})[0][A]

    # Replaced: a newer fast replica is warm and carries the demand → the slow one goes now, not after 120 s.
    swapped = decide(("slow", "c0"), ("fast", "w0"))
    assert (swapped.num_current, swapped.num_desired, swapped.retire_first[0]) == (2, 1, "slow")
    assert swapped.reason.code is AutoscaleReasonCode.SCALE_DOWN
    # The replacement still starting: the slow replica serves until it is warm (the delay applies).
    starting = decide(("slow", "c0"), ("fast", "w0"), ReplicaState.STARTING)
    assert starting.num_desired == 2 and starting.reason.code is AutoscaleReasonCode.WAITING_FOR_DELAY
    # The slow replica is the newer one (added for a burst that has ended): hysteresis as before.
    burst = decide(("fast", "w0"), ("slow", "c0"))
    assert burst.num_desired == 2 and burst.reason.code is AutoscaleReasonCode.WAITING_FOR_DELAY
    # Two of the same kind: hysteresis as before.
    same = decide(("slow", "w1"), ("fast", "w0"))
    assert same.num_desired == 2 and same.reason.code is AutoscaleReasonCode.WAITING_FOR_DELAY


@settings(max_examples=200, deadline=None)
@given(
    min_r=st.integers(0, 3),
    extra=st.integers(0, 5),
    tokens=st.integers(0, 2_000_000),
    num_replicas=st.integers(0, 8),
    floor=st.integers(0, 1),
    steps=st.lists(st.floats(0, 200), max_size=5),
    factor=st.floats(0.1, 1.0),
)
def test_desired_stays_within_bounds(min_r, extra, tokens, num_replicas, floor, steps, factor):
    cfg = AutoscaleSettings(min_replicas=min_r, max_replicas=max(1, min_r + extra), upscaling_factor=factor,
                            downscaling_factor=factor)
    policy = make_autoscale(cfg)
    s = _loaded(tokens if num_replicas else 0, num_replicas)
    state, now = AutoscaleState(), 0.0
    for dt in [0.0, *steps]:
        now += dt
        d, state = policy.decide(at(s, now), state, _capacity(s), {A: floor})
        n = d[A].num_desired
        # Either the bounded target, or (while a delay runs) the current count: never outside both.
        assert min(cfg.min_replicas, num_replicas) <= n <= max(cfg.max_replicas, num_replicas)
        if n != num_replicas:
            assert max(cfg.min_replicas, floor) <= n <= cfg.max_replicas


@settings(max_examples=100, deadline=None)
@given(service_s=st.floats(0.01, 2.0), slack_s=st.floats(0.01, 10.0), percentile=st.floats(50, 99.9))
def test_max_utilization_at_slo_is_the_largest_load_whose_tail_wait_fits_the_slack(service_s, slack_s, percentile):
    rho = predict.max_utilization_at_slo(service_s, slack_s, percentile)
    tail = lambda r: r * math.exp(-(1 - r) * slack_s / service_s)
    assert 0 <= rho < 1 and tail(rho) <= 1 - percentile / 100 + 1e-9
    assert tail(min(1.0, rho + 1e-6)) > 1 - percentile / 100 - 1e-6  # the largest such load
    assert predict.max_utilization_at_slo(service_s, slack_s * 2, percentile) >= rho  # more slack, more load


def test_in_flight_tokens_counts_engine_time_of_long_prompts_that_barely_fill_kv():
    """Code-shaped load: 4,000-token prompts with 8-token answers keep the engine busy while one request
    outstanding fills 8% of one replica's KV cache; the engine-time term scales up, KV fill alone would not."""
    base = _loaded(0)
    e = base.estimates[(A, "l4")]
    busy_s = predict.request_busy_s(e, 4000, 8)
    rate = 2.5 * 0.7 / busy_s  # 2.5 replicas' worth at 70% busy
    s = _busy(_with_demand(base, rate, prompt=4000, output=8))
    with_time = make_autoscale(AutoscaleSettings(upscale_delay_s=0, target_utilization=0.7, max_replicas=8))
    kv_only = make_autoscale(AutoscaleSettings(upscale_delay_s=0, target_utilization=0.7, max_replicas=8,
                                               count_engine_time=False))
    assert with_time.decide(s, AutoscaleState(), _capacity(s), {})[0][A].num_desired == 3
    assert kv_only.decide(s, AutoscaleState(), _capacity(s), {})[0][A].num_desired == 1


def test_in_flight_tokens_leaves_an_idle_expert_to_keepalive_and_keeps_kv_room():
    policy = make_autoscale(AutoscaleSettings(upscale_delay_s=0, downscale_delay_s=0))
    s = _with_demand(_loaded(0), 5.0)  # a high rate, but nothing outstanding right now
    assert policy.decide(s, AutoscaleState(), _capacity(s), {A: 1})[0][A].num_desired == 1
    half_a_replica = 0.5 * 0.7 / predict.request_busy_s(s.estimates[(A, "l4")], 1000, 200)
    s = _with_demand(_loaded(120_000), half_a_replica)  # KV fill wants 120k / (0.7 × 50k) → 4; the rate wants 1
    assert s.activity_of(A).demand(s.now_s).requests_per_s > 0
    assert policy.decide(s, AutoscaleState(), _capacity(s), {})[0][A].num_desired == 4
