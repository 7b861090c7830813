"""The fleet model: legal life cycle only, counted transitions, no lost requests, no memory over-commit."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switchboard.fleet import (
    LEGAL_TRANSITIONS,
    ExpertActivity,
    ExpertSpec,
    IllegalTransition,
    QueuedRequest,
    ServingEstimate,
    Worker,
    is_legal,
)
from switchboard.fleet import ops
from switchboard.types import ExpertId, HardwareKind, ReplicaId, ReplicaState, RequestId, WorkerId

S = ReplicaState
E = ExpertId("e")
L4 = HardwareKind("l4")


def _estimate(memory_gb: float = 10.0) -> ServingEstimate:
    return ServingEstimate(E, L4, memory_gb, 20.0, 4000.0, 0.02, 0.05, 16, 50_000)


def _fleet(memory_gb: float = 24.0):
    return ops.empty_fleet(0.0, [Worker(WorkerId("w"), L4, memory_gb, 0.8)], [ExpertSpec(E, 7, 0.2)], [_estimate()])


def _request(i: int, at_s: float = 0.0) -> QueuedRequest:
    return QueuedRequest(RequestId(f"q{i}"), E, at_s, 100, 50)


def test_happy_path_is_timestamped_and_counted():
    s = ops.add_replica(_fleet(), ReplicaId("r"), _estimate(), WorkerId("w"))
    s = ops.transition(ops.at_time(s, 1.0), ReplicaId("r"), S.STARTING, cold_start_s=20.0)
    assert s.replicas["r"].expected_warm_at == 21.0
    s = ops.transition(ops.at_time(s, 21.0), ReplicaId("r"), S.WARM)
    s = ops.transition(ops.at_time(s, 80.0), ReplicaId("r"), S.DRAINING)
    s = ops.transition(ops.at_time(s, 81.0), ReplicaId("r"), S.STOPPED)
    r = s.replicas["r"]
    assert [(t.to_state, t.at_s) for t in r.transitions] == [
        (S.STARTING, 1.0), (S.WARM, 21.0), (S.DRAINING, 80.0), (S.STOPPED, 81.0)]
    assert s.num_cold_starts == 1 and r.num_cold_starts == 1
    assert sum(s.transition_counts.values()) == 4
    assert s.memory_used_gb(WorkerId("w")) == 0
    assert ops.prune_stopped(s).replicas == {}
    assert ops.prune_stopped(s).num_cold_starts == 1


def test_a_batchs_running_requests_are_counted_apart_and_never_more_than_the_running():
    import dataclasses

    s = ops.add_replica(_fleet(), ReplicaId("r"), _estimate(), WorkerId("w"))
    s = ops.transition(ops.transition(s, ReplicaId("r"), S.STARTING, cold_start_s=0.0), ReplicaId("r"), S.WARM)
    batch = dataclasses.replace(_request(1), is_background=True)
    for request in (batch, _request(2)):
        s = ops.start_request(ops.enqueue(s, request, ReplicaId("r")), ReplicaId("r"), request.request_id)
    load = s.replicas["r"].load
    assert (load.num_running, load.num_running_background, load.num_running_background_tokens) == (2, 1, 150)
    s = ops.finish_request(s, ReplicaId("r"), 150, is_background=True)
    load = s.replicas["r"].load
    assert (load.num_running, load.num_running_background, load.num_running_tokens) == (1, 0, 150)
    # A feeder that does not tell them apart (the simulator's ends): the batch's count stays within the running.
    s = ops.start_request(ops.enqueue(s, batch, ReplicaId("r")), ReplicaId("r"), batch.request_id)
    assert s.replicas["r"].load.num_running_background == 1
    one_left = ops.ended(s.replicas["r"], [150], s.now_s).load
    assert (one_left.num_running, one_left.num_running_background) == (1, 1)
    none_left = ops.ended(s.replicas["r"], [150, 150], s.now_s).load
    assert (none_left.num_running, none_left.num_running_background, none_left.num_running_background_tokens) == (0, 0, 0)


def test_of_two_batch_requests_running_alone_the_one_left_is_still_counted_when_the_other_ends():
    import dataclasses

    s = ops.add_replica(_fleet(), ReplicaId("r"), _estimate(), WorkerId("w"))
    s = ops.transition(ops.transition(s, ReplicaId("r"), S.STARTING, cold_start_s=0.0), ReplicaId("r"), S.WARM)
    for i in (1, 2):
        request = dataclasses.replace(_request(i), is_background=True)
        s = ops.start_request(ops.enqueue(s, request, ReplicaId("r")), ReplicaId("r"), request.request_id)
    s = ops.finish_request(s, ReplicaId("r"), 150, is_background=True)
    load = s.replicas["r"].load
    assert (load.num_running, load.num_running_background, load.num_running_background_tokens) == (1, 1, 150)
    s = ops.finish_request(s, ReplicaId("r"), 150, is_background=True)
    load = s.replicas["r"].load
    assert (load.num_running, load.num_running_background, load.num_running_background_tokens) == (0, 0, 0)


@pytest.mark.parametrize("src,dst", [(a, b) for a in S for b in S if (a, b) not in LEGAL_TRANSITIONS])
def test_illegal_transitions_are_rejected(src, dst):
    assert not is_legal(src, dst)
    from switchboard.fleet.lifecycle import check_transition

    with pytest.raises(IllegalTransition, match=f"{src.value} → {dst.value}"):
        check_transition("r", src, dst, 0.0, 1.0)


def test_transition_back_in_time_is_rejected():
    s = ops.add_replica(ops.at_time(_fleet(), 5.0), ReplicaId("r"), _estimate(), WorkerId("w"))
    replica = s.replicas["r"]
    with pytest.raises(IllegalTransition, match="before"):
        replica.transition(S.STARTING, 4.0)


def test_time_never_goes_backwards():
    with pytest.raises(ValueError):
        ops.at_time(ops.at_time(_fleet(), 3.0), 2.0)


def test_add_replica_refuses_to_overcommit_memory():
    s = ops.add_replica(_fleet(24.0), ReplicaId("a"), _estimate(10.0), WorkerId("w"))
    s = ops.add_replica(s, ReplicaId("b"), _estimate(10.0), WorkerId("w"))
    with pytest.raises(ValueError, match="GB free"):
        ops.add_replica(s, ReplicaId("c"), _estimate(10.0), WorkerId("w"))


def test_stopping_a_replica_with_a_queue_keeps_the_requests():
    s = ops.add_replica(_fleet(), ReplicaId("r"), _estimate(), WorkerId("w"))
    s = ops.transition(s, ReplicaId("r"), S.STARTING)
    s = ops.enqueue(s, _request(1), ReplicaId("r"))
    s = ops.transition(s, ReplicaId("r"), S.STOPPED)
    assert [r.request_id for r in s.unplaced] == ["q1"]
    assert s.replicas["r"].load.queue == ()


def test_snapshot_mappings_are_read_only():
    s = _fleet()
    with pytest.raises(TypeError):
        s.replicas["x"] = None  # type: ignore[index]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(list(S)), st.floats(0, 10)), max_size=12))
def test_random_walks_only_take_legal_edges(steps):
    s = ops.add_replica(_fleet(), ReplicaId("r"), _estimate(), WorkerId("w"))
    now = 0.0
    num_ok = 0
    for to_state, dt in steps:
        now += dt
        s = ops.at_time(s, now)
        before = s.replicas["r"].state
        try:
            s = ops.transition(s, ReplicaId("r"), to_state)
            assert is_legal(before, to_state)
            num_ok += 1
        except IllegalTransition:
            assert not is_legal(before, to_state)
            assert s.replicas["r"].state is before
    assert sum(s.transition_counts.values()) == num_ok == len(s.replicas["r"].transitions)
    times = [t.at_s for t in s.replicas["r"].transitions]
    assert times == sorted(times)


def test_activity_demand_tracks_the_recent_rate_and_request_size():
    a = ExpertActivity(E)
    assert a.demand(0.0).requests_per_s == 0.0
    for k in range(600):  # 2 requests/s of 1000 prompt + 200 output tokens for 5 minutes
        a = a.on_arrival(k * 0.5, 1000, 200)
    demand = a.demand(300.0)
    assert demand.requests_per_s == pytest.approx(2.0, rel=0.02)
    assert (demand.mean_prompt_tokens, demand.mean_output_tokens) == (pytest.approx(1000), pytest.approx(200))
    # Half-life 60 s: a minute of silence halves the rate.
    assert a.demand(359.5).requests_per_s == pytest.approx(1.0, rel=0.02)


def test_a_new_experts_demand_is_not_understated():
    a = ExpertActivity(E)
    for k in range(20):  # 1 request/s for 20 s, far less than the 87 s time constant
        a = a.on_arrival(float(k))
    assert a.demand(20.0).requests_per_s == pytest.approx(1.0, rel=0.1)
    assert a.demand(20.0).mean_prompt_tokens == 0.0  # no token counts given


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.floats(0, 100)), max_size=40))
def test_activity_records_idle_gaps_between_busy_periods(events):
    a = ExpertActivity(E)
    now, num_gaps = 0.0, 0
    for is_arrival, dt in events:
        now += dt
        if is_arrival:
            if a.is_idle and a.num_arrivals > 0:
                num_gaps += 1
            a = a.on_arrival(now)
        elif a.num_in_flight:
            a = a.on_finish(now)
    assert a.num_idle_gaps == num_gaps
    assert all(g >= 0 for g in a.recent_idle_gaps_s)
    assert a.gaps_after(0) == a.recent_idle_gaps_s[-min(num_gaps, len(a.recent_idle_gaps_s)):] if num_gaps else True
    assert a.gaps_after(a.num_idle_gaps) == ()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["add", "start", "warm", "stop", "enqueue", "tick"]), st.integers(0, 3)),
                max_size=30))
def test_carried_indexes_equal_fresh_ones(steps):
    """Indexes carried across updates must match those a fresh snapshot builds."""
    s = ops.empty_fleet(0.0, [Worker(WorkerId(f"w{i}"), L4, 24.0, 0.8) for i in range(2)], [ExpertSpec(E, 7, 0.2)],
                        [_estimate()])
    n = 0
    for kind, k in steps:
        rid = ReplicaId(f"r{k}")
        try:
            if kind == "add":
                s = ops.add_replica(s, rid, _estimate(), WorkerId(f"w{k % 2}"))
            elif kind in ("start", "warm", "stop"):
                s = ops.transition(s, rid, {"start": S.STARTING, "warm": S.WARM, "stop": S.STOPPED}[kind])
            elif kind == "enqueue":
                n += 1
                s = ops.enqueue(s, _request(n), rid)
            else:
                s = ops.at_time(s, s.now_s + 1)
        except (ValueError, KeyError, IllegalTransition):
            pass
        s.replicas_of(E), s.memory_used_gb(WorkerId("w0")), s.max_free_gb_by_hardware()  # build the indexes
        fresh = ops.FleetSnapshot(s.now_s, s.workers, s.experts, s.estimates, s.replicas, s.activity, s.unplaced,
                                  s.transition_counts)
        assert s.replicas_of(E) == fresh.replicas_of(E)
        assert [r.replica_id for r in s.accepting_replicas_of(E)] == sorted(
            r.replica_id for r in fresh.replicas.values() if r.is_accepting)
        assert [r.replica_id for r in s.warm_replicas_of(E)] == sorted(
            r.replica_id for r in fresh.replicas.values() if r.is_warm)
        for w in s.workers:
            assert s.memory_used_gb(w) == fresh.memory_used_gb(w)
        assert s.max_free_gb_by_hardware() == fresh.max_free_gb_by_hardware()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["enqueue", "start", "end", "tick"]), st.integers(0, 1), st.integers(1, 2)),
                max_size=25))
def test_changes_applied_together_equal_updates_one_by_one(events):
    """`apply_changes` of `enqueued` / `started` / `ended` / `finished` (each at its event's time) gives the
    snapshot that `enqueue` / `start_requests` / `end_requests` one by one and `at_time` give, indexes included."""
    s = ops.empty_fleet(0.0, [Worker(WorkerId(f"w{i}"), L4, 24.0, 0.8) for i in range(2)], [ExpertSpec(E, 7, 0.2)],
                        [_estimate()])
    for k in range(2):
        rid = ReplicaId(f"r{k}")
        s = ops.add_replica(s, rid, _estimate(), WorkerId(f"w{k}"))
        s = ops.transition(ops.transition(s, rid, S.STARTING), rid, S.WARM)
        for i in range(6):
            s = ops.record_arrival(s, E, 100, 50)
            s = ops.enqueue(s, _request(10 * k + i), rid)
    s.replicas_of(E)  # build the index, so that it is carried (patched), not rebuilt
    one_by_one, now_s = s, s.now_s
    replicas, activity = {}, {}
    for kind, k, n in events:
        rid = ReplicaId(f"r{k}")
        replica = replicas.get(rid) or s.replicas[rid]
        if kind == "tick":
            now_s += 0.5
            continue
        one_by_one = ops.at_time(one_by_one, now_s)
        if kind == "enqueue":
            request = _request(100 + len(replica.load.queue) + 10 * replica.load.num_running, now_s)
            one_by_one = ops.enqueue(one_by_one, request, rid)
            replicas[rid] = ops.enqueued(replica, request, now_s)
        elif kind == "start":
            ids = [q.request_id for q in replica.load.queue[:n]]
            if not ids:
                continue
            one_by_one = ops.start_requests(one_by_one, rid, ids)
            replicas[rid] = ops.started(replica, ids, now_s)
        else:
            num_tokens = [150] * min(n, replica.load.num_running)
            if not num_tokens:
                continue
            one_by_one = ops.end_requests(one_by_one, rid, num_tokens)
            replicas[rid] = ops.ended(replica, num_tokens, now_s)
            activity[E] = ops.finished(activity.get(E) or s.activity_of(E), num_tokens, now_s)
    one_by_one = ops.at_time(one_by_one, now_s)
    together = ops.apply_changes(s, now_s, replicas, activity)
    assert together.now_s == one_by_one.now_s
    assert together.replicas == one_by_one.replicas and together.activity == one_by_one.activity
    assert together.replicas_of(E) == one_by_one.replicas_of(E)
    assert together.warm_replicas_of(E) == ops.FleetSnapshot(
        now_s, s.workers, s.experts, s.estimates, together.replicas).warm_replicas_of(E)
    with pytest.raises(ValueError, match="backwards"):
        ops.apply_changes(together, now_s - 1.0, {}, {})


def test_evolve_replaces_fields_and_rejects_unknown_ones():
    from switchboard.frozen import evolve

    r = _request(1)
    assert evolve(r, num_prompt_tokens=7) == QueuedRequest(RequestId("q1"), E, 0.0, 7, 50)
    with pytest.raises(TypeError, match="no field"):
        evolve(r, prompt_tokens=7)
