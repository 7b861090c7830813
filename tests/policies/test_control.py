"""The composed control step, driven through simulated time by a stateful fake executor.

Invariants checked after every run: every request that arrived is finished or rejected exactly once (never
both, never twice); memory is never over-committed; replica counts stay within bounds; the step's projected
fleet equals the fleet after executing its actions (checked inside the fake).
"""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from fake_executor import FakeExecutor
from policy_builders import estimate, fleet, request
from switchboard.policies.actions import DrainReplica, MigrateRequest, PrewarmAt, StartReplica, StopReplica
from switchboard.policies.control import ControlPlane, ControlSettings, RoutePredicted, WakeExpert
from switchboard.policies.base import Reason
from switchboard.policies.routing import ExpertCandidate, RoutePrediction, RouteReasonCode
from switchboard.types import ExpertId, ReplicaState

WORKERS = [(f"w{i}", "l4", 24.0, 0.8) for i in range(3)]


def _settings(**overrides) -> ControlSettings:
    base = {
        "keepalive": {"kind": "fixed", "idle_timeout_s": 300},
        "autoscale": {"max_replicas": 3, "upscale_delay_s": 5, "downscale_delay_s": 30},
        "admission": {"kind": "slo", "cold_start_allowance_s": 60},
        "prewarm": {"kind": "none"},
    }
    base.update(overrides)
    return ControlSettings.model_validate(base)


def _check_invariants(ex: FakeExecutor, max_replicas: int = 3) -> None:
    s = ex.snapshot
    for w in s.workers.values():
        assert s.memory_used_gb(w.worker_id) <= w.memory_gb + 1e-9
    for e in s.experts:
        assert len(s.accepting_replicas_of(e)) <= max_replicas
    for rid, n in ex.ledger.assigned.items():
        assert n == 1, f"{rid} assigned {n} times"
    for rid, n in ex.ledger.started.items():
        assert n == 1, f"{rid} started {n} times"


def _drain_everything(ex: FakeExecutor, until_s: float) -> None:
    t = ex.snapshot.now_s
    while t < until_s:
        t += 10.0
        ex.advance(t)
        ex.step()


def test_scale_to_zero_cold_wake_and_back_to_zero():
    ex = FakeExecutor(fleet(workers=WORKERS), ControlPlane(_settings()))
    result = ex.arrive(request(1, prompt=100, output=100))  # cold expert: wakes
    starts = [a for a in result.actions if isinstance(a, StartReplica)]
    assert len(starts) == 1 and starts[0].cold_start_s == 20.0
    assert "q1" in ex.ledger.cold_served  # the response can say it waited for a cold start
    ex.advance(20.0)  # warm at 20, serves 200 tokens × 10 ms → done at 22
    ex.advance(22.0)
    assert ex.ledger.finished["q1"] == 1
    ex.advance(321.9)
    ex.step()
    assert not ex.actions_of(DrainReplica)  # inside the 300 s window
    ex.advance(322.0)
    result = ex.step()
    assert [type(a) for a in result.actions] == [DrainReplica, StopReplica]
    assert result.keepalive["a"].reason.code.value == "keepalive-window-expired"
    assert not ex.snapshot.accepting_replicas_of("a")
    assert ex.snapshot.num_cold_starts == 1
    ex.advance(400.0)
    ex.arrive(request(2, at_s=400.0))
    assert ex.snapshot.num_cold_starts == 2


def test_a_burst_spreads_and_scales_up_then_down():
    ex = FakeExecutor(fleet(workers=WORKERS), ControlPlane(_settings()), seconds_per_token=0.002)
    ex.arrive(request(0, prompt=100, output=100))
    ex.advance(20.0)
    for i in range(1, 40):
        ex.advance(20.0 + i * 0.25)
        ex.arrive(request(i, at_s=20.0 + i * 0.25, prompt=2000, output=2000, slo=60.0))
    _check_invariants(ex)
    assert len({a.replica_id for a in ex.actions_of(StartReplica)}) >= 2
    _drain_everything(ex, 1000.0)
    _check_invariants(ex)
    assert not ex.snapshot.accepting_replicas_of("a")  # and back to zero after the keep-alive window


def test_overload_rejects_early_with_429_and_retry_after():
    cfg = _settings(autoscale={"max_replicas": 1, "upscale_delay_s": 5})
    ex = FakeExecutor(fleet(workers=WORKERS), ControlPlane(cfg), seconds_per_token=0.05)
    ex.arrive(request(0))
    ex.advance(20.0)
    for i in range(1, 60):
        ex.arrive(request(i, at_s=20.0, prompt=3000, output=500))
    codes = set(ex.ledger.status_codes.values())
    assert codes == {429}
    rejected = [r for r in ex.results for a in r.actions if getattr(a, "status_code", 200) == 429]
    assert rejected


def test_unplaceable_cold_expert_gets_503():
    s = fleet(workers=(("w0", "l4", 4.0, 0.8),))
    ex = FakeExecutor(s, ControlPlane(_settings()))
    ex.arrive(request(1))
    assert ex.ledger.status_codes == {"q1": 503} and not ex.actions_of(StartReplica)


def test_wake_event_and_route_prediction_start_replicas():
    cfg = _settings(prewarm={"kind": "route-aware", "half_life_s": 60, "horizon_s": 60, "min_expected_requests": 1})
    ex = FakeExecutor(fleet(experts=("a", "b"), workers=WORKERS), ControlPlane(cfg))
    result = ex.step([WakeExpert(ExpertId("a"), Reason(RouteReasonCode.COLD_START_HIDDEN, "test"))])
    assert [a.expert_id for a in result.actions if isinstance(a, StartReplica)] == ["a"]
    preds = [RoutePredicted(RoutePrediction(0.0, {ExpertId("b"): 1.0})) for _ in range(3)]
    result = ex.step(preds)
    assert [a.expert_id for a in result.actions if isinstance(a, StartReplica)] == ["b"]


def test_hybrid_keepalive_announces_prewarm_times():
    cfg = _settings(keepalive={"kind": "hybrid-histogram", "min_samples": 5, "min_histogram_cv": 0})
    ex = FakeExecutor(fleet(workers=WORKERS), ControlPlane(cfg))
    t = 0.0
    for i in range(8):  # every ~10 minutes
        ex.advance(t)
        ex.arrive(request(i, at_s=t, prompt=50, output=50))
        ex.advance(t + 25)
        ex.step()
        t += 600.0
    assert ex.actions_of(PrewarmAt)
    # Pre-warmed replicas come up before the next request, so late requests are served warm.
    assert "q7" not in ex.ledger.cold_served


def test_migration_runs_inside_the_step():
    cfg = _settings(autoscale={"max_replicas": 2, "min_replicas": 2, "upscale_delay_s": 0},
                    balance={"kind": "prefix-affinity", "overload_factor": 100},
                    admission={"kind": "always"},
                    migration={"overload_wait_s": 0.5, "min_gain_s": 0.1})
    ex = FakeExecutor(fleet(workers=WORKERS), ControlPlane(cfg), seconds_per_token=0.01)
    ex.step()
    ex.advance(20.0)
    for i in range(40):  # all share one prefix: affinity piles them on one replica
        ex.arrive(request(i, at_s=20.0, prompt=1000, output=50, prefix="same"))
    assert ex.actions_of(MigrateRequest)
    _drain_everything(ex, 2000)
    _check_invariants(ex, max_replicas=2)


def test_route_helper_hides_cold_start():
    s = fleet(experts=("big", "small"), workers=WORKERS)
    ex = FakeExecutor(s, ControlPlane(_settings()))
    ex.arrive(request(0, expert="small"))
    ex.advance(20.0)
    d = ex.plane.route(ex.snapshot, [ExpertCandidate(ExpertId("big"), 0.8, 1.0),
                                      ExpertCandidate(ExpertId("small"), 0.78, 0.1)])
    assert d.expert_id == "small" and d.wake_expert_ids == ("big",)


EXPERTS = ("a", "b", "c")


@settings(max_examples=40, deadline=None)
@given(
    events=st.lists(
        st.tuples(st.floats(0, 60), st.sampled_from(EXPERTS), st.integers(1, 3000), st.integers(1, 500),
                  st.floats(0.1, 30), st.booleans()),
        max_size=40),
    keepalive=st.sampled_from(["fixed", "hybrid-histogram"]),
    admission=st.sampled_from(["slo", "always"]),
    balance=st.sampled_from(["least-outstanding-tokens", "power-of-two", "prefix-affinity"]),
    placement=st.sampled_from(["first-fit", "cost-aware"]),
    memory=st.sampled_from([8.0, 12.0, 24.0]),
    seed=st.integers(0, 1000),
)
def test_no_request_is_lost_or_served_twice(events, keepalive, admission, balance, placement, memory, seed):
    cfg = _settings(
        keepalive={"kind": keepalive, "idle_timeout_s": 60, "fallback_keepalive_s": 60, "min_samples": 2},
        admission={"kind": admission, "cold_start_allowance_s": 30},
        balance={"kind": balance},
        placement={"kind": placement},
        autoscale={"max_replicas": 2, "upscale_delay_s": 3, "downscale_delay_s": 10},
    )
    workers = [("w0", "l4", memory, 0.8), ("w1", "cpu", 24.0, 0.1)]
    ests = [estimate(e, hw, memory_gb=10, cold_start_s=cs) for e in EXPERTS for hw, cs in (("l4", 5.0), ("cpu", 15.0))]
    ex = FakeExecutor(fleet(experts=EXPERTS, workers=workers, estimates=ests), ControlPlane(cfg),
                      seconds_per_token=0.002, seed=seed)
    t = 0.0
    for i, (dt, expert, prompt, output, slo, tick) in enumerate(events):
        t += dt
        ex.advance(t)
        if tick:
            ex.step()
        ex.arrive(request(i, expert=expert, at_s=t, prompt=prompt, output=output, slo=slo, prefix=str(i % 3)))
        _check_invariants(ex, max_replicas=2)
    _drain_everything(ex, t + 600)
    _check_invariants(ex, max_replicas=2)
    ledger = ex.ledger
    for rid in ledger.arrived:
        outcomes = ledger.finished[rid] + ledger.rejected[rid]
        assert outcomes == 1, f"{rid}: finished {ledger.finished[rid]}, rejected {ledger.rejected[rid]}"
        if ledger.rejected[rid]:
            assert ledger.status_codes[rid] in (429, 503) and not ledger.started[rid]
    assert not list(ex.snapshot.iter_requests())
    for result in ex.results:  # every decision says why
        for action in result.actions:
            assert action.reason.code.value and action.reason.detail
    assert all(a.num_in_flight == 0 for a in ex.snapshot.activity.values())
    # Every replica ever started reached a legal end or is still legitimately live.
    for replica in ex.snapshot.replicas.values():
        assert replica.state in (ReplicaState.STOPPED, ReplicaState.WARM, ReplicaState.DRAINING, ReplicaState.STARTING)


def test_a_waiting_request_evicts_an_idle_replica_of_another_expert():
    s = fleet(experts=("a", "b"), workers=(("w0", "l4", 24.0, 0.8),),
              estimates=[estimate("a", "l4", memory_gb=16), estimate("b", "l4", memory_gb=16)])
    ex = FakeExecutor(s, ControlPlane(_settings()))
    ex.arrive(request(0, expert="a"))
    ex.advance(30.0)
    assert ex.ledger.finished["q0"] == 1 and ex.snapshot.warm_replicas_of("a")
    result = ex.arrive(request(1, expert="b", at_s=30.0))
    kinds = [(type(a).__name__, getattr(a, "replica_id", "")) for a in result.actions]
    assert kinds[:3] == [("DrainReplica", "a#1"), ("StopReplica", "a#1"), ("StartReplica", "b#2")]
    assert result.actions[0].reason.code.value == "evicted-for-memory"
    assert ex.ledger.assigned["q1"] == 1


def test_speculative_starts_never_evict():
    s = fleet(experts=("a", "b"), workers=(("w0", "l4", 24.0, 0.8),),
              estimates=[estimate("a", "l4", memory_gb=16), estimate("b", "l4", memory_gb=16)])
    ex = FakeExecutor(s, ControlPlane(_settings()))
    ex.arrive(request(0, expert="a"))
    ex.advance(30.0)
    result = ex.step([WakeExpert(ExpertId("b"), Reason(RouteReasonCode.COLD_START_HIDDEN, "test"))])
    assert result.actions == ()


def test_a_scale_up_without_waiting_requests_does_not_evict():
    # "a" is busy on the only other worker; "b" sits idle between requests on w1. Scaling "a" up must not push
    # "b" out (it would pay a cold start for b's next request to add capacity a can live without).
    s = fleet(experts=("a", "b"), workers=(("w0", "l4", 24.0, 0.8), ("w1", "l4", 24.0, 0.8)),
              estimates=[estimate("a", "l4", memory_gb=16, kv=1_000), estimate("b", "l4", memory_gb=16)])
    ex = FakeExecutor(s, ControlPlane(_settings(autoscale={"max_replicas": 3, "upscale_delay_s": 0})))
    ex.arrive(request(0, expert="b"))
    ex.advance(25.0)
    for i in range(1, 6):
        ex.arrive(request(i, expert="a", at_s=25.0, prompt=900, output=500))
    result = ex.step()
    assert ex.snapshot.warm_replicas_of("b")
    assert not [a for a in result.actions if isinstance(a, StopReplica)]


@settings(max_examples=150, deadline=None)
@given(
    memory=st.sampled_from([4.0, 12.0, 24.0]),
    other_warm=st.booleans(),
    admission=st.sampled_from(["slo", "always"]),
    allowance=st.floats(0, 60),
    slo=st.floats(0.05, 60),
    prompt=st.integers(1, 8000),
    evict=st.booleans(),
)
def test_a_request_for_a_cold_expert_gets_a_starting_replica_or_a_clear_rejection(
        memory, other_warm, admission, allowance, slo, prompt, evict):
    cfg = _settings(admission={"kind": admission, "cold_start_allowance_s": allowance}, evict_idle_for_memory=evict)
    s = fleet(experts=("a", "b"), workers=(("w0", "l4", memory, 0.8),))
    ex = FakeExecutor(s, ControlPlane(cfg))
    if other_warm and memory >= 10:
        ex.arrive(request(0, expert="b"))
        ex.advance(100.0)
    result = ex.arrive(request(1, expert="a", at_s=ex.snapshot.now_s, prompt=prompt, slo=slo))
    assigned = [a for a in result.actions if getattr(a, "request", None) is not None and a.request.request_id == "q1"]
    assert len(assigned) == 1
    outcome = assigned[0]
    if type(outcome).__name__ == "AssignRequest":
        started = {a.replica_id for a in result.actions if isinstance(a, StartReplica)}
        assert outcome.replica_id in started and outcome.is_cold_start
    else:
        assert outcome.status_code in (429, 503) and outcome.retry_after_s >= 1 and outcome.reason.detail


@settings(max_examples=60, deadline=None)
@given(timeout_s=st.floats(30, 900), ticks=st.lists(st.floats(1, 400), min_size=1, max_size=12))
def test_scale_to_zero_after_the_idle_window_and_not_before(timeout_s, ticks):
    cfg = _settings(keepalive={"kind": "fixed", "idle_timeout_s": timeout_s})
    ex = FakeExecutor(fleet(workers=WORKERS), ControlPlane(cfg))
    ex.arrive(request(1, prompt=100, output=100))
    ex.advance(30.0)
    idle_since = ex.snapshot.activity_of("a").idle_since_at
    assert ex.ledger.finished["q1"] == 1
    t = 30.0
    for dt in ticks:
        t += dt
        ex.advance(t)
        result = ex.step()
        drained = [a for a in result.actions if isinstance(a, DrainReplica)]
        if drained:
            assert t >= idle_since + timeout_s
        elif t >= idle_since + timeout_s:
            assert not ex.snapshot.accepting_replicas_of("a")  # drained at the first step past the window


def test_an_arrival_also_parked_in_unplaced_is_handled_once():
    from switchboard.fleet import ops
    from switchboard.policies.control import RequestArrived

    ex = FakeExecutor(fleet(workers=WORKERS), ControlPlane(_settings()))
    r = request(1)
    ex.snapshot = ops.enqueue(ops.record_arrival(ex.snapshot, r.expert_id), r, None)
    result = ex.step([RequestArrived(r)])
    assert sum(1 for a in result.actions if getattr(a, "request", None) == r) == 1
    assert not ex.snapshot.unplaced


def test_fast_path_agrees_with_the_step():
    from switchboard.policies.actions import AssignRequest, RejectRequest

    plane = ControlPlane(_settings(autoscale={"max_replicas": 1}))
    ex = FakeExecutor(fleet(workers=WORKERS), plane)
    cold = plane.admit_fast(ex.snapshot, request(1), ex.rng)
    assert cold.needs_step and cold.actions == ()  # waking a replica is the step's job
    ex.arrive(request(1))
    ex.advance(30.0)
    warm = plane.admit_fast(ex.snapshot, request(2, at_s=30.0), ex.rng)
    assert not warm.needs_step and isinstance(warm.actions[0], AssignRequest)
    assert not warm.actions[0].is_cold_start
    for i in range(3, 60):  # saturate the only replica
        ex.arrive(request(i, at_s=30.0, prompt=4000, output=2000))
    busy = plane.admit_fast(ex.snapshot, request(99, at_s=30.0, prompt=4000), ex.rng)
    assert not busy.needs_step and isinstance(busy.actions[0], RejectRequest) and busy.actions[0].status_code == 429


def test_requests_of_a_replica_that_fails_to_start_are_readmitted_not_lost():
    from switchboard.fleet import ops

    ex = FakeExecutor(fleet(workers=WORKERS), ControlPlane(_settings()))
    first = ex.arrive(request(1, slo=2.0))
    ex.arrive(request(2, slo=2.0))
    replica_id = next(a.replica_id for a in first.actions if isinstance(a, StartReplica))
    ex.advance(5.0)
    ex.snapshot = ops.transition(ex.snapshot, replica_id, ReplicaState.STOPPED)  # the engine crashed
    assert [r.request_id for r in ex.snapshot.unplaced] == ["q1", "q2"]
    result = ex.step()
    restarted = [a for a in result.actions if isinstance(a, StartReplica)]
    assert len(restarted) == 1 and restarted[0].replica_id != replica_id
    _drain_everything(ex, 1000.0)
    assert ex.ledger.finished["q1"] + ex.ledger.rejected["q1"] == 1
    assert ex.ledger.finished["q2"] + ex.ledger.rejected["q2"] == 1
    assert ex.ledger.assigned["q1"] == 2  # once per replica it waited on; still served once


def test_an_expert_pinned_by_min_replicas_starts_and_never_scales_to_zero():
    cfg = _settings(autoscale={"min_replicas_by_expert": {"a": 1}, "upscale_delay_s": 0})
    ex = FakeExecutor(fleet(experts=("a", "b"), workers=WORKERS), ControlPlane(cfg))
    first = ex.step()
    assert [a.expert_id for a in first.actions if isinstance(a, StartReplica)] == ["a"]
    _drain_everything(ex, 5000.0)
    assert ex.snapshot.warm_replicas_of("a") and not ex.snapshot.replicas_of("b")
    assert not ex.actions_of(DrainReplica)


def test_min_replicas_by_expert_is_validated():
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="min_replicas_by_expert"):
        _settings(autoscale={"min_replicas_by_expert": {"a": 9}, "max_replicas": 2})


def test_plan_start_reserves_an_id_and_locate_follows_a_request():
    from switchboard.fleet import Whereabouts
    from switchboard.policies.actions import apply_action
    from switchboard.policies.control import ControlState

    plane = ControlPlane(_settings())
    s = fleet(workers=WORKERS)
    (start,), state = plane.plan_start(s, ControlState(), ExpertId("a"), Reason(RouteReasonCode.BEST_SCORE, "test"))
    assert isinstance(start, StartReplica) and state.num_replicas_created == 1
    s = apply_action(s, start)
    (again,), _ = plane.plan_start(s, state, ExpertId("a"), Reason(RouteReasonCode.BEST_SCORE, "test"))
    assert again.replica_id != start.replica_id
    ex = FakeExecutor(s, plane)
    ex.state = state
    assert ex.snapshot.locate("q1").whereabouts is Whereabouts.ABSENT
    ex.arrive(request(1))
    where = ex.snapshot.locate("q1")
    assert where.whereabouts is Whereabouts.QUEUED and where.replica_id == start.replica_id


# ---- re-place a start

def _two_kinds_fleet():
    """One cheap slow worker (l4) and one pricier fast one (h100) for expert "a"."""
    return fleet(workers=(("slow", "l4", 24.0, 1.0), ("fast", "h100", 24.0, 2.0)),
                 estimates=[estimate("a", "l4", memory_gb=16, cold_start_s=60, prefill=600.0),
                            estimate("a", "h100", memory_gb=16, cold_start_s=60, prefill=20_000.0)])


def _woken_then_preferred(cfg: ControlSettings, num_predictions: int) -> tuple[FakeExecutor, list]:
    """Expert "a" woken with no load known (placed on the cheap kind), then preferred by the router
    `num_predictions` times over 20 s while its replica is still starting; returns the actions of those steps."""
    ex = FakeExecutor(_two_kinds_fleet(), ControlPlane(cfg))
    first = ex.step([WakeExpert(ExpertId("a"), Reason(RouteReasonCode.COLD_START_HIDDEN, "test"))])
    assert [(a.worker_id, a.replica_id) for a in first.actions if isinstance(a, StartReplica)] == [("slow", "a#1")]
    actions = []
    for k in range(num_predictions):
        t = 20.0 * (k + 1) / num_predictions
        ex.advance(t)
        actions += ex.step([RoutePredicted(RoutePrediction(t, {ExpertId("a"): 1.0}))]).actions
    return ex, actions


def test_a_start_placed_for_no_load_moves_to_the_faster_kind_once_the_router_shows_its_load():
    ex, actions = _woken_then_preferred(_settings(), 40)  # ~0.3 requests/s routed: more than the l4 takes
    starts = [(a.worker_id, a.replica_id) for a in actions if isinstance(a, StartReplica)]
    stops = [a for a in actions if isinstance(a, StopReplica)]
    assert starts == [("fast", "a#2")]
    assert [s.replica_id for s in stops] == ["a#1"] and stops[0].reason.code.value == "replaced-start"
    assert [r.worker_id for r in ex.snapshot.accepting_replicas_of(ExpertId("a"))] == ["fast"]
    _check_invariants(ex)


def test_re_placing_starts_can_be_switched_off_and_needs_load_beyond_the_slow_replica():
    _, off = _woken_then_preferred(_settings(replace_starts=False), 40)
    _, light = _woken_then_preferred(_settings(), 2)  # a light load the cheap replica carries alone
    for actions in (off, light):
        assert not [a for a in actions if isinstance(a, (StartReplica, StopReplica))]


def test_a_start_with_a_request_waiting_on_it_is_not_re_placed():
    ex, _ = _woken_then_preferred(_settings(), 1)
    arrival = ex.arrive(request(0, at_s=20.0, slo=60.0))  # queues on the starting cheap replica
    result = ex.step([RoutePredicted(RoutePrediction(20.0, {ExpertId("a"): 1.0})) for _ in range(60)])
    assert not [a for a in arrival.actions + result.actions if isinstance(a, (StartReplica, StopReplica))]
    assert [r.replica_id for r in ex.snapshot.accepting_replicas_of(ExpertId("a"))] == ["a#1"]
    ex.advance(200.0)
    assert ex.ledger.finished["q0"] == 1


# ---- re-place a warm replica

def _warm_on_the_pricey_kind(cfg: ControlSettings, num_requests: int = 5, replaced_at=()) -> tuple[FakeExecutor, list]:
    """Expert "a" served by a warm replica on the h100 (placed there while the l4 was taken, say) with the l4
    free now, and a light load: a request every 80 s. Returns the executor and every action of the run."""
    from policy_builders import with_replica
    from switchboard.policies.control import ControlState

    ex = FakeExecutor(with_replica(_two_kinds_fleet(), "a#1", worker="fast"), ControlPlane(cfg))
    ex.state = ControlState(num_replicas_created=1, replaced_at=replaced_at)
    actions = []
    for k in range(num_requests):
        ex.advance(80.0 * (k + 1))
        actions += ex.arrive(request(k, at_s=80.0 * (k + 1), prompt=100, output=20, slo=60.0)).actions
        actions += ex.step().actions
    ex.advance(80.0 * num_requests + 120)
    actions += ex.step().actions
    return ex, actions


LONG_KEEPALIVE = {"kind": "fixed", "idle_timeout_s": 900}


def test_a_warm_replica_moves_to_a_cheaper_kind_with_room_and_the_old_one_drains_once_the_new_is_warm():
    ex, actions = _warm_on_the_pricey_kind(_settings(keepalive=LONG_KEEPALIVE))
    starts = [a for a in actions if isinstance(a, StartReplica)]
    drains = [a for a in actions if isinstance(a, DrainReplica)]
    assert [(a.worker_id, a.reason.code.value) for a in starts] == [("slow", "replaced-warm")]
    assert [(d.replica_id, d.reason.code.value) for d in drains] == [("a#1", "replaced-warm")]
    assert [r.worker_id for r in ex.snapshot.accepting_replicas_of(ExpertId("a"))] == ["slow"]
    assert all(n == 1 for n in ex.ledger.finished.values()) and len(ex.ledger.finished) == 5
    assert [e for e, _ in ex.state.replaced_at] == ["a"]
    _check_invariants(ex)


def test_a_warm_replica_is_not_moved_early_without_demand_within_the_cooldown_or_when_switched_off():
    for cfg, num_requests, replaced_at in (
        (_settings(keepalive=LONG_KEEPALIVE, replace_warm=False), 5, ()),
        (_settings(keepalive=LONG_KEEPALIVE), 1, ()),  # one request: no demand known
        (_settings(keepalive=LONG_KEEPALIVE, replace_warm_after_s=3600), 5, ()),
        (_settings(keepalive=LONG_KEEPALIVE), 5, ((ExpertId("a"), 0.0),)),  # moved at t = 0: cooldown 1800 s
    ):
        ex, actions = _warm_on_the_pricey_kind(cfg, num_requests, replaced_at)
        assert not [a for a in actions if isinstance(a, (StartReplica, DrainReplica))], (cfg, replaced_at)
        assert [r.replica_id for r in ex.snapshot.accepting_replicas_of(ExpertId("a"))] == ["a#1"]


@settings(max_examples=300, deadline=None)
@given(interval_s=st.sampled_from([0.1, 0.3, 1.0, 1.02, 2.5, 5.0]), k=st.integers(0, 20_000),
       offset=st.sampled_from([0.0, 1e-9, 0.5]))
def test_the_next_periodic_step_is_always_later_and_on_the_grid(interval_s, k, offset):
    """On a grid point the division may round under it (1.02 s: 127 × 1.02 / 1.02 < 127), and the step was
    scheduled at its own time again: the simulator looped forever at a 1.02 s step."""
    from switchboard.policies.loop import ControlLoop

    loop = ControlLoop(ControlSettings(), step_interval_s=interval_s)
    now_s = k * interval_s + offset * interval_s
    at_s = loop.next_periodic_step_at(now_s)
    assert now_s < at_s <= now_s + interval_s * (1 + 1e-9)
    assert math.isclose(at_s / interval_s, round(at_s / interval_s), abs_tol=1e-6)
