"""Load balancing: least outstanding tokens, seeded power-of-two, prefix affinity with overload fallback."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from policy_builders import fleet, request, with_replica
from switchboard.fleet import ReplicaLoad
from switchboard.fleet import ops
from switchboard.policies.balance import (
    BalanceReasonCode,
    BalanceSettings,
    NoReplica,
    Balanced,
    make_balance,
)
from switchboard.types import ReplicaState

WORKERS = [(f"w{i}", "l4", 24.0, 0.8) for i in range(4)]


def _three(loads=(0, 0, 0)):
    s = fleet(workers=WORKERS)
    for i, tokens in enumerate(loads):
        s = with_replica(s, f"r{i}", worker=f"w{i}",
                         load=ReplicaLoad(num_running=1 if tokens else 0, num_running_tokens=tokens))
    return s


def test_least_outstanding_tokens_picks_the_least_loaded():
    policy = make_balance(BalanceSettings(kind="least-outstanding-tokens"))
    outcome = policy.choose(_three((5000, 100, 3000)), request(1), random.Random(0))
    assert isinstance(outcome, Balanced) and outcome.replica_id == "r1"


def test_a_warm_replica_beats_an_idle_starting_one():
    policy = make_balance(BalanceSettings(kind="least-outstanding-tokens"))
    s = with_replica(fleet(workers=WORKERS), "r0", state=ReplicaState.STARTING)
    s = with_replica(s, "r1", worker="w1", load=ReplicaLoad(1, 2000))
    assert policy.choose(s, request(1), random.Random(0)).replica_id == "r1"


def test_no_replica_is_an_explicit_outcome():
    outcome = make_balance(BalanceSettings()).choose(fleet(), request(1), random.Random(0))
    assert isinstance(outcome, NoReplica) and outcome.reason.code is BalanceReasonCode.NO_REPLICA


def test_power_of_two_is_reproducible_with_a_seed_and_never_picks_the_worst_of_its_pair():
    policy = make_balance(BalanceSettings(kind="power-of-two"))
    s = _three((5000, 100, 3000))
    picks_a = [policy.choose(s, request(i), random.Random(7)).replica_id for i in range(20)]
    picks_b = [policy.choose(s, request(i), random.Random(7)).replica_id for i in range(20)]
    assert picks_a == picks_b
    rng = random.Random(1)
    assert all(policy.choose(s, request(i), rng).replica_id != "r0" for i in range(50))


def test_prefix_affinity_is_sticky_until_the_owner_is_overloaded():
    policy = make_balance(BalanceSettings(kind="prefix-affinity", overload_factor=1.0))
    s = _three()
    first = policy.choose(s, request(1, prefix="conv-42"), random.Random(0))
    assert first.reason.code is BalanceReasonCode.PREFIX_HIT
    for i in range(2, 10):
        assert policy.choose(s, request(i, prefix="conv-42"), random.Random(i)).replica_id == first.replica_id
    overloaded = ops.set_load(s, first.replica_id, ReplicaLoad(num_running=16, num_running_tokens=16_000))
    fallback = policy.choose(overloaded, request(11, prefix="conv-42"), random.Random(0))
    assert fallback.replica_id != first.replica_id
    assert fallback.reason.code is BalanceReasonCode.PREFIX_OWNER_OVERLOADED


def test_prefix_owner_survives_removal_of_another_replica():
    policy = make_balance(BalanceSettings(kind="prefix-affinity"))
    s = _three()
    owners = {k: policy.choose(s, request(0, prefix=k), random.Random(0)).replica_id for k in map(str, range(30))}
    gone = ops.transition(s, "r2", ReplicaState.STOPPED)
    for key, owner in owners.items():
        if owner != "r2":
            assert policy.choose(gone, request(0, prefix=key), random.Random(0)).replica_id == owner


@settings(max_examples=100, deadline=None)
@given(kind=st.sampled_from(["least-outstanding-tokens", "power-of-two", "prefix-affinity"]),
       loads=st.lists(st.integers(0, 100_000), min_size=1, max_size=4), prefix=st.text(max_size=4),
       seed=st.integers(0, 2**32))
def test_always_routes_to_an_accepting_replica_of_the_expert(kind, loads, prefix, seed):
    s = _three(tuple(loads))
    outcome = make_balance(BalanceSettings(kind=kind)).choose(s, request(1, prefix=prefix), random.Random(seed))
    assert isinstance(outcome, Balanced)
    assert s.replicas[outcome.replica_id].is_accepting and s.replicas[outcome.replica_id].expert_id == "a"
