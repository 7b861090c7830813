"""Latency predictions shared by admission, migration and fleet-aware routing.

Deliberately simple and monotone (more work ahead ⇒ never a shorter prediction), from the `ServingEstimate`
of the replica's expert × hardware.
"""

from __future__ import annotations

import dataclasses
import functools
import math

from switchboard.fleet.state import ExpertSpec, FleetSnapshot, Replica, ServingEstimate
from switchboard.policies.devices import devices_reachable
from switchboard.types import ExpertId, Seconds, WorkerId
from switchboard.frozen import fast_init


def prefill_tokens_per_s(snapshot: FleetSnapshot, replica: Replica) -> float:
    return _terms(snapshot, replica)[1]


def _prefill_tokens_per_s(snapshot: FleetSnapshot, replica: Replica) -> float:
    estimate = snapshot.estimate(replica.expert_id, replica.hardware)
    # Without an estimate, decode throughput is a safe (pessimistic) stand-in for prefill speed.
    return estimate.prefill_tokens_per_s if estimate else replica.capacity.tokens_per_s


def _terms(snapshot: FleetSnapshot, replica: Replica, is_background: bool = False,
           without_running_background: bool = False) -> tuple:
    """(estimates they hold for, prefill tokens/s, prefill of the queued prompts ahead, wait for a batch slot or
    None): the time-independent parts of `queueing_s`, memoized on the replica for the snapshot's `estimates`.

    A live request is predicted behind the live requests queued only: every queue order
    (`policies/ordering.py`) starts it before a batch's, which wait for it (a batch's request is predicted
    behind the whole queue). `without_running_background`: as if the batch's running requests were not there
    (what admission holds a live request to)."""
    memo = replica.memo()
    # The common case (a live request, everything running counted) keeps a plain key: this is the hot path.
    key = (_TERMS_KEY, is_background, without_running_background) if is_background or without_running_background \
        else _TERMS_KEY
    terms = memo.get(key)
    if terms is None or terms[0] is not snapshot.estimates:
        load, capacity = replica.load, replica.capacity
        prefill_per_s = _prefill_tokens_per_s(snapshot, replica)
        num_ahead = load.num_queued if is_background else load.num_live_queued
        prompt_tokens_ahead = load.num_queued_prompt_tokens if is_background else load.num_live_queued_prompt_tokens
        num_running, num_running_tokens = load.num_running, load.num_running_tokens
        if without_running_background:
            num_running -= min(load.num_running_background, num_running)
            num_running_tokens -= min(load.num_running_background_tokens, num_running_tokens)
        batch_wait_s = None
        num_must_finish = num_running + num_ahead + 1 - capacity.max_num_seqs
        if num_must_finish > 0 and num_running > 0:
            per_seq_tokens_per_s = capacity.tokens_per_s / capacity.max_num_seqs
            mean_remaining_tokens = num_running_tokens / num_running
            batch_wait_s = num_must_finish / num_running * mean_remaining_tokens / per_seq_tokens_per_s
        terms = memo[key] = (snapshot.estimates, prefill_per_s, prompt_tokens_ahead / prefill_per_s, batch_wait_s)
    return terms


_TERMS_KEY = "predict.queueing_terms"


def queueing_s(snapshot: FleetSnapshot, replica: Replica) -> Seconds:
    """Predicted wait before a new live request's prefill could begin on `replica` (incl. waiting for warm).

    Prefill of the live requests queued ahead (see `_terms`), plus, when the batch is full, the time for enough
    running sequences to finish to free a slot.
    """
    return _queueing_s(snapshot, replica, _terms(snapshot, replica))


def _queueing_s(snapshot: FleetSnapshot, replica: Replica, terms: tuple) -> Seconds:
    _, _, queued_prefill_s, batch_wait_s = terms
    wait_s = replica.wait_until_warm_s(snapshot.now_s) + queued_prefill_s
    if batch_wait_s is not None:
        wait_s += batch_wait_s
    return wait_s


def ttft_s(snapshot: FleetSnapshot, replica: Replica, num_prompt_tokens: int, *, is_background: bool = False,
           without_running_background: bool = False) -> Seconds:
    """Predicted time to first token of a new request of `num_prompt_tokens` sent to `replica` now (a batch's
    request when `is_background`; see `_terms` for `without_running_background`)."""
    terms = _terms(snapshot, replica, is_background, without_running_background)
    return _queueing_s(snapshot, replica, terms) + num_prompt_tokens / terms[1]


@fast_init
@dataclasses.dataclass(frozen=True, slots=True)
class WakeOption:
    """How fast a new replica of an expert could serve."""

    cold_start_s: Seconds
    """Shortest cold start over hardware kinds that fit now (over all known kinds if none fits; 0 if none known)."""
    is_placeable: bool
    """Some worker has an estimate for it and the memory (and, where it declares devices, the devices: free or
    held by asleep replicas placement may evict) right now."""


def _idle_others(snapshot: FleetSnapshot, worker_id: WorkerId, for_expert_id: ExpertId) -> list:
    return [r for r in snapshot.replicas.values() if r.worker_id == worker_id and r.is_warm
            and r.expert_id != for_expert_id and r.load.num_outstanding_requests == 0]


def reclaimable_gb(snapshot: FleetSnapshot, worker_id: WorkerId, for_expert_id: ExpertId) -> float:
    """Memory on a worker held by warm, idle replicas of other experts (what eviction could free)."""
    return sum(r.memory_gb for r in _idle_others(snapshot, worker_id, for_expert_id))


def reclaimable_devices(snapshot: FleetSnapshot, worker_id: WorkerId, for_expert_id: ExpertId) -> int:
    """Devices on a worker held by warm, idle replicas of other experts (what eviction could free)."""
    return sum(r.num_devices for r in _idle_others(snapshot, worker_id, for_expert_id))


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
            idle = _idle_others(snapshot, worker.worker_id, expert_id)
            if estimate.memory_gb > snapshot.memory_free_gb(worker.worker_id) + sum(r.memory_gb for r in idle) + 1e-9:
                continue
            if worker.num_devices and not devices_reachable(snapshot, worker, estimate, sum(r.num_devices for r in idle)):
                continue
            fitting.append(estimate.cold_start_s)
    elif snapshot.declares_devices():  # memory and devices on the same worker
        for hardware, rooms in snapshot.rooms_by_hardware().items():
            estimate = snapshot.estimate(expert_id, hardware)
            if estimate is None:
                continue
            known.append(estimate.cold_start_s)
            need = estimate.num_devices
            if any(estimate.memory_gb <= free_gb + 1e-9 and need <= devices for free_gb, devices in rooms):
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


# ---------------------------------------------------------------------------------------- capacity at the SLO


START_SLO_PERCENTILE = 99.0
"""The share of an expert's prompts a start on demand must still serve within the SLO (`start_fits_slo`): the
fleet's own SLO percentile, so that a wake does not add to the TTFT tail the fleet is judged by. Measured on the
conversation trace (docs/simulator.md, "The sleep tier"), once a start is priced on the worker it lands on: at the
95th the tier costs 43.00% of static at p99 TTFT 1.589 s, at the 99th 43.18% at 1.573 s (1.570 s without the
tier) — the 95th let mistral wake on an L4 for prompts of ~4,000 tokens, 1.6–1.7 s each, into the fleet's tail."""


def start_fits_slo(snapshot: FleetSnapshot, expert_id: ExpertId, start_s: Seconds, estimate: ServingEstimate,
                   percentile: float = START_SLO_PERCENTILE) -> bool:
    """Whether a request that finds the expert not warm would still get its first token within its TTFT SLO after
    a start (a wake from the sleep tier, or a cold start) of `start_s` on `estimate`'s kind — for all but the
    longest `100 − percentile`% of prompts. What makes starting on demand enough: no replica need be kept warm,
    nor started ahead, nor stand in, to meet the SLO.

    Prefill times are taken as exponential around the expert's recent mean prompt, as the capacity model does
    (`max_utilization_at_slo`): the percentile-th prefill is the mean × ln(1 / (1 − percentile/100)) (4.6× at the
    99th)."""
    spec = snapshot.experts[expert_id]
    prompt = snapshot.activity_of(expert_id).demand(snapshot.now_s).mean_prompt_tokens
    tail = -math.log(max(1e-9, 1.0 - percentile / 100.0))
    return start_s + tail * prompt / estimate.prefill_tokens_per_s + estimate.decode_step_s_batch_1 <= spec.ttft_slo_s


def start_keeps_tail(snapshot: FleetSnapshot, expert_id: ExpertId, start_s: Seconds, estimate: ServingEstimate,
                     percentile: float = START_SLO_PERCENTILE) -> bool:
    """`start_fits_slo`, and the start does not lengthen the fleet's TTFT tail: its `percentile`-th request (the
    start, then the prefill of that percentile's prompt) is no slower than the `percentile`-th request of the
    slowest other expert warm now already is (each on its replicas' kind, prompts exponential around its recent
    mean, as `start_fits_slo` takes them). A start on demand delays only the requests that find the expert
    asleep; this keeps them inside the tail the fleet has anyway, so the fleet's p99 TTFT stays where warm
    serving puts it (a wake past it turned ~1% of the requests of mistral into the fleet's slowest, and moved its
    p99 TTFT, docs/simulator.md, "The sleep tier"). With no other expert warm, the SLO alone bounds it."""
    if not start_fits_slo(snapshot, expert_id, start_s, estimate, percentile):
        return False
    tail = -math.log(max(1e-9, 1.0 - percentile / 100.0))
    own_s = start_s + tail * snapshot.activity_of(expert_id).demand(snapshot.now_s).mean_prompt_tokens \
        / estimate.prefill_tokens_per_s + estimate.decode_step_s_batch_1
    slowest_s = None
    for other_id in snapshot.experts:
        if other_id == expert_id:
            continue
        prompt = snapshot.activity_of(other_id).demand(snapshot.now_s).mean_prompt_tokens
        for replica in snapshot.warm_replicas_of(other_id):
            other = snapshot.estimate(other_id, replica.hardware)
            if other is not None and prompt > 0:
                ttft_s = tail * prompt / other.prefill_tokens_per_s + other.decode_step_s_batch_1
                slowest_s = ttft_s if slowest_s is None else max(slowest_s, ttft_s)
    return slowest_s is None or own_s <= slowest_s


def warm_ttft_percentile_s(snapshot: FleetSnapshot, except_id: ExpertId, percentile: float) -> Seconds | None:
    """The `percentile`-th TTFT of the fleet's requests served warm, from the experts other than `except_id` with
    warm replicas now: each expert's requests weighted by its recent arrival rate (split evenly over its warm
    replicas, each on its kind), each request its prefill plus a decode step, prompts exponential around the
    expert's recent mean. None when no other expert is warm with a known rate and prompt size."""
    parts = []  # (weight, decode step s, mean prefill s)
    for other_id in snapshot.experts:
        if other_id == except_id:
            continue
        demand = snapshot.activity_of(other_id).demand(snapshot.now_s)
        replicas = snapshot.warm_replicas_of(other_id)
        if demand.requests_per_s <= 0 or demand.mean_prompt_tokens <= 0 or not replicas:
            continue
        for replica in replicas:
            other = snapshot.estimate(other_id, replica.hardware)
            if other is not None:
                parts.append((demand.requests_per_s / len(replicas), other.decode_step_s_batch_1,
                              demand.mean_prompt_tokens / other.prefill_tokens_per_s))
    if not parts:
        return None
    total = sum(w for w, _, _ in parts)
    target = total * max(1e-9, 1.0 - percentile / 100.0)

    def weight_above(t_s: float) -> float:
        return sum(w * (math.exp(-(t_s - d) / m) if t_s > d else 1.0) for w, d, m in parts)

    tail = -math.log(max(1e-9, 1.0 - percentile / 100.0))
    low, high = 0.0, max(d + tail * m for _, d, m in parts)  # each part alone is below `target` there
    for _ in range(40):
        mid = (low + high) / 2
        if weight_above(mid) > target:
            low = mid
        else:
            high = mid
    return high


def woken_ttft_s(snapshot: FleetSnapshot, expert_id: ExpertId, num_prompt_tokens: int) -> Seconds | None:
    """Predicted TTFT of a request of `num_prompt_tokens` that wakes a sleeping replica of `expert_id`: the
    shortest wake over the kinds where one sleeps, then its prefill there; None when none sleeps."""
    best_s = None
    for (estimated_id, _), estimate in snapshot.estimates.items():
        if estimated_id == expert_id and estimate.asleep_worker_ids:
            ttft_s = estimate.cold_start_s + num_prompt_tokens / estimate.prefill_tokens_per_s
            best_s = ttft_s if best_s is None else min(best_s, ttft_s)
    return best_s


def wakes_within_slo(snapshot: FleetSnapshot, expert_id: ExpertId) -> bool:
    """Whether the expert has no accepting replica but one asleep (the sleep tier) that its next request could
    wake within its TTFT SLO (`start_fits_slo`): then nothing need start ahead of demand, nor stand in for it —
    the request's own wake is enough."""
    if snapshot.accepting_replicas_of(expert_id):
        return False
    for (estimated_id, _), estimate in snapshot.estimates.items():
        if (estimate.asleep_worker_ids and estimated_id == expert_id
                and start_fits_slo(snapshot, expert_id, estimate.cold_start_s, estimate)):
            return True
    return False


def request_busy_s(estimate: ServingEstimate, num_prompt_tokens: float, num_output_tokens: float) -> Seconds:
    """Engine time one request takes on a replica: its prefill, plus its share of full-batch decode steps."""
    decode_s_per_token = estimate.decode_step_s_full_batch / max(1, estimate.max_num_seqs)
    return num_prompt_tokens / estimate.prefill_tokens_per_s + num_output_tokens * decode_s_per_token


def max_utilization_at_slo(service_s: Seconds, slack_s: Seconds, percentile: float) -> float:
    """Largest utilization ρ of a replica at which the `percentile`-th wait before prefill is ≤ `slack_s`.

    M/M/1 approximation with mean service time `service_s`: P(wait > t) = ρ·exp(−(1−ρ)·t / service_s). Bursty
    arrivals wait longer than this predicts, so it is a ceiling, not a promise. 0 when there is no slack.
    """
    if slack_s <= 0 or service_s <= 0:
        return 0.0 if slack_s <= 0 else 1.0
    tail = max(1e-9, 1.0 - percentile / 100.0)
    low, high = 0.0, 1.0
    for _ in range(30):  # the tail probability increases with ρ: bisect (to 1e-9)
        rho = (low + high) / 2
        if rho * math.exp(-(1.0 - rho) * slack_s / service_s) <= tail:
            low = rho
        else:
            high = rho
    return low


def replica_requests_per_s_at_slo(
    estimate: ServingEstimate, spec: ExpertSpec, num_prompt_tokens: float, num_output_tokens: float,
    percentile: float,
) -> float:
    """`requests_per_s_at_slo` for request sizes rounded to 16 tokens (under 2% of a typical size), so a policy
    that asks every step, as the mean size drifts with each arrival, mostly reuses an answer."""
    return _requests_per_s_at_slo(estimate, spec.ttft_slo_s, spec.tpot_slo_s, 16 * round(num_prompt_tokens / 16),
                                  16 * round(num_output_tokens / 16), percentile)


@functools.lru_cache(maxsize=4096)
def _requests_per_s_at_slo(estimate: ServingEstimate, ttft_slo_s: Seconds, tpot_slo_s: Seconds,
                           num_prompt_tokens: float, num_output_tokens: float, percentile: float) -> float:
    """Requests/s of this size one replica can take while its `percentile`-th TTFT stays within the expert's SLO
    and decoding keeps its TPOT SLO.

    The engine runs waiting prefills before decode steps, so a new request queues only behind other prefills
    (and at most one decode step, in the slack): the TTFT queue is an M/M/1 queue of prefills
    (`max_utilization_at_slo`). Decoding gets the time prefill leaves, so a token takes about a full-batch step
    ÷ (1 − prefill's share), which must stay within the TPOT SLO; and the engine's total time (prefill plus each
    request's share of full-batch decode steps) cannot exceed 1 s per second.

    This is the capacity Mélange (Griggs et al., 2024) profiles per GPU type and request size; here it is
    predicted from the `ServingEstimate`. 0 when even an idle replica misses the SLO.
    """
    prefill_s = num_prompt_tokens / estimate.prefill_tokens_per_s
    busy_s = request_busy_s(estimate, num_prompt_tokens, num_output_tokens)
    if busy_s <= 0:
        return math.inf
    slack_s = ttft_slo_s - estimate.ttft_s(round(num_prompt_tokens))
    if slack_s <= 0:
        return 0.0
    if prefill_s <= 0:
        return 1.0 / busy_s
    rho_prefill = min(max_utilization_at_slo(prefill_s, slack_s, percentile),
                      max(0.0, 1.0 - estimate.decode_step_s_full_batch / tpot_slo_s))
    return min(rho_prefill / prefill_s, 1.0 / busy_s)
