"""Placement: which worker a new replica of an expert goes on.

Variants (`PlacementSettings.kind`):

- `first-fit`: the first worker (in configuration order) with a serving estimate for its hardware, enough
  free memory and, where it declares devices, enough free devices (the first that evicts no asleep replica for
  them, if any does).
- `cost-aware`: Mélange (Griggs et al., 2024) for one replica at a time — among workers that fit, the cheapest
  one whose *predicted* TTFT and TPOT at the expert's current load meet the expert's targets. "Cheapest" is
  the price of the devices the replica occupies (its share of the worker: an 8-GPU machine hosting a 2-GPU
  replica is charged 2 GPUs, as replicas are packed onto machines) × the replicas of that kind the expert's
  demand needs: its recent arrival rate (`ExpertActivity.demand`) over one replica's capacity at the SLO
  (`predict.replica_requests_per_s_at_slo`, Mélange's per-GPU-type "max throughput within the SLO"), and at
  least what its outstanding tokens fill in KV cache. So a small or cheap card wins at low load and a fast one
  when its throughput saves replicas. When no hardware meets the targets, the fastest that fits is chosen and
  the outcome says the SLO is at risk.

Guarantees (both): a placed replica fits in its worker's free memory (never over-commit), and on a worker
that declares devices it gets as many whole devices as its tensor-parallel size (`ServingEstimate.num_devices`)
that no live replica holds (never double-book a device). Devices held by a replica asleep there
(`Worker.asleep`) go to it only as the wake of that replica, or by evicting asleep replicas, which the outcome
names (`Placed.evicts`: the executor stops them before the start; `policies/devices.py`). So do the memory and
devices of a replica draining with no work left (`devices.soon_free`: the step stops it or puts it to sleep at
its end anyway). Workers without declared devices are checked for memory only.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import math
from collections.abc import Sequence

from pydantic import Field

from switchboard.fleet.state import ExpertSpec, FleetSnapshot, Replica, ServingEstimate, Worker
from switchboard.policies import predict
from switchboard.policies.base import PolicySettings, Reason, Registry
from switchboard.policies.devices import NO_ROOM, device_room
from switchboard.types import ExpertId, ReplicaId, Seconds


class PlacementKind(str, enum.Enum):
    FIRST_FIT = "first-fit"
    COST_AWARE = "cost-aware"


class PlacementSettings(PolicySettings):
    kind: PlacementKind = PlacementKind.COST_AWARE
    default_prompt_tokens: int = 512
    """Prompt length assumed for latency predictions when the expert has no queued requests."""
    default_output_tokens: int = 128
    """Output length assumed for capacity predictions when arrivals came without token counts."""
    slo_percentile: float = Field(99.0, gt=0, lt=100, description="The TTFT percentile a replica's capacity keeps "
                                  "within the SLO (cost-aware).")


class PlacementStatus(str, enum.Enum):
    PLACED = "placed"
    PLACED_SLO_AT_RISK = "placed-slo-at-risk"
    NO_ESTIMATE = "no-estimate"
    NO_MEMORY = "no-memory"
    NO_DEVICES = "no-devices"
    """Some worker has the memory, none the free devices (held by live replicas)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Candidate:
    """A worker that can host the replica, with the replica's predicted behaviour there."""

    worker: Worker
    estimate: ServingEstimate
    predicted_ttft_s: Seconds
    predicted_tpot_s: Seconds
    meets_slo: bool
    usd_per_hour: float
    """Price of the devices this replica occupies on its worker."""
    num_replicas_needed: float
    """Replicas of this kind the expert's current demand needs (≥ 1; fractional)."""
    sleep_rank: int = 1
    """The sleep tier on this worker: 0 a replica of this expert sleeps there (the start is a wake), 1 none
    sleeps there (or, where the worker declares devices, the start leaves the sleepers' devices alone), 2 the
    start evicts replicas for their room (other experts' asleep ones, or soon-free ones, `devices.soon_free`),
    or (a worker without declared devices) other experts sleep there."""
    evicts: tuple[ReplicaId, ...] = ()
    """Replicas on this worker the start must stop first, for their room (`devices.device_room`)."""

    @property
    def usd_per_hour_at_load(self) -> float:
        return self.usd_per_hour * self.num_replicas_needed


@dataclasses.dataclass(frozen=True, slots=True)
class Placed:
    status: PlacementStatus
    expert_id: ExpertId
    candidate: Candidate
    reason: Reason

    @property
    def is_placed(self) -> bool:
        return True

    @property
    def evicts(self) -> tuple[ReplicaId, ...]:
        """Replicas to stop right before the start, for their room: asleep ones (`EvictAsleep`) and soon-free
        ones (`StopReplica`, `Plan.start_on`)."""
        return self.candidate.evicts


@dataclasses.dataclass(frozen=True, slots=True)
class Unplaceable:
    status: PlacementStatus
    expert_id: ExpertId
    reason: Reason

    @property
    def is_placed(self) -> bool:
        return False


PlacementOutcome = Placed | Unplaceable


def candidates(snapshot: FleetSnapshot, expert_id: ExpertId, settings: PlacementSettings,
               min_requests_per_s: float = 0.0, workers: Sequence[Worker] | None = None,
               sleep_after_s: float | None = None, takes_soon_free: bool = True) -> list[Candidate]:
    """Workers that fit a new replica of `expert_id`, in configuration order, with latency and cost at load.
    `takes_soon_free`: a start may take the room of replicas draining with no work left (`devices.soon_free`).

    The load is the expert's recent arrival rate, or `min_requests_per_s` if higher (a rate known from elsewhere,
    e.g. how often the router prefers the expert while cold-start hiding keeps its arrivals away; an expert's own
    rate needs two arrivals, `ExpertActivity.demand`). `workers` (default: all) restricts the search; a listed
    worker is priced even if it has no room (for comparing with a replica already on it).

    Latency: a first replica will serve what is queued for the expert now, so its TTFT is predicted behind that
    queue. A scale-up's replica will not take over today's queue (the warm replicas drain it while it starts):
    it is judged on one request of the expert's mean size; whether one such replica is enough is the demand's
    business (`num_replicas_needed`).

    With the sleep tier (`sleep_after_s`, keep-alive's), a replica whose wake meets the TTFT SLO sleeps once idle
    for `sleep_after_s` (policies/keepalive.py), so it is billed for the time it is awake, not the hour: at low
    load it counts as the fraction of a replica its requests keep awake — each woken, served alone, then idle
    `sleep_after_s` before it sleeps (an upper bound: requests that overlap share it) — not as a whole one. A
    faster kind then wins when it serves the same requests in proportionally less time."""
    spec = snapshot.experts[expert_id]
    replicas = snapshot.accepting_replicas_of(expert_id)
    num_after = len(replicas) + 1
    num_requests = sum(r.load.num_outstanding_requests for r in replicas) + len(snapshot.unplaced_of(expert_id))
    num_tokens = sum(r.load.num_outstanding_tokens for r in replicas) + sum(q.num_tokens for q in snapshot.unplaced_of(expert_id))
    seqs = math.ceil(num_requests / num_after)
    demand = snapshot.activity_of(expert_id).demand(snapshot.now_s)
    requests_per_s = max(demand.requests_per_s, min_requests_per_s)
    if demand.mean_prompt_tokens or not min_requests_per_s:
        demand_prompt = demand.mean_prompt_tokens or settings.default_prompt_tokens
        demand_output = demand.mean_output_tokens or settings.default_output_tokens
    else:  # a rate known from elsewhere, with no request of its own yet: size it like the fleet's recent traffic
        demand_prompt, demand_output = _fleet_request_size(snapshot, settings)
    if replicas:  # a scale-up: one request of the mean size, nothing ahead of it
        prompt_tokens, tokens_ahead = round(demand_prompt), 0
    else:  # a first replica: behind what is queued for the expert (all of it unplaced)
        queued = snapshot.unplaced_of(expert_id)
        prompt_tokens = round(sum(q.num_prompt_tokens for q in queued) / len(queued)) if queued else settings.default_prompt_tokens
        tokens_ahead = sum(q.num_prompt_tokens for q in queued)
    found = []
    sleepers = _asleep_workers(snapshot)
    for worker in snapshot.workers.values() if workers is None else workers:
        estimate = snapshot.estimate(expert_id, worker.hardware)
        if estimate is None:
            continue
        room = device_room(snapshot, worker, estimate, takes_soon_free=takes_soon_free)
        if room is NO_ROOM and workers is None:
            continue
        ttft_s = estimate.ttft_s(prompt_tokens, tokens_ahead)
        tpot_s = estimate.tpot_s(seqs)
        floor = 1.0
        if (sleep_after_s is not None and estimate.wake_s is not None and requests_per_s > 0
                and sleep_frees_accelerator(worker)
                and predict.start_fits_slo(snapshot, expert_id, estimate.wake_s, estimate)):
            awake_s = (estimate.wake_s + estimate.ttft_s(round(demand_prompt))
                       + demand_output * estimate.decode_step_s_batch_1 + sleep_after_s)
            floor = min(1.0, requests_per_s * awake_s)
        num_needed = max(floor, math.ceil(num_tokens / estimate.kv_capacity_tokens),
                         _replicas_for_demand(estimate, spec, requests_per_s, demand_prompt, demand_output,
                                              settings.slo_percentile))
        found.append(Candidate(worker, estimate, ttft_s, tpot_s,
                               meets_slo=ttft_s <= spec.ttft_slo_s and tpot_s <= spec.tpot_slo_s,
                               usd_per_hour=replica_usd_per_hour(worker, estimate), num_replicas_needed=num_needed,
                               sleep_rank=(0 if worker.worker_id in estimate.asleep_worker_ids
                                           else 2 if room.evicts or (not worker.num_devices
                                                                     and worker.worker_id in sleepers)
                                           else 1),
                               evicts=room.evicts))
    return found


def _asleep_workers(snapshot: FleetSnapshot) -> frozenset:
    """Workers where a replica of some expert sleeps (the executor's `asleep_worker_ids`); memoized with the
    estimates, which change when a replica sleeps or wakes."""
    memo = snapshot.layout_memo()
    held = memo.get(_ASLEEP_KEY)
    if held is None or held[0] is not snapshot.estimates:
        found = frozenset(w for e in snapshot.estimates.values() for w in e.asleep_worker_ids)
        held = memo[_ASLEEP_KEY] = (snapshot.estimates, found)
    return held[1]


_ASLEEP_KEY = "placement.asleep_workers"


def _waking_first(snapshot: FleetSnapshot, expert_id: ExpertId, fitting: list[Candidate]) -> list[Candidate]:
    """For an expert with no replica up, the candidates where a replica of it sleeps and wakes in time for the
    request waiting on it (wake + predicted TTFT within the SLO), if any; else `fitting`. The start of a first
    replica is on its requests' path: a cheaper kind's cold start (7–30 s for a GPU engine) would miss the SLO
    the wake keeps — on the conversation trace the sleeping 70B expert's next request cold-started on H100 for
    30 s while its A100 replica could wake in 1.4 s (docs/simulator.md, "The sleep tier")."""
    if snapshot.accepting_replicas_of(expert_id):
        return fitting
    slo_s = snapshot.experts[expert_id].ttft_slo_s
    waking = [c for c in fitting if c.worker.worker_id in c.estimate.asleep_worker_ids
              and c.estimate.start_s_on(c.worker.worker_id) + c.predicted_ttft_s <= slo_s]
    return waking or fitting


def _evicting(snapshot: FleetSnapshot, evicts: tuple[ReplicaId, ...]) -> str:
    asleep = [r for r in evicts if r not in snapshot.replicas]
    drained = [r for r in evicts if r in snapshot.replicas]
    return ((f"; evicting asleep {', '.join(asleep)} for its devices" if asleep else "")
            + (f"; stopping drained {', '.join(drained)} for its room" if drained else ""))


def _fleet_request_size(snapshot: FleetSnapshot, settings: PlacementSettings) -> tuple[float, float]:
    """Mean prompt and output tokens of the whole fleet's recent arrivals (rate-weighted over experts), else the
    defaults."""
    demands = [a.demand(snapshot.now_s) for a in snapshot.activity.values()]
    sized = [d for d in demands if d.mean_prompt_tokens and d.requests_per_s > 0]
    total_per_s = sum(d.requests_per_s for d in sized)
    if total_per_s <= 0:
        return float(settings.default_prompt_tokens), float(settings.default_output_tokens)
    return (sum(d.requests_per_s * d.mean_prompt_tokens for d in sized) / total_per_s,
            sum(d.requests_per_s * d.mean_output_tokens for d in sized) / total_per_s)


def replica_usd_per_hour(worker: Worker, estimate: ServingEstimate) -> float:
    """The price of the part of `worker` a replica occupies: its devices, i.e. its share of the worker's memory
    (a replica takes whole devices, so on GPUs this is exact)."""
    return worker.usd_per_hour * min(1.0, estimate.memory_gb / worker.memory_gb) if worker.memory_gb > 0 \
        else worker.usd_per_hour


def sleep_frees_accelerator(worker: Worker) -> bool:
    """Whether putting a replica on `worker` to sleep frees something priced: its accelerators — the worker
    declares devices; asleep, the replica holds host RAM only, which is not priced (`fleet/sleep.py`). On a worker
    that declares none (the embedded CPU worker), a replica's weights sit in the host memory the asleep engine
    process also keeps, so asleep costs what warm does and sleeping frees nothing: only a wake to pay for.

    Decided from the configured devices, never from the expert or its backend: the sleep tier (keep-alive's
    `sleep_after_s`) and placement's awake-time pricing apply exactly where this holds."""
    return worker.num_devices > 0


def _replicas_for_demand(estimate: ServingEstimate, spec: ExpertSpec, requests_per_s: float, prompt_tokens: float,
                         output_tokens: float, percentile: float) -> float:
    if requests_per_s <= 0:
        return 0.0
    capacity = predict.replica_requests_per_s_at_slo(estimate, spec, prompt_tokens, output_tokens, percentile)
    return requests_per_s / capacity if capacity > 0 else math.inf


class PlacementPolicy(abc.ABC):
    def __init__(self, settings: PlacementSettings) -> None:
        self.settings = settings
        self.sleep_after_s: float | None = None
        """Keep-alive's sleep tier (`candidates`' `sleep_after_s`); set by `make_placement`."""

    @abc.abstractmethod
    def choose(self, fitting: list[Candidate]) -> Candidate:
        """One of `fitting` (never empty)."""

    def place(self, snapshot: FleetSnapshot, expert_id: ExpertId) -> PlacementOutcome:
        fitting = candidates(snapshot, expert_id, self.settings, sleep_after_s=self.sleep_after_s)
        if not fitting:
            if not any(snapshot.estimate(expert_id, w.hardware) for w in snapshot.workers.values()):
                return Unplaceable(PlacementStatus.NO_ESTIMATE, expert_id, Reason(
                    PlacementStatus.NO_ESTIMATE, f"no worker's hardware can serve {expert_id}"))
            if any((e := snapshot.estimate(expert_id, w.hardware)) is not None
                   and e.memory_gb <= snapshot.memory_free_gb(w.worker_id) + 1e-9 for w in snapshot.workers.values()):
                return Unplaceable(PlacementStatus.NO_DEVICES, expert_id, Reason(
                    PlacementStatus.NO_DEVICES, f"no worker has free devices for {expert_id}"))
            return Unplaceable(PlacementStatus.NO_MEMORY, expert_id, Reason(
                PlacementStatus.NO_MEMORY, f"no worker has free memory for {expert_id}"))
        chosen = self.choose(_waking_first(snapshot, expert_id, fitting))
        status = PlacementStatus.PLACED if chosen.meets_slo else PlacementStatus.PLACED_SLO_AT_RISK
        detail = (f"{chosen.worker.worker_id} ({chosen.worker.hardware}, ${chosen.usd_per_hour:.2f}/h for this replica, "
                  f"{chosen.num_replicas_needed:.1f} needed): "
                  f"predicted TTFT {chosen.predicted_ttft_s:.2f}s, TPOT {chosen.predicted_tpot_s * 1000:.0f}ms"
                  + _evicting(snapshot, chosen.evicts))
        return Placed(status, expert_id, chosen, Reason(status, detail))

    def better_than_starting(self, snapshot: FleetSnapshot, replica: Replica,
                             routed_requests_per_s: float) -> Candidate | None:
        """*Re-place a start*: a worker of another kind for `replica`'s expert when `replica`, still starting,
        could not carry the expert's load alone (demand-at-slo autoscaling would add a replica of the best kind
        as soon as it is warm) and the other kind carries it with fewer replicas at a lower price — or None.
        The load is the expert's arrival rate or `routed_requests_per_s` (how often the router prefers it),
        whichever is higher: while an expert is cold, cold-start hiding sends its requests elsewhere, so its own
        arrivals understate what it will get; its requests' size is then the fleet's recent mean.

        A re-placement only ever moves to a kind that needs fewer replicas for the same load (a faster one), so
        a noisy rate estimate near a price crossover cannot flip a start back and forth.

        Only cost-aware placement re-places (first-fit has no notion of a better kind)."""
        return None

    def cheaper_than_warm(self, snapshot: FleetSnapshot, replica: Replica, min_saving: float) -> Candidate | None:
        """*Re-place a warm replica*: a worker of another kind, with room now, where a replica of `replica`'s
        expert would cost at least `min_saving` (a fraction) less per hour at the expert's current demand,
        meeting the SLO and needing no more replicas for it, and that would still cost no more and need no more
        replicas if the demand doubled, so that a rate near the two kinds' price crossover does not move the expert
        back and forth — or None. (Only no loss at twice the demand, not the saving: with the sleep tier a kind
        that can sleep is priced by its awake time, which doubles with the demand, while one that cannot costs the
        hour either way.) An overloaded replica
        (its kind needs more than one replica for the demand) is moved for any saving to a kind that needs fewer
        (`_relieves_overload`): the minimum saving prices a cold start against money, and there staying costs the
        SLO too. The case it is for: a replica placed
        while the cheaper kind was full (other experts' start-up replicas) or while its load was different,
        which would otherwise serve on the pricier kind for as long as it stays warm (Mélange's mix re-solved
        as load and room change; Llumnix moves work between instances in the same spirit).

        Only cost-aware placement re-places."""
        return None


PLACEMENT_POLICIES: Registry[PlacementKind, PlacementPolicy] = Registry("placement")


@PLACEMENT_POLICIES.register(PlacementKind.FIRST_FIT)
class FirstFitPlacement(PlacementPolicy):
    def choose(self, fitting: list[Candidate]) -> Candidate:
        # The first that fits without evicting an asleep replica, else the first that fits.
        return next((c for c in fitting if not c.evicts), fitting[0])


@PLACEMENT_POLICIES.register(PlacementKind.COST_AWARE)
class CostAwarePlacement(PlacementPolicy):
    def choose(self, fitting: list[Candidate]) -> Candidate:
        meeting = [c for c in fitting if c.meets_slo]
        if meeting:
            # Among equals (workers of one kind), a wake of this expert first and another expert's sleeping
            # replica's devices last (taking them turns its next wake into a cold start); then min() keeps the
            # first of equals, so configuration order breaks ties deterministically.
            return min(meeting, key=lambda c: (c.usd_per_hour_at_load, c.usd_per_hour, c.sleep_rank))
        return min(fitting, key=lambda c: (c.predicted_ttft_s, c.predicted_tpot_s, c.usd_per_hour, c.sleep_rank))

    def better_than_starting(self, snapshot: FleetSnapshot, replica: Replica,
                             routed_requests_per_s: float) -> Candidate | None:
        expert_id = replica.expert_id
        current = candidates(snapshot, expert_id, self.settings, routed_requests_per_s,
                             workers=[snapshot.workers[replica.worker_id]], sleep_after_s=self.sleep_after_s)
        others = [c for c in candidates(snapshot, expert_id, self.settings, routed_requests_per_s,
                                        sleep_after_s=self.sleep_after_s)
                  if c.worker.hardware != replica.hardware and c.meets_slo]
        if not current or not others:
            return None
        best, kept = self.choose(others), current[0]
        return best if _relieves_overload(kept, best) else None

    def cheaper_than_warm(self, snapshot: FleetSnapshot, replica: Replica, min_saving: float) -> Candidate | None:
        expert_id = replica.expert_id
        requests_per_s = snapshot.activity_of(expert_id).demand(snapshot.now_s).requests_per_s
        # Cheap necessary condition first (this runs every control step): another kind's replicas (≥ 1 of them)
        # must cost `min_saving` less than this one does at the load, so one of them alone must.
        here = [snapshot.workers[replica.worker_id]]
        current = candidates(snapshot, expert_id, self.settings, requests_per_s, workers=here,
                             sleep_after_s=self.sleep_after_s)
        if not current:
            return None
        limit_usd = current[0].usd_per_hour_at_load * (1.0 if _is_overloaded(current[0]) else 1.0 - min_saving)
        # (With the sleep tier a replica may count as a fraction of one, so the condition does not hold.)
        if self.sleep_after_s is None and not any(
                w.hardware != replica.hardware and (e := snapshot.estimate(expert_id, w.hardware)) is not None
                and replica_usd_per_hour(w, e) < limit_usd
                and e.memory_gb <= snapshot.memory_free_gb(w.worker_id) + 1e-9
                for w in snapshot.workers.values()):
            return None
        chosen = None
        for load_factor in (1.0, 2.0):
            rate = requests_per_s * load_factor
            if load_factor != 1.0:
                current = candidates(snapshot, expert_id, self.settings, rate, workers=here,
                                     sleep_after_s=self.sleep_after_s)
            # A move for cost is never urgent: it does not stop a replica that keep-alive has just drained to sleep
            # (its expert's next request would cold-start; on the code-like trace at the 1.05 s step the 70B's move
            # to the H100 machine took a just-drained 8B's device, and that 8B's next requests were rejected).
            others = [c for c in candidates(snapshot, expert_id, self.settings, rate, sleep_after_s=self.sleep_after_s,
                                            takes_soon_free=False)
                      if c.worker.hardware != replica.hardware and c.meets_slo]
            if not current or not others:
                return None
            best, kept = self.choose(others), current[0]
            # The saving is asked at today's demand; at twice it the move need only not lose. With the sleep tier
            # the kind that can sleep is priced by its awake time, which doubles with the demand, while a kind
            # whose wake misses the SLO never sleeps and costs the same: asking the full saving there kept the
            # 70B awake on an A100 for most of an hour (docs/simulator.md, "The sleep tier").
            saving = min_saving if load_factor == 1.0 else 0.0
            if not (best.num_replicas_needed <= kept.num_replicas_needed + 1e-9
                    and best.usd_per_hour_at_load < kept.usd_per_hour_at_load * (1.0 - saving)
                    or _relieves_overload(kept, best)):
                return None
            chosen = chosen or best
        return chosen


def _is_overloaded(kept: Candidate) -> bool:
    """Whether one replica of `kept`'s kind cannot carry its expert's demand at the SLO (more than one needed)."""
    return kept.num_replicas_needed > 1.0 + 1e-9


def _relieves_overload(kept: Candidate, best: Candidate) -> bool:
    """A re-placement that is about the SLO as much as the price: the one replica on `kept`'s kind is overloaded
    (`_is_overloaded`), `best`'s kind carries the same demand with fewer replicas, and for less at load. The rule
    for moving a start (`better_than_starting`); for a warm replica (`cheaper_than_warm`) it waives the minimum
    saving, since staying leaves the expert's requests queued past the SLO until a second slow replica is added or
    the demand falls."""
    return (_is_overloaded(kept) and best.num_replicas_needed < kept.num_replicas_needed - 1e-9
            and best.usd_per_hour_at_load < kept.usd_per_hour_at_load - 1e-9)


def make_placement(settings: PlacementSettings, *, sleep_after_s: float | None = None) -> PlacementPolicy:
    """`sleep_after_s`: keep-alive's sleep tier (a replica is priced by the time it is awake)."""
    policy = PLACEMENT_POLICIES.create(settings)
    policy.sleep_after_s = sleep_after_s
    return policy
