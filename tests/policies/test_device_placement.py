"""Devices as placement resources: a worker that declares devices gives each replica whole free ones (its
estimate's tensor-parallel size), never one held by another replica; an asleep replica's devices go to its own
wake, or to another start only through an `EvictAsleep` in the outcome. Workers without devices: memory only."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switchboard.fleet import ops
from switchboard.fleet.sleep import AsleepReplicas, reflect_asleep
from switchboard.fleet.state import Worker
from switchboard.policies.actions import DrainReplica, EvictAsleep, StartReplica, StopReplica, apply_action
from switchboard.policies.autoscale import AutoscaleReasonCode, ScaleDecision
from switchboard.policies.base import Reason
from switchboard.policies.control import ControlPlane, ControlSettings, ControlState
from switchboard.policies.devices import DeviceReasonCode
from switchboard.policies.keepalive import KeepAliveReasonCode
from switchboard.policies.placement import FirstFitPlacement, PlacementKind, PlacementSettings, PlacementStatus, make_placement
from switchboard.policies.plan import Plan
from switchboard.policies.predict import wake_option
from switchboard.types import ExpertId, ReplicaId, ReplicaState, WorkerId

from .policy_builders import H100, estimate, fleet, request, with_replica

A, B, WIDE = ExpertId("a"), ExpertId("b"), ExpertId("wide")
POLICIES = [PlacementKind.FIRST_FIT, PlacementKind.COST_AWARE]


def _with_devices(s, **num_devices):
    return s.evolve(workers={w: dataclasses.replace(worker, num_devices=num_devices.get(w, 0))
                             for w, worker in s.workers.items()})


def _box(*, devices=(2, 2)):
    """Two H100 boxes with plenty of memory: only their devices can run out. `a` and `b` take one device, `wide`
    two (tensor-parallel 2)."""
    s = fleet(experts=("a", "b", "wide"), workers=(("g0", H100, 640.0, 8.0), ("g1", H100, 640.0, 8.0)),
              estimates=[dataclasses.replace(estimate(e, H100, memory_gb=80.0 * n), num_devices=n)
                         for e, n in (("a", 1), ("b", 1), ("wide", 2))], ttft_slo_s=60.0)
    return _with_devices(s, g0=devices[0], g1=devices[1])


def _only(s, worker_id: str):
    """`s` with only worker `worker_id`."""
    return s.evolve(workers={w: x for w, x in s.workers.items() if w == worker_id})


def _asleep(s, *sleepers):
    """`s` with (replica, expert, worker, devices) asleep, as the executors put them (`reflect_asleep`)."""
    asleep = AsleepReplicas(asleep_keepalive_s=600.0)
    for replica_id, expert, worker, n in sleepers:
        asleep.put(replica_id, ExpertId(expert), worker, "h100", 0.5, now_s=s.now_s, num_devices=n)
    return reflect_asleep(s, asleep)


def test_a_two_device_replica_is_never_placed_on_a_worker_with_one_device_free():
    s = with_replica(_box(), "a#1", "a", "g0")  # g0: 1 of 2 free
    for kind in POLICIES:
        placed = make_placement(PlacementSettings(kind=kind)).place(s, WIDE)
        assert placed.is_placed and placed.candidate.worker.worker_id == "g1" and placed.evicts == ()
    s = with_replica(s, "b#1", "b", "g1")  # both boxes: 1 of 2 free
    for kind in POLICIES:
        refused = make_placement(PlacementSettings(kind=kind)).place(s, WIDE)
        assert refused.status is PlacementStatus.NO_DEVICES and "free devices" in refused.reason.detail
    assert not wake_option(s, WIDE).is_placeable and wake_option(s, A).is_placeable
    try:  # the fleet model refuses the double-booking itself, like memory over-commit
        ops.add_replica(s, ReplicaId("wide#1"), s.estimate(WIDE, H100), WorkerId("g0"))
        raise AssertionError("double-booked a device")
    except ValueError as exc:
        assert "1 of 2 devices free" in str(exc)


def test_workers_without_declared_devices_are_checked_for_memory_only():
    s = with_replica(_box(devices=(0, 0)), "a#1", "a", "g0")
    s = with_replica(with_replica(s, "a#2", "a", "g0"), "b#1", "b", "g0")  # 3 "devices" used: no devices declared
    assert s.devices_free(WorkerId("g0")) == 0 and s.replicas[ReplicaId("a#1")].num_devices == 0
    assert make_placement(PlacementSettings()).place(s, WIDE).candidate.worker.worker_id in ("g0", "g1")


def test_an_asleep_replica_keeps_its_devices_for_its_wake_and_is_evicted_only_by_saying_so():
    s = _asleep(with_replica(_box(), "a#1", "a", "g0"), ("b#0", "b", "g0", 1))  # g0: a warm, b asleep
    assert s.devices_free(WorkerId("g0")) == 0
    # b's start on g0 is its wake, on the device it kept: nothing evicted, nothing booked twice.
    s_g0 = _only(s, "g0")
    woken = make_placement(PlacementSettings()).place(s_g0, B)
    assert woken.candidate.worker.worker_id == "g0" and woken.evicts == () and woken.candidate.sleep_rank == 0
    after = apply_action(s_g0, StartReplica(ReplicaId("b#2"), B, WorkerId("g0"), H100, 0.5, Reason(PlacementStatus.PLACED, "")))
    assert after.workers[WorkerId("g0")].asleep == () and after.devices_free(WorkerId("g0")) == 0
    # `wide` needs both of g1's: free there, so no sleeper is disturbed; with g1 gone it must evict b.
    assert make_placement(PlacementSettings()).place(s, WIDE).candidate.worker.worker_id == "g1"
    only_g0 = _only(_asleep(_box(), ("b#0", "b", "g0", 1)), "g0")  # g0: one device free, one kept by b
    for kind in POLICIES:
        placed = make_placement(PlacementSettings(kind=kind)).place(only_g0, WIDE)
        assert placed.evicts == (ReplicaId("b#0"),) and "evicting asleep b#0" in placed.reason.detail


def test_first_fit_takes_free_devices_before_an_asleep_replicas():
    s = _asleep(_box(), ("b#0", "b", "g0", 2))  # g0's both devices kept by b asleep; g1 free
    placed = FirstFitPlacement(PlacementSettings(kind=PlacementKind.FIRST_FIT)).place(s, WIDE)
    assert placed.candidate.worker.worker_id == "g1" and placed.evicts == ()


def test_a_start_that_takes_a_sleepers_devices_evicts_it_first_in_the_same_plan():
    s = _only(_asleep(_box(devices=(2, 0)), ("b#0", "b", "g0", 1)), "g0")
    plane = ControlPlane(ControlSettings.model_validate({"placement": {"kind": "first-fit"}}))
    actions, _ = plane.plan_start(s, ControlState(), WIDE, Reason(PlacementStatus.PLACED, "test"))
    assert [type(a) for a in actions] == [EvictAsleep, StartReplica]
    assert actions[0].replica_id == "b#0" and actions[0].worker_id == "g0"
    for action in actions:
        s = apply_action(s, action)
    assert s.devices_free(WorkerId("g0")) == 0 and s.workers[WorkerId("g0")].asleep == ()
    try:  # without the eviction the start would double-book b's device: the model refuses it
        apply_action(_asleep(_box(devices=(2, 0)), ("b#0", "b", "g0", 1)), actions[1])
        raise AssertionError("double-booked an asleep replica's device")
    except ValueError as exc:
        assert "devices free" in str(exc)


def test_an_eviction_ends_the_evicted_experts_re_placement_cooldown():
    """`b` was moved (re-placed for cost) 10 s ago to g0, where it sleeps; `wide`'s waiting request takes its
    device. The cooldown keeps an expert's own demand from moving it back and forth; this eviction put `b` off
    the kind its move chose, so it ends `b`'s cooldown and `b` may move back as soon as it is cheaper. `a`'s,
    untouched, stays. (On the conversation trace the 70B otherwise stayed awake on the A100s from 601 to 2,620 s.)"""
    s = _only(_asleep(_box(devices=(2, 0)), ("b#0", "b", "g0", 1)), "g0")
    s = ops.enqueue(s.evolve(now_s=100.0), request("w0", expert="wide", slo=60.0), None)
    plane = ControlPlane(ControlSettings.model_validate({"placement": {"kind": "first-fit"}}))
    result = plane.step(s, ControlState(replaced_at=((A, 90.0), (B, 90.0))))
    assert [a.replica_id for a in result.actions if isinstance(a, EvictAsleep)] == ["b#0"]
    assert result.state.replaced_at == ((A, 90.0),)
    kept = plane.step(_only(_asleep(_box(devices=(2, 0)), ("b#0", "b", "g0", 1)), "g0"),
                      ControlState(replaced_at=((A, 90.0), (B, 90.0))))  # nothing evicted: both cooldowns stay
    assert kept.state.replaced_at == ((A, 90.0), (B, 90.0))


def _burst_step(s, num_requests: int, kind: str = "cost-aware"):
    """One control step over `num_requests` big requests for every expert at once: autoscaling (no upscale delay)
    adds replicas of each as far as the devices allow, all planned in the same step."""
    for i in range(num_requests):
        for e in ("a", "b", "wide"):
            s = ops.enqueue(s, request(f"{e}{i}", expert=e, slo=60.0, prompt=20_000, output=5_000), None)
    plane = ControlPlane(ControlSettings.model_validate(
        {"placement": {"kind": kind}, "autoscale": {"max_replicas": 8, "upscale_delay_s": 0}, "prewarm": {"kind": "none"}}))
    return plane.step(s, ControlState())  # `Plan.do` applies every action: a double-booking would raise


def test_a_scale_up_burst_fills_the_devices_and_stops_there():
    result = _burst_step(_asleep(_box(devices=(4, 4)), ("a#s0", "a", "g1", 1), ("wide#s1", "wide", "g1", 2)), 12)
    starts = [a.expert_id for a in result.actions if isinstance(a, StartReplica)]
    assert starts.count(A) >= 3  # a scale-up burst, not one start per expert
    held = sum(r.num_devices for r in result.snapshot.replicas.values() if r.is_live)
    assert held == 8 and all(w.asleep == () for w in result.snapshot.workers.values())  # both sleepers woken


@settings(max_examples=60, deadline=None)
@given(num_requests=st.integers(1, 12), devices=st.tuples(st.integers(0, 4), st.integers(1, 4)),
       sleepers=st.lists(st.sampled_from(["a", "b", "wide"]), max_size=3),
       kind=st.sampled_from(["first-fit", "cost-aware"]))
def test_a_scale_up_burst_never_double_books_a_device(num_requests, devices, sleepers, kind):
    """Many big requests at once for every expert, in one control step: every start lands on free devices (or its
    own sleeper's, or an evicted one's), so the plan applies without the model refusing any, and no worker ever
    has more devices held than it declares."""
    s = _box(devices=devices)
    asleep = [(f"{e}#s{i}", e, "g1", 2 if e == "wide" else 1) for i, e in enumerate(sleepers)]
    if sum(n for *_, n in asleep) <= devices[1]:
        s = _asleep(s, *asleep)
    result = _burst_step(s, num_requests, kind)
    after = result.snapshot
    for worker_id, worker in after.workers.items():
        live = sum(r.num_devices for r in after.replicas.values() if r.worker_id == worker_id and r.is_live)
        assert live + sum(h.num_devices for h in worker.asleep) <= worker.num_devices or not worker.num_devices
    evicted = {a.replica_id for a in result.actions if isinstance(a, EvictAsleep)}
    kept = {h.replica_id for w in after.workers.values() for h in w.asleep}
    assert not evicted & kept
    starts = [a for a in result.actions if isinstance(a, StartReplica)]
    assert starts and all(after.replicas[a.replica_id].state is ReplicaState.STARTING for a in starts)


@pytest.mark.parametrize("tier, drain_code", [
    (0.0, KeepAliveReasonCode.SLEEP),  # put to sleep at the end of the step: its devices would be evictable then
    (None, KeepAliveReasonCode.SLEEP),  # no tier: stopped at the end of the step
    (0.0, KeepAliveReasonCode.WINDOW_EXPIRED),  # stopping, not sleeping
])
def test_a_scale_up_takes_the_room_of_a_replica_drained_with_no_work_left_in_the_same_step(tier, drain_code):
    # g0 is the cheaper H100 box, but b's replica holds its only device, drained (idle) in this very step; g1 has
    # room. The drained replica is as good as stopped or asleep (`devices.soon_free`): the scale-up goes to g0,
    # stopping it first with a code that keeps it from sleeping. Before, it went to g1 (or, with the tier, waited
    # a step: `_waits_for_sleepers`).
    s = _box(devices=(1, 1))
    g1 = dataclasses.replace(s.workers[WorkerId("g1")], usd_per_hour=16.0)
    s = s.evolve(workers={**s.workers, WorkerId("g1"): g1})
    s = with_replica(s, "b#0", expert="b", worker="g0")
    plane = ControlPlane(ControlSettings.model_validate(
        {"placement": {"kind": "cost-aware"}, "keepalive": {"sleep_after_s": tier}}))
    plan = Plan(s, 0)
    plan.do(DrainReplica(ReplicaId("b#0"), Reason(drain_code, "test")))
    plane._apply_scale(plan, ScaleDecision(A, 0, 1, Reason(AutoscaleReasonCode.SCALE_UP, "test")))
    stop, start = plan.actions[1:]
    assert isinstance(stop, StopReplica) and stop.replica_id == "b#0"
    assert stop.reason.code is DeviceReasonCode.EVICTED_DRAINING
    assert isinstance(start, StartReplica) and start.worker_id == "g0"
    assert plan.snapshot.devices_free(WorkerId("g0")) == 0  # b's device went to a's replica: not double-booked
    # The executors' side: a replica marked to sleep is stopped, not put to sleep, by that stop.
    asleep = AsleepReplicas(asleep_keepalive_s=600.0)
    asleep.note_drain("b#0", drain_code)
    assert not asleep.should_sleep("b#0", stop.reason.code)


def test_a_replica_draining_with_work_left_or_of_the_same_expert_is_not_soon_free():
    s = _only(with_replica(_box(devices=(1, 1)), "b#0", expert="b", worker="g0"), "g0")
    busy = ops.enqueue(s, request(1, expert="b"), ReplicaId("b#0"))
    for snapshot, expert, fits in ((s, A, True), (busy, A, False), (s, B, False)):
        plan = Plan(snapshot, 0)
        plan.do(DrainReplica(ReplicaId("b#0"), Reason(KeepAliveReasonCode.SLEEP, "test")))
        placed = make_placement(PlacementSettings()).place(plan.snapshot, expert)
        assert placed.is_placed is fits
        assert not fits or (placed.evicts == (ReplicaId("b#0"),) and "stopping drained b#0" in placed.reason.detail)


def test_a_move_for_cost_does_not_take_the_room_of_a_replica_just_drained():
    """`cheaper_than_warm` prices other kinds with `takes_soon_free=False`: a warm re-placement is never urgent,
    and stopping a replica keep-alive has just drained to sleep turns its expert's next request into a cold start
    (the code-like trace, 1.05 s step: five more rejections)."""
    from switchboard.policies.placement import candidates

    s = _only(with_replica(_box(devices=(1, 1)), "b#0", expert="b", worker="g0"), "g0")
    plan = Plan(s, 0)
    plan.do(DrainReplica(ReplicaId("b#0"), Reason(KeepAliveReasonCode.SLEEP, "test")))
    assert [c.evicts for c in candidates(plan.snapshot, A, PlacementSettings())] == [(ReplicaId("b#0"),)]
    assert candidates(plan.snapshot, A, PlacementSettings(), takes_soon_free=False) == []
