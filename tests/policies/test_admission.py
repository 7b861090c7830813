"""Admission: admit, queue for a start, or reject early (429/503 with Retry-After) — never admit to nothing."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from policy_builders import fleet, request, with_replica
from switchboard.fleet import ReplicaLoad
from switchboard.policies.admission import AdmissionSettings, Verdict, make_admission
from switchboard.policies.ordering import QueueOrderSettings, make_queue_order
from switchboard.types import ReplicaState

SLO = make_admission(AdmissionSettings(kind="slo", cold_start_allowance_s=60))


def test_warm_and_idle_admits():
    d = SLO.admit(with_replica(fleet(), "r0"), request(1))
    assert d.verdict is Verdict.ADMIT and d.status_code == 200 and d.retry_after_s == 0 and not d.wake_expert


def test_cold_expert_queues_and_wakes_within_the_allowance():
    d = SLO.admit(fleet(), request(1))  # cold start 20 s ≤ 2 s SLO + 60 s allowance
    assert d.verdict is Verdict.QUEUE_FOR_START and d.wake_expert and d.expected_ttft_s >= 20


def test_starting_replica_queues_without_another_wake():
    d = SLO.admit(with_replica(fleet(), "r0", state=ReplicaState.STARTING), request(1))
    assert d.verdict is Verdict.QUEUE_FOR_START and not d.wake_expert


def test_cold_start_beyond_the_allowance_is_503_with_retry_after_and_a_wake():
    strict = make_admission(AdmissionSettings(kind="slo", cold_start_allowance_s=0))
    d = strict.admit(fleet(), request(1))
    assert d.verdict is Verdict.REJECT_UNAVAILABLE and d.status_code == 503
    assert d.retry_after_s == 20 and d.wake_expert


def test_overloaded_warm_replicas_reject_early_with_429():
    busy = ReplicaLoad(num_running=16, num_running_tokens=16 * 2000,
                       queue=tuple(request(100 + i, prompt=4000) for i in range(10)))
    d = SLO.admit(with_replica(fleet(), "r0", load=busy), request(1))
    assert d.verdict is Verdict.REJECT_OVERLOADED and d.status_code == 429 and d.retry_after_s >= 1


def test_no_room_anywhere_is_503_without_a_wake():
    d = SLO.admit(fleet(workers=(("w0", "l4", 4.0, 0.8),)), request(1))
    assert d.verdict is Verdict.REJECT_UNAVAILABLE and not d.wake_expert and d.retry_after_s == 30


def test_always_admits_what_it_can_place():
    always = make_admission(AdmissionSettings(kind="always"))
    busy = ReplicaLoad(num_running=16, num_running_tokens=10**6)
    assert always.admit(with_replica(fleet(), "r0", load=busy), request(1)).verdict is Verdict.ADMIT
    assert always.admit(fleet(), request(1)).verdict is Verdict.QUEUE_FOR_START


def test_external_experts_are_admitted_without_replicas():
    assert SLO.admit(fleet(external=("a",)), request(1)).verdict is Verdict.ADMIT


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from(["slo", "always"]),
    allowance=st.floats(0, 100),
    memory=st.floats(1, 30),
    state=st.sampled_from([None, ReplicaState.STARTING, ReplicaState.WARM]),
    queue_len=st.integers(0, 20),
    prompt=st.integers(1, 8000),
    slo=st.floats(0.01, 30),
)
def test_every_request_gets_a_replica_path_or_a_clear_rejection(kind, allowance, memory, state, queue_len, prompt, slo):
    s = fleet(workers=(("w0", "l4", 24.0, 0.8), ("w1", "l4", memory, 0.8)))
    if state is not None:
        load = ReplicaLoad(queue=tuple(request(100 + i, prompt=2000) for i in range(queue_len)))
        s = with_replica(s, "r0", state=state, load=load)
    d = make_admission(AdmissionSettings(kind=kind, cold_start_allowance_s=allowance)).admit(
        s, request(1, prompt=prompt, slo=slo))
    if d.verdict.is_admitted:
        assert s.accepting_replicas_of("a") or d.wake_expert  # never admitted to nothing
        assert d.retry_after_s == 0 and d.status_code == 200
    else:
        assert d.status_code in (429, 503) and d.retry_after_s >= 1 and d.reason.detail
        assert d.status_code == 429 or not s.warm_replicas_of("a")


def test_shortest_predicted_first_orders_by_prediction_with_aging():
    order = make_queue_order(QueueOrderSettings(kind="shortest-predicted-first", max_wait_s=10))
    q = (request(1, at_s=0, output=500), request(2, at_s=1, output=10), request(3, at_s=2, output=100))
    assert [r.request_id for r in order.order(q, now_s=5)] == ["q2", "q3", "q1"]
    assert order.next_request(q, now_s=10).request_id == "q1"  # waited 10 s: no longer overtaken
    fifo = make_queue_order(QueueOrderSettings(kind="fifo"))
    assert [r.request_id for r in fifo.order(q[::-1], now_s=5)] == ["q1", "q2", "q3"]


def test_every_order_starts_live_requests_before_a_batchs():
    import dataclasses

    background = (dataclasses.replace(request(1, at_s=0, output=10), is_background=True),
                  dataclasses.replace(request(2, at_s=1, output=10), is_background=True))
    live = (request(3, at_s=5, output=500), request(4, at_s=6, output=100))
    for kind in ("fifo", "shortest-predicted-first"):
        order = make_queue_order(QueueOrderSettings(kind=kind, max_wait_s=10))
        ordered = [r.request_id for r in order.order(background + live, now_s=100)]  # all waited past max_wait_s
        assert ordered == ["q3", "q4", "q1", "q2"]  # live first, each kind in arrival order (starving or FIFO)
        assert order.next_request(background + live, now_s=7).request_id == ("q3" if kind == "fifo" else "q4")
        assert order.next_request(background, now_s=7).request_id == "q1"  # alone, they run


def test_a_live_request_is_predicted_ahead_of_a_batchs_queued_requests():
    # A replica busy with a batch: its one sequence runs a batch request and ten more of the batch are queued.
    # A live request starts next (every queue order puts it first), so it is admitted and predicted to wait for
    # the running sequence only; another of the batch's would wait for the whole queue, and is refused.
    import dataclasses

    batch = tuple(dataclasses.replace(request(100 + i, prompt=4000), is_background=True) for i in range(10))
    busy = ReplicaLoad(num_running=16, num_running_tokens=16 * 200, queue=batch)
    snapshot = with_replica(fleet(), "r0", load=busy)
    live = SLO.admit(snapshot, request(1))
    late = SLO.admit(snapshot, dataclasses.replace(request(1), is_background=True))
    alone = SLO.admit(with_replica(fleet(), "r0", load=dataclasses.replace(busy, queue=())), request(1))
    assert live.verdict is Verdict.ADMIT and live.expected_ttft_s == alone.expected_ttft_s
    assert late.verdict is Verdict.REJECT_OVERLOADED and late.expected_ttft_s > live.expected_ttft_s + 1
    # Live requests queued ahead still count.
    ahead = dataclasses.replace(busy, queue=batch + tuple(request(200 + i, prompt=4000) for i in range(10)))
    assert SLO.admit(with_replica(fleet(), "r0", load=ahead), request(1)).verdict is Verdict.REJECT_OVERLOADED


def test_a_live_request_is_not_refused_for_a_batchs_running_requests():
    # Every sequence busy for seconds more: with live requests it is refused (a 429), with a batch's it is
    # admitted, predicted (honestly) to wait for them; a batch's request is refused either way.
    import dataclasses

    def running(num_background: int) -> ReplicaLoad:
        return ReplicaLoad(num_running=16, num_running_tokens=16 * 2000, num_running_background=num_background,
                           num_running_background_tokens=num_background * 2000)

    live_load = SLO.admit(with_replica(fleet(), "r0", load=running(0)), request(1))
    batch_load = SLO.admit(with_replica(fleet(), "r0", load=running(16)), request(1))
    assert live_load.verdict is Verdict.REJECT_OVERLOADED and live_load.expected_ttft_s > 2.0
    assert batch_load.verdict is Verdict.ADMIT and batch_load.expected_ttft_s == live_load.expected_ttft_s
    background = dataclasses.replace(request(1), is_background=True)
    assert SLO.admit(with_replica(fleet(), "r0", load=running(16)), background).verdict is Verdict.REJECT_OVERLOADED
    # Half of them live: the other half's slots are free for it once the batch's are not counted.
    assert SLO.admit(with_replica(fleet(), "r0", load=running(8)), request(1)).verdict is Verdict.ADMIT
    # Live requests queued ahead of it past its budget: refused for them, its target stretched by the batch's wait.
    queued = dataclasses.replace(running(16), queue=tuple(request(100 + i, prompt=4000) for i in range(10)))
    refused = SLO.admit(with_replica(fleet(), "r0", load=queued), request(1))
    assert refused.verdict is Verdict.REJECT_OVERLOADED and "batch's requests running" in refused.reason.detail


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 100), st.integers(1, 4000)), max_size=30), st.floats(0, 200))
def test_ordering_is_a_permutation(items, now):
    q = tuple(request(i, at_s=t, output=o) for i, (t, o) in enumerate(items))
    for kind in ("fifo", "shortest-predicted-first"):
        ordered = make_queue_order(QueueOrderSettings(kind=kind)).order(q, now)
        assert sorted(r.request_id for r in ordered) == sorted(r.request_id for r in q)


def _long_prompt(snapshot, replica_id, slo_s):
    """A prompt whose own prefill on the replica takes twice the SLO."""
    from switchboard.policies.predict import prefill_tokens_per_s

    return int(2 * slo_s * prefill_tokens_per_s(snapshot, snapshot.replicas[replica_id]))


def test_a_prompt_longer_than_the_slo_allows_is_served_on_an_idle_replica():
    # Its own prefill outlasts its SLO: no schedule meets it, so its floor is the target (it used to be
    # refused with a Retry-After, again on every retry, on an idle replica).
    idle = with_replica(fleet(), "r0")
    d = SLO.admit(idle, request(1, prompt=_long_prompt(idle, "r0", 2.0)))
    assert d.verdict is Verdict.ADMIT and d.expected_ttft_s > 2.0


def test_a_long_prompt_behind_other_work_is_refused_until_that_work_is_done():
    idle = with_replica(fleet(), "r0")
    prompt = _long_prompt(idle, "r0", 2.0)
    busy = ReplicaLoad(num_running=16, num_running_tokens=16 * 2000, queue=tuple(request(100 + i, prompt=4000) for i in range(10)))
    behind = with_replica(fleet(), "r0", load=busy)
    d = SLO.admit(behind, request(1, prompt=prompt))
    alone = SLO.admit(idle, request(1, prompt=prompt))
    assert d.verdict is Verdict.REJECT_OVERLOADED and "its own prefill" in d.reason.detail
    # Retry-After is about the wait ahead of it, not its own prefill beyond the SLO.
    assert d.retry_after_s <= d.expected_ttft_s - alone.expected_ttft_s + 1
