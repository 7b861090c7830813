"""Autoscaling: how many replicas each expert should have, from its outstanding work.

Composed like Ray Serve's `autoscaling_policy`, as small steps:

1. `raw_desired`  — outstanding work ÷ what one replica should carry (the strategy: tokens or queue depth);
2. `smooth`       — move only a fraction of the way (upscaling_factor / downscaling_factor);
3. `bound`        — clamp to [min_replicas, max_replicas] and to the keep-alive floor;
4. `delay`        — act on an upscale/downscale only after it has been wanted for upscale_delay_s /
                    downscale_delay_s (hysteresis), except 0 → 1 with waiting requests, which is immediate.

Never on requests/s alone: LLM requests differ 100× in cost, so the load measures are tokens and sequences.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import math
from collections.abc import Mapping

from pydantic import Field, model_validator

from switchboard.fleet.state import EngineCapacity, FleetSnapshot
from switchboard.policies.base import PolicySettings, Reason, Registry
from switchboard.types import ExpertId, Seconds


class AutoscaleKind(str, enum.Enum):
    IN_FLIGHT_TOKENS = "in-flight-tokens"
    QUEUE_DEPTH = "queue-depth"


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


@dataclasses.dataclass(frozen=True, slots=True)
class PendingScale:
    """Hysteresis memory: since when the same direction has been wanted."""

    direction: ScaleDirection
    since_at: Seconds


@dataclasses.dataclass(frozen=True, slots=True)
class AutoscaleState:
    pending: Mapping[ExpertId, PendingScale] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class ScaleDecision:
    expert_id: ExpertId
    num_current: int
    num_desired: int
    reason: Reason

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
            load = expert_load(snapshot, expert_id, new_replica_capacity[expert_id])
            current = load.num_replicas
            needs_wake = load.num_waiting_unplaced > 0 and current == 0
            floor = max(keepalive_floor.get(expert_id, 0), 1 if needs_wake else 0)
            desired = bound(smooth(current, self.raw_desired(load), self.settings), self.settings, floor,
                            self.settings.min_for(expert_id))
            now_n, pending[expert_id], is_delayed = delay(
                current, desired, pending.get(expert_id), snapshot.now_s, self.settings, is_urgent=needs_wake
            )
            decisions[expert_id] = ScaleDecision(expert_id, current, now_n, self._reason(load, desired, now_n,
                                                                                          floor, needs_wake, is_delayed))
        return decisions, AutoscaleState(pending)

    def _reason(self, load: ExpertLoad, desired: int, now_n: int, floor: int, needs_wake: bool, is_delayed: bool):
        current = load.num_replicas
        detail = (f"{load.num_outstanding_tokens} tokens / {load.num_outstanding_requests} requests outstanding "
                  f"on {current} replica(s); want {desired}")
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
    """Outstanding tokens against each replica's KV capacity: a long prompt weighs what it costs."""

    def raw_desired(self, load: ExpertLoad) -> float:
        return load.num_outstanding_tokens / (self.settings.target_utilization * load.replica_capacity.kv_capacity_tokens)


@AUTOSCALE_POLICIES.register(AutoscaleKind.QUEUE_DEPTH)
class QueueDepthAutoscale(AutoscalePolicy):
    """Outstanding sequences against each replica's batch size (Ray Serve's target_ongoing_requests)."""

    def raw_desired(self, load: ExpertLoad) -> float:
        return load.num_outstanding_requests / (self.settings.target_utilization * load.replica_capacity.max_num_seqs)


def make_autoscale(settings: AutoscaleSettings) -> AutoscalePolicy:
    return AUTOSCALE_POLICIES.create(settings)
