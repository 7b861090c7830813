"""Migration: only queued requests move, within one expert, each once; none is lost or duplicated."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from policy_builders import all_request_ids, fleet, request, with_replica
from switchboard.fleet import ReplicaLoad
from switchboard.policies.actions import MigrateRequest, apply_action
from switchboard.policies.migration import MigrationReasonCode, MigrationSettings, make_migration
from switchboard.types import ReplicaState

WORKERS = [(f"w{i}", "l4", 24.0, 0.8) for i in range(4)]
LLUMNIX = make_migration(MigrationSettings(kind="llumnix-lite", overload_wait_s=0.5, min_gain_s=0.1))


def _apply(s, moves):
    for m in moves:
        s = apply_action(s, MigrateRequest(m.request_id, m.from_replica_id, m.to_replica_id, m.reason))
    return s


def test_moves_queued_requests_from_an_overloaded_replica_to_an_idle_one():
    queue = tuple(request(i, prompt=2000) for i in range(8))
    s = with_replica(fleet(workers=WORKERS), "r0", load=ReplicaLoad(num_running=2, num_running_tokens=500, queue=queue))
    s = with_replica(s, "r1", worker="w1")
    moves = LLUMNIX.plan(s)
    assert moves and all(m.from_replica_id == "r0" and m.to_replica_id == "r1" for m in moves)
    assert moves[0].request_id == "q7"  # the tail gains most
    after = _apply(s, moves)
    assert all_request_ids(after) == all_request_ids(s)
    assert after.replicas["r0"].load.num_running == 2  # started work never moves


def test_rescues_requests_queued_on_a_starting_replica():
    queue = tuple(request(i, prompt=500) for i in range(3))
    s = with_replica(fleet(workers=WORKERS), "r0", state=ReplicaState.STARTING, load=ReplicaLoad(queue=queue))
    s = with_replica(s, "r1", worker="w1")
    moves = LLUMNIX.plan(s)
    assert len(moves) == 3 and moves[0].reason.code is MigrationReasonCode.ESCAPE_COLD_START


def test_none_never_moves_and_a_single_replica_has_nowhere_to_go():
    queue = tuple(request(i, prompt=4000) for i in range(8))
    s = with_replica(fleet(workers=WORKERS), "r0", load=ReplicaLoad(queue=queue))
    assert LLUMNIX.plan(s) == []
    s = with_replica(s, "r1", worker="w1")
    assert make_migration(MigrationSettings(kind="none")).plan(s) == []


@settings(max_examples=150, deadline=None)
@given(
    replicas=st.lists(
        st.tuples(st.sampled_from("ab"), st.sampled_from([ReplicaState.WARM, ReplicaState.STARTING,
                                                           ReplicaState.DRAINING]),
                  st.integers(0, 16), st.lists(st.integers(1, 6000), max_size=10)),
        min_size=1, max_size=4),
    max_moves=st.integers(0, 40),
)
def test_no_request_lost_or_duplicated_and_only_queued_ones_move(replicas, max_moves):
    s = fleet(experts=("a", "b"), workers=WORKERS)
    n = 0
    for i, (expert, state, running, prompts) in enumerate(replicas):
        queue = []
        for p in prompts:
            queue.append(request(n, expert=expert, prompt=p))
            n += 1
        s = with_replica(s, f"r{i}", expert=expert, worker=f"w{i}", state=state,
                         load=ReplicaLoad(num_running=running, num_running_tokens=running * 300, queue=tuple(queue)))
    policy = make_migration(MigrationSettings(overload_wait_s=0.1, min_gain_s=0.0, max_moves_per_step=max_moves))
    moves = policy.plan(s)
    assert len(moves) <= max_moves
    assert len({m.request_id for m in moves}) == len(moves)
    after = _apply(s, moves)
    assert all_request_ids(after) == all_request_ids(s)
    for rid, replica in s.replicas.items():
        assert after.replicas[rid].load.num_running == replica.load.num_running
        for q in after.replicas[rid].load.queue:
            assert q.expert_id == replica.expert_id
    for m in moves:
        assert after.replicas[m.to_replica_id].is_warm
