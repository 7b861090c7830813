"""Autoscaling: how many replicas each expert should have, from its outstanding work.

Composed like Ray Serve's `autoscaling_policy`, as small steps:

1. `raw_desired`  — outstanding work ÷ what one replica should carry (the strategy: tokens — with the engine
                    time of the recent arrival rate — or queue depth, or the arrival rate at the SLO);
2. `smooth`       — move only a fraction of the way (upscaling_factor / downscaling_factor);
3. `bound`        — clamp to [min_replicas, max_replicas] and to the keep-alive floor;
4. `delay`        — act on an upscale/downscale only after it has been wanted for upscale_delay_s /
                    downscale_delay_s (hysteresis), except 0 → 1 with waiting requests, which is immediate,
                    and a scale-down that `is_replacement` (newer, better replicas have taken over: demand-at-slo).

Never on requests/s alone: LLM requests differ 100× in cost, so the load measures are tokens and sequences —
or requests/s *of their measured size*: against a replica's engine time (`in-flight-tokens`) or against what
one replica serves within the SLO (`demand-at-slo`).
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import math
from collections.abc import Callable, Mapping

from pydantic import Field, model_validator

from switchboard.fleet.activity import Demand
from switchboard.fleet.state import EngineCapacity, FleetSnapshot, ServingEstimate
from switchboard.frozen import evolve, fast_init
from switchboard.policies import predict
from switchboard.policies.base import PolicySettings, Reason, Registry
from switchboard.policies.placement import replica_usd_per_hour
from switchboard.types import ExpertId, ReplicaId, Seconds


TYPICAL_PROMPT_TOKENS = 1024
"""demand-at-slo: request size assumed when arrivals were recorded without token counts (the Azure conversation
trace's median prompt, as `perf.serving` assumes)."""
TYPICAL_OUTPUT_TOKENS = 128


class AutoscaleKind(str, enum.Enum):
    IN_FLIGHT_TOKENS = "in-flight-tokens"
    QUEUE_DEPTH = "queue-depth"
    DEMAND_AT_SLO = "demand-at-slo"


class AutoscaleSettings(PolicySettings):
    kind: AutoscaleKind = AutoscaleKind.IN_FLIGHT_TOKENS
    min_replicas: int = Field(0, ge=0, description="Per expert; 0 allows scale-to-zero (keep-alive decides when).")
    min_replicas_by_expert: dict[str, int] = Field(
        default_factory=dict, description="Overrides of min_replicas for some experts (e.g. 1 = always warm)."
    )
    max_replicas: int = Field(8, ge=1)
    target_utilization: float = Field(
        0.7, gt=0, le=1, description="Fraction of a replica's KV tokens (or sequences) to fill before adding one."
    )
    upscale_delay_s: float = Field(10.0, ge=0)
    downscale_delay_s: float = Field(120.0, ge=0)
    upscaling_factor: float = Field(1.0, gt=0, description="1 = jump to the desired count; <1 = step part-way.")
    downscaling_factor: float = Field(1.0, gt=0)
    slo_percentile: float = Field(99.0, gt=0, lt=100, description="The TTFT percentile each replica's share of "
                                  "the demand keeps within the SLO (demand-at-slo's sizing; every strategy's "
                                  "retire order).")
    demand_headroom: float = Field(1.0, ge=1.0, description="demand-at-slo: provision for this multiple of the recent "
                                   "arrival rate (1.1 = 10% headroom for load that grows while a new replica starts; "
                                   "costs more, misses fewer TTFTs in load ramps; docs/simulator.md).")
    count_engine_time: bool = Field(True, description="in-flight-tokens: also want enough replicas that each is "
                                    "busy (prefill + its share of decode, from the engine profile) at most "
                                    "`target_utilization` of the time at the expert's recent arrival rate; else KV "
                                    "fill alone, which long prompts with short answers never raise.")

    @model_validator(mode="after")
    def _bounds_ordered(self) -> "AutoscaleSettings":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) > max_replicas ({self.max_replicas})")
        for expert_id, n in self.min_replicas_by_expert.items():
            if not 0 <= n <= self.max_replicas:
                raise ValueError(f"min_replicas_by_expert[{expert_id}] = {n} is outside [0, max_replicas]")
        return self

    def min_for(self, expert_id: str) -> int:
        return self.min_replicas_by_expert.get(expert_id, self.min_replicas)


class ScaleDirection(str, enum.Enum):
    UP = "up"
    DOWN = "down"
    HOLD = "hold"


class AutoscaleReasonCode(str, enum.Enum):
    STEADY = "steady"
    SCALE_UP = "scale-up"
    SCALE_DOWN = "scale-down"
    WAITING_FOR_DELAY = "waiting-for-delay"
    WAKE_FOR_WAITING_REQUESTS = "wake-for-waiting-requests"
    KEEPALIVE_FLOOR = "keepalive-floor"
    EXTERNAL = "external"


@fast_init
@dataclasses.dataclass(frozen=True, slots=True)
class ExpertLoad:
    """An expert's outstanding work, summed over its accepting replicas plus its unplaced requests."""

    num_replicas: int
    """Accepting (starting or warm) replicas."""
    num_outstanding_tokens: int
    num_outstanding_requests: int
    num_waiting_unplaced: int
    replica_capacity: EngineCapacity
    """Capacity of a typical replica (mean of its replicas, else of a new one)."""
    num_replicas_for_demand: float = 0.0
    """Replicas the recent arrival rate needs: at the SLO (`demand-at-slo`), or at the target engine utilization
    (`in-flight-tokens` with `count_engine_time`); 0 when not sized by rate."""


@dataclasses.dataclass(frozen=True, slots=True)
class PendingScale:
    """Hysteresis memory: since when the same direction has been wanted."""

    direction: ScaleDirection
    since_at: Seconds


@dataclasses.dataclass(frozen=True, slots=True)
class AutoscaleState:
    pending: Mapping[ExpertId, PendingScale] = dataclasses.field(default_factory=dict)


@fast_init
@dataclasses.dataclass(frozen=True, slots=True)
class ScaleDecision:
    expert_id: ExpertId
    num_current: int
    num_desired: int
    reason: Reason
    retire_first: tuple[ReplicaId, ...] = ()
    """For a scale-down, the policy's order of replicas to retire (() = the control step's default order)."""

    @property
    def delta(self) -> int:
        return self.num_desired - self.num_current


def expert_load(snapshot: FleetSnapshot, expert_id: ExpertId, new_replica_capacity: EngineCapacity) -> ExpertLoad:
    replicas = snapshot.accepting_replicas_of(expert_id)
    unplaced = snapshot.unplaced_of(expert_id)
    if replicas:
        n = len(replicas)
        capacity = EngineCapacity(
            max_num_seqs=max(1, round(sum(r.capacity.max_num_seqs for r in replicas) / n)),
            tokens_per_s=sum(r.capacity.tokens_per_s for r in replicas) / n,
            kv_capacity_tokens=max(1, round(sum(r.capacity.kv_capacity_tokens for r in replicas) / n)),
        )
    else:
        capacity = new_replica_capacity
    return ExpertLoad(
        num_replicas=len(replicas),
        num_outstanding_tokens=sum(r.load.num_outstanding_tokens for r in replicas) + sum(q.num_tokens for q in unplaced),
        num_outstanding_requests=sum(r.load.num_outstanding_requests for r in replicas) + len(unplaced),
        num_waiting_unplaced=len(unplaced),
        replica_capacity=capacity,
    )


# --------------------------------------------------------------------------------------------- the small steps


def smooth(num_current: int, raw_desired: float, settings: AutoscaleSettings) -> int:
    """Move part of the way from the current count to the raw desired one; rounds up (capacity first)."""
    factor = settings.upscaling_factor if raw_desired > num_current else settings.downscaling_factor
    stepped = num_current + factor * (raw_desired - num_current)
    if raw_desired <= 0 and stepped <= 1:
        return 0  # no work at all: rounding up must not pin the last replica (keep-alive decides that)
    return max(0, math.ceil(stepped - 1e-9))


def bound(num_desired: int, settings: AutoscaleSettings, floor: int, min_replicas: int) -> int:
    return max(min_replicas, floor, min(settings.max_replicas, num_desired))


def delay(
    num_current: int,
    num_desired: int,
    pending: PendingScale | None,
    now_s: Seconds,
    settings: AutoscaleSettings,
    *,
    is_urgent: bool,
) -> tuple[int, PendingScale, bool]:
    """(replicas to have now, new hysteresis memory, whether the change waits for its delay)."""
    direction = (
        ScaleDirection.UP if num_desired > num_current
        else ScaleDirection.DOWN if num_desired < num_current else ScaleDirection.HOLD
    )
    if pending is None or pending.direction is not direction:
        pending = PendingScale(direction, now_s)
    if direction is ScaleDirection.HOLD or is_urgent:
        return num_desired, pending, False
    wait_s = settings.upscale_delay_s if direction is ScaleDirection.UP else settings.downscale_delay_s
    if now_s - pending.since_at >= wait_s:
        return num_desired, pending, False
    return num_current, pending, True


# --------------------------------------------------------------------------------------------- strategies


class AutoscalePolicy(abc.ABC):
    def __init__(self, settings: AutoscaleSettings) -> None:
        self.settings = settings

    @abc.abstractmethod
    def raw_desired(self, load: ExpertLoad) -> float:
        """Replicas (fractional) needed to carry `load` at the target utilization."""

    def expert_load(self, snapshot: FleetSnapshot, expert_id: ExpertId, new_replica_capacity: EngineCapacity) -> ExpertLoad:
        return expert_load(snapshot, expert_id, new_replica_capacity)

    def capacity_at_slo(
        self, snapshot: FleetSnapshot, expert_id: ExpertId, demand: Demand | None = None
    ) -> Callable[[ServingEstimate], float]:
        """Requests/s one replica with this estimate takes at the SLO, for requests of the expert's recent size
        (`demand`, the expert's demand now if not given)."""
        spec = snapshot.experts[expert_id]
        if demand is None:
            demand = snapshot.activity_of(expert_id).demand(snapshot.now_s)
        prompt = demand.mean_prompt_tokens or TYPICAL_PROMPT_TOKENS
        output = demand.mean_output_tokens or TYPICAL_OUTPUT_TOKENS
        return lambda e: predict.replica_requests_per_s_at_slo(e, spec, prompt, output, self.settings.slo_percentile)

    def retire_order(self, snapshot: FleetSnapshot, expert_id: ExpertId) -> tuple[ReplicaId, ...]:
        """Which replicas a scale-down retires first: least capacity at the SLO (`capacity_at_slo`) per USD first
        — a slow or pricey replica goes before a cost-efficient one, and one that cannot keep the SLO for the
        expert's requests (capacity 0) before any that can — then the least loaded.

        Why not the least loaded first: of an expert's replicas on two kinds, the slow one has the longer queue,
        so that rule retired the fast one and left the slow one alone with the next burst (the code-like trace:
        a 51B expert's H100 replica retired, its A100 one kept, p99 TTFT +560 ms; docs/simulator.md)."""
        capacity = self.capacity_at_slo(snapshot, expert_id)

        def efficiency(replica) -> float:
            estimate = snapshot.estimate(expert_id, replica.hardware)
            if estimate is None:
                return 0.0
            usd = replica_usd_per_hour(snapshot.workers[replica.worker_id], estimate)
            return capacity(estimate) / usd if usd > 0 else math.inf

        replicas = snapshot.accepting_replicas_of(expert_id)
        return tuple(r.replica_id for r in sorted(
            replicas, key=lambda r: (efficiency(r), r.load.num_outstanding_tokens, r.replica_id)))

    def is_replacement(self, snapshot: FleetSnapshot, expert_id: ExpertId, retiring: tuple[ReplicaId, ...]) -> bool:
        """Whether retiring `retiring` (first in `retire_order`) swaps them for replicas of a better kind that
        are already warm, rather than shrinking capacity: then the downscale delay does not apply. False unless
        the strategy says otherwise (demand-at-slo does)."""
        return False

    def decide(
        self,
        snapshot: FleetSnapshot,
        state: AutoscaleState,
        new_replica_capacity: Mapping[ExpertId, EngineCapacity],
        keepalive_floor: Mapping[ExpertId, int],
    ) -> tuple[dict[ExpertId, ScaleDecision], AutoscaleState]:
        """One decision per non-external expert that has a capacity estimate, and the new hysteresis state.

        Guarantees: `min_for(expert) ≤ num_desired ≤ max_replicas` unless the keep-alive floor or waiting requests
        demand more (then at least 1, still ≤ max_replicas); an expert with waiting unplaced requests and no
        replica gets `num_desired ≥ 1` immediately.
        """
        decisions, pending = {}, dict(state.pending)
        for expert_id, spec in snapshot.experts.items():
            if spec.is_external or expert_id not in new_replica_capacity:
                continue
            load = self.expert_load(snapshot, expert_id, new_replica_capacity[expert_id])
            current = load.num_replicas
            needs_wake = load.num_waiting_unplaced > 0 and current == 0
            floor = max(keepalive_floor.get(expert_id, 0), 1 if needs_wake else 0)
            desired = bound(smooth(current, self.raw_desired(load), self.settings), self.settings, floor,
                            self.settings.min_for(expert_id))
            retire_all = self.retire_order(snapshot, expert_id) if desired < current else ()
            is_replacement = self.is_replacement(snapshot, expert_id, retire_all[: current - desired])
            now_n, pending[expert_id], is_delayed = delay(
                current, desired, pending.get(expert_id), snapshot.now_s, self.settings,
                is_urgent=needs_wake or is_replacement,
            )
            retire = retire_all if now_n < current else ()
            decisions[expert_id] = ScaleDecision(expert_id, current, now_n, self._reason(load, desired, now_n,
                                                                                          floor, needs_wake, is_delayed),
                                                 retire)
        return decisions, AutoscaleState(pending)

    def _reason(self, load: ExpertLoad, desired: int, now_n: int, floor: int, needs_wake: bool, is_delayed: bool):
        current = load.num_replicas
        detail = (f"{load.num_outstanding_tokens} tokens / {load.num_outstanding_requests} requests outstanding "
                  f"on {current} replica(s)"
                  + (f", {load.num_replicas_for_demand:.1f} for the arrival rate" if load.num_replicas_for_demand else "")
                  + f"; want {desired}")
        if needs_wake:
            return Reason(AutoscaleReasonCode.WAKE_FOR_WAITING_REQUESTS, detail)
        if is_delayed:
            return Reason(AutoscaleReasonCode.WAITING_FOR_DELAY, detail)
        if now_n > current:
            code = AutoscaleReasonCode.KEEPALIVE_FLOOR if floor >= now_n and self.raw_desired(load) < now_n \
                else AutoscaleReasonCode.SCALE_UP
            return Reason(code, detail)
        if now_n < current:
            return Reason(AutoscaleReasonCode.SCALE_DOWN, detail)
        return Reason(AutoscaleReasonCode.STEADY, detail)


AUTOSCALE_POLICIES: Registry[AutoscaleKind, AutoscalePolicy] = Registry("autoscale")


@AUTOSCALE_POLICIES.register(AutoscaleKind.IN_FLIGHT_TOKENS)
class InFlightTokensAutoscale(AutoscalePolicy):
    """Outstanding tokens against each replica's KV capacity, and (`count_engine_time`) the engine time the
    recent arrivals take against each replica's time: whichever needs more replicas.

    Why both: KV fill measures memory, not speed. Requests with long prompts and short answers (code completion:
    ~1,500-token prompts, ~13-token answers) leave the KV cache nearly empty while prefill keeps the engine
    busy, so KV fill alone kept one replica of a 51B expert whose prefills queued past the TTFT SLO for minutes.
    Engine time is Little's law in seconds: requests/s × (prefill + the request's share of full-batch decode
    steps, `predict.request_busy_s`, from the engine profile) is the replicas' busy fraction, kept within
    `target_utilization`.
    Only busy experts (requests outstanding) are sized by their rate; an idle one is left to keep-alive.
    """

    def expert_load(self, snapshot: FleetSnapshot, expert_id: ExpertId, new_replica_capacity: EngineCapacity) -> ExpertLoad:
        load = expert_load(snapshot, expert_id, new_replica_capacity)
        if not self.settings.count_engine_time or load.num_outstanding_requests == 0:
            return load
        demand = snapshot.activity_of(expert_id).demand(snapshot.now_s)
        if demand.requests_per_s <= 0:
            return load
        prompt = demand.mean_prompt_tokens or TYPICAL_PROMPT_TOKENS
        output = demand.mean_output_tokens or TYPICAL_OUTPUT_TOKENS
        utilization = self.settings.target_utilization

        def capacity(estimate: ServingEstimate) -> float:
            return utilization / predict.request_busy_s(estimate, prompt, output)

        needed = _replicas_for_rate(snapshot, expert_id, demand.requests_per_s, capacity, self.settings.max_replicas)
        return load if needed is None else evolve(load, num_replicas_for_demand=needed)

    def raw_desired(self, load: ExpertLoad) -> float:
        kv_fill = load.num_outstanding_tokens / (self.settings.target_utilization * load.replica_capacity.kv_capacity_tokens)
        return max(kv_fill, load.num_replicas_for_demand)


@AUTOSCALE_POLICIES.register(AutoscaleKind.QUEUE_DEPTH)
class QueueDepthAutoscale(AutoscalePolicy):
    """Outstanding sequences against each replica's batch size (Ray Serve's target_ongoing_requests)."""

    def raw_desired(self, load: ExpertLoad) -> float:
        return load.num_outstanding_requests / (self.settings.target_utilization * load.replica_capacity.max_num_seqs)


@AUTOSCALE_POLICIES.register(AutoscaleKind.DEMAND_AT_SLO)
class DemandAtSloAutoscale(AutoscalePolicy):
    """The expert's recent arrival rate (`ExpertActivity.demand`: requests/s and their mean prompt and output
    lengths) over what one of its replicas can take while meeting the TTFT SLO at `slo_percentile` and the TPOT
    SLO (`predict.replica_requests_per_s_at_slo`, the capacity cost-aware placement prices with) — and never
    fewer than its outstanding tokens fill in KV cache.

    Why not a fixed fraction of KV cache: KV size says nothing about speed. A 2-GPU H100 replica of a 50B model
    and a 24 GB L4 replica of a 9B model differ 7× in KV tokens but 2.5× the other way in prefill time, so one
    utilization target over-provisions the first and under-provisions the second. Only busy experts (requests
    outstanding) are sized by demand; an idle one is left to keep-alive.
    """

    def expert_load(self, snapshot: FleetSnapshot, expert_id: ExpertId, new_replica_capacity: EngineCapacity) -> ExpertLoad:
        load = expert_load(snapshot, expert_id, new_replica_capacity)
        if load.num_outstanding_requests == 0:
            return load
        demand = snapshot.activity_of(expert_id).demand(snapshot.now_s)
        requests_per_s = demand.requests_per_s * self.settings.demand_headroom
        if requests_per_s <= 0:
            return load
        needed = _replicas_for_rate(snapshot, expert_id, requests_per_s,
                                    self.capacity_at_slo(snapshot, expert_id, demand), self.settings.max_replicas)
        return load if needed is None else evolve(load, num_replicas_for_demand=needed)

    def is_replacement(self, snapshot: FleetSnapshot, expert_id: ExpertId, retiring: tuple[ReplicaId, ...]) -> bool:
        """*Retire on replacement*: the replicas kept are all warm, all started after the retiring ones, and none
        is of a kind being retired — newer replicas of a faster-per-USD kind have taken over (e.g. a slow replica
        placed while the expert's load was unknown, once the better kind started for that load is warm).

        Why no delay: the downscale delay is hysteresis against demand that dips and returns; here capacity was
        swapped, and if demand rises again the shortfall is added in the best kind, not the retired one. A
        scale-down that retires the *newer* replicas (a burst ending) or one of the kind kept still waits.
        """
        if not retiring:
            return False
        retired = [snapshot.replicas[r] for r in retiring]
        kept = [r for r in snapshot.accepting_replicas_of(expert_id) if r.replica_id not in set(retiring)]
        kinds = {r.hardware for r in retired}
        last_retired_at = max(r.created_at for r in retired)
        return bool(kept) and all(r.is_warm and r.hardware not in kinds and r.created_at > last_retired_at
                                  for r in kept)

    def raw_desired(self, load: ExpertLoad) -> float:
        return max(load.num_outstanding_tokens / load.replica_capacity.kv_capacity_tokens, load.num_replicas_for_demand)


def _replicas_for_rate(
    snapshot: FleetSnapshot, expert_id: ExpertId, requests_per_s: float,
    capacity: Callable[[ServingEstimate], float], max_replicas: int,
) -> float | None:
    """Replicas (fractional) that carry `requests_per_s` when one with estimate `e` carries `capacity(e)`
    requests/s; None when the expert has no estimate.

    The existing replicas count best first; any shortfall is counted in replicas of the best kind (where
    cost-aware placement puts a loaded expert), so a slow replica left from low load does not multiply the count.
    """
    estimates = _estimates_of(snapshot, expert_id)
    if not estimates:
        return None
    have = sorted((capacity(e) for r in snapshot.accepting_replicas_of(expert_id)
                   if (e := snapshot.estimate(expert_id, r.hardware)) is not None), reverse=True)
    needed, remaining = 0.0, requests_per_s
    for per_replica in have:
        if remaining <= per_replica:
            needed += remaining / per_replica
            remaining = 0.0
            break
        needed, remaining = needed + 1.0, remaining - per_replica
    if remaining > 0:
        best = max(capacity(e) for e in estimates)
        needed += remaining / best if best > 0 else float(max_replicas)
    return needed


def _estimates_of(snapshot: FleetSnapshot, expert_id: ExpertId) -> tuple[ServingEstimate, ...]:
    """The expert's estimates, one per hardware kind (a function of the catalogue: computed once per catalogue)."""
    memo = snapshot.catalog_memo()
    estimates = memo.get((_ESTIMATES_KEY, expert_id))
    if estimates is None:
        estimates = memo[(_ESTIMATES_KEY, expert_id)] = tuple(
            e for (x, _), e in snapshot.estimates.items() if x == expert_id)
    return estimates


_ESTIMATES_KEY = "autoscale.estimates_of"


def make_autoscale(settings: AutoscaleSettings) -> AutoscalePolicy:
    return AUTOSCALE_POLICIES.create(settings)
