"""Latency predictions shared by admission, migration and fleet-aware routing.

Deliberately simple and monotone (more work ahead ⇒ never a shorter prediction), from the `ServingEstimate`
of the replica's expert × hardware.
"""

from __future__ import annotations

import dataclasses

from switchboard.fleet.state import FleetSnapshot, Replica
from switchboard.types import ExpertId, Seconds, WorkerId
from switchboard.frozen import fast_init


def prefill_tokens_per_s(snapshot: FleetSnapshot, replica: Replica) -> float:
    return _terms(snapshot, replica)[1]


def _prefill_tokens_per_s(snapshot: FleetSnapshot, replica: Replica) -> float:
    estimate = snapshot.estimate(replica.expert_id, replica.hardware)
    # Without an estimate, decode throughput is a safe (pessimistic) stand-in for prefill speed.
    return estimate.prefill_tokens_per_s if estimate else replica.capacity.tokens_per_s


def _terms(snapshot: FleetSnapshot, replica: Replica) -> tuple:
    """(estimates they hold for, prefill tokens/s, prefill of the queued prompts, wait for a batch slot or None):
    the time-independent parts of `queueing_s`, memoized on the replica for the snapshot's `estimates`."""
    memo = replica.memo()
    terms = memo.get(_TERMS_KEY)
    if terms is None or terms[0] is not snapshot.estimates:
        load, capacity = replica.load, replica.capacity
        prefill_per_s = _prefill_tokens_per_s(snapshot, replica)
        batch_wait_s = None
        num_must_finish = load.num_running + load.num_queued + 1 - capacity.max_num_seqs
        if num_must_finish > 0 and load.num_running > 0:
            per_seq_tokens_per_s = capacity.tokens_per_s / capacity.max_num_seqs
            mean_remaining_tokens = load.num_running_tokens / load.num_running
            batch_wait_s = num_must_finish / load.num_running * mean_remaining_tokens / per_seq_tokens_per_s
        terms = memo[_TERMS_KEY] = (snapshot.estimates, prefill_per_s,
                                    load.num_queued_prompt_tokens / prefill_per_s, batch_wait_s)
    return terms


_TERMS_KEY = "predict.queueing_terms"


def queueing_s(snapshot: FleetSnapshot, replica: Replica) -> Seconds:
    """Predicted wait before a new request's prefill could begin on `replica` (incl. waiting for warm).

    Prefill of the requests queued ahead, plus, when the batch is full, the time for enough running sequences
    to finish to free a slot.
    """
    _, _, queued_prefill_s, batch_wait_s = _terms(snapshot, replica)
    wait_s = replica.wait_until_warm_s(snapshot.now_s) + queued_prefill_s
    if batch_wait_s is not None:
        wait_s += batch_wait_s
    return wait_s


def ttft_s(snapshot: FleetSnapshot, replica: Replica, num_prompt_tokens: int) -> Seconds:
    """Predicted time to first token of a new request of `num_prompt_tokens` sent to `replica` now."""
    return queueing_s(snapshot, replica) + num_prompt_tokens / _terms(snapshot, replica)[1]


@fast_init
@dataclasses.dataclass(frozen=True, slots=True)
class WakeOption:
    """How fast a new replica of an expert could serve."""

    cold_start_s: Seconds
    """Shortest cold start over hardware kinds that fit now (over all known kinds if none fits; 0 if none known)."""
    is_placeable: bool
    """Some worker has the memory and an estimate for it right now."""


def reclaimable_gb(snapshot: FleetSnapshot, worker_id: WorkerId, for_expert_id: ExpertId) -> float:
    """Memory on a worker held by warm, idle replicas of other experts (what eviction could free)."""
    return sum(r.memory_gb for r in snapshot.replicas.values()
               if r.worker_id == worker_id and r.is_warm and r.expert_id != for_expert_id
               and r.load.num_outstanding_requests == 0)


def wake_option(snapshot: FleetSnapshot, expert_id: ExpertId, *, reclaim_idle_memory: bool = False) -> WakeOption:
    """`reclaim_idle_memory`: count idle replicas of other experts as evictable."""
    if reclaim_idle_memory:  # depends on which replicas are idle: not memoizable by placement
        return _wake_option(snapshot, expert_id, True)
    # A function of the placement and the catalogue only: computed once per placement.
    memo = snapshot.layout_memo()
    option = memo.get((_WAKE_KEY, expert_id))
    if option is None:
        option = memo[(_WAKE_KEY, expert_id)] = _wake_option(snapshot, expert_id, False)
    return option


_WAKE_KEY = "predict.wake_option"


def _wake_option(snapshot: FleetSnapshot, expert_id: ExpertId, reclaim_idle_memory: bool) -> WakeOption:
    fitting, known = [], []
    if reclaim_idle_memory:
        for worker in snapshot.workers.values():
            estimate = snapshot.estimate(expert_id, worker.hardware)
            if estimate is None:
                continue
            known.append(estimate.cold_start_s)
            free_gb = snapshot.memory_free_gb(worker.worker_id) + reclaimable_gb(snapshot, worker.worker_id, expert_id)
            if estimate.memory_gb <= free_gb + 1e-9:
                fitting.append(estimate.cold_start_s)
    else:
        for hardware, free_gb in snapshot.max_free_gb_by_hardware().items():
            estimate = snapshot.estimate(expert_id, hardware)
            if estimate is None:
                continue
            known.append(estimate.cold_start_s)
            if estimate.memory_gb <= free_gb + 1e-9:
                fitting.append(estimate.cold_start_s)
    if fitting:
        return WakeOption(min(fitting), True)
    return WakeOption(min(known) if known else 0.0, False)
