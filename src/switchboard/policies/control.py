"""The control step: every policy composed into one pure function of (fleet snapshot, events, policy state).

    result = plane.step(snapshot, state, events, rng)
    for action in result.actions: execute(action)        # live: spawn/stop processes; sim: schedule events
    state = result.state                                  # keep for the next step

Order inside a step (each stage sees the fleet as the earlier stages left it — `result.snapshot`):

1. requests — `unplaced` ones first (oldest), then `RequestArrived` events: admission → balancer → assign,
   or start a replica and queue on it, or reject with 429/503 + Retry-After. Every request ends the step
   assigned, forwarded or rejected: none is left behind or handled twice.
2. `WakeExpert` events (cold-start hiding woke it in the background).
3. keep-alive: scale idle experts to zero, start due pre-warms, announce future ones (`PrewarmAt`).
4. route-aware pre-warming from `RoutePredicted` events; re-placement (`policies/replace.py`): starts the
   router's demand shows are on a kind too slow for it (`replace_starts`), and warm replicas another kind
   with room now serves for less (`replace_warm`; the old one is drained once the new one is warm).
5. autoscaling with the keep-alive floor; new replicas through placement.
6. migration of queued requests.
7. stop draining replicas that have finished their work.

Call it on an interval and on events (a request arriving at a cold expert, a replica becoming warm, a
`PrewarmAt` time coming due). It is cheap and deterministic given the same inputs and `rng` seed.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import random
import types
from collections.abc import Mapping, Sequence

from pydantic import Field

from switchboard.fleet.state import EngineCapacity, FleetSnapshot, QueuedRequest, Replica
from switchboard.policies import predict, replace
from switchboard.policies.actions import (
    Action,
    AssignRequest,
    DrainReplica,
    ForwardUpstream,
    MigrateRequest,
    PrewarmAt,
    ReactivateReplica,
    RejectRequest,
    StartReplica,
    StopReplica,
)
from switchboard.policies.admission import AdmissionSettings, make_admission
from switchboard.policies.autoscale import AutoscaleSettings, AutoscaleState, ScaleDecision, make_autoscale
from switchboard.policies.balance import Balanced, BalanceSettings, make_balance
from switchboard.policies.base import PolicySettings, Reason
from switchboard.policies.devices import devices_reachable
from switchboard.policies.keepalive import (
    IdleHistogram,
    KeepAliveAction,
    KeepAliveDecision,
    KeepAliveReasonCode,
    KeepAliveSettings,
    KeepAliveState,
    decide_from_window,
    make_keepalive,
)
from switchboard.policies.migration import MigrationSettings, make_migration
from switchboard.policies.ordering import QueueOrderSettings, make_queue_order
from switchboard.policies.placement import PlacementSettings, PlacementStatus, Unplaceable, make_placement
from switchboard.policies.plan import Plan
from switchboard.policies.routing import (
    ExpertCandidate,
    PrewarmSettings,
    PrewarmState,
    RouteDecision,
    RoutePrediction,
    RoutingSettings,
    make_prewarm,
    make_routing,
)
from switchboard.types import ExpertId, ReplicaId, ReplicaState
from switchboard.frozen import fast_init


class ControlSettings(PolicySettings):
    """Every policy's settings; the `control_plane:` section of a config."""

    keepalive: KeepAliveSettings = Field(default_factory=KeepAliveSettings)
    autoscale: AutoscaleSettings = Field(default_factory=AutoscaleSettings)
    placement: PlacementSettings = Field(default_factory=PlacementSettings)
    balance: BalanceSettings = Field(default_factory=BalanceSettings)
    admission: AdmissionSettings = Field(default_factory=AdmissionSettings)
    queue_order: QueueOrderSettings = Field(default_factory=QueueOrderSettings)
    migration: MigrationSettings = Field(default_factory=MigrationSettings)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    prewarm: PrewarmSettings = Field(default_factory=PrewarmSettings)
    evict_idle_for_memory: bool = Field(
        True, description="When no worker has room for a needed replica, stop the longest-idle one of another expert."
    )
    replace_starts: bool = Field(
        True, description="Re-place a start: when an expert's only replica is still starting, with nothing queued "
        "on it, on a kind that cannot carry the load the router now shows, and a faster kind carries it for less, "
        "start one there and stop the first (cost-aware placement only)."
    )
    replace_warm: bool = Field(
        True, description="Re-place a warm replica: when an expert's only replica has been warm for "
        "`replace_warm_after_s` and another kind, with room now, serves its demand for `replace_warm_min_saving` "
        "less, start one there and drain the old one once the new one is warm (cost-aware placement only)."
    )
    replace_warm_after_s: float = Field(
        300.0, ge=0, description="How long a replica must have been warm before it is re-placed for cost (the "
        "demand it is priced at has then held for five of its 60 s half-lives)."
    )
    replace_warm_check_interval_s: float = Field(
        60.0, ge=0, description="How often warm replicas are priced against the other kinds (a move is never urgent)."
    )
    replace_warm_cooldown_s: float = Field(
        1800.0, ge=0, description="At most one re-placement of a warm replica per expert in this long."
    )
    replace_warm_min_saving: float = Field(
        0.15, ge=0, lt=1, description="The saving per hour, as a fraction, that justifies a re-placement's cold start."
    )
    prewarm_grace_s: float = Field(
        60.0, ge=0, description="A replica that has served nothing since it became warm is kept at least this long."
    )


# --------------------------------------------------------------------------------------------- events


@dataclasses.dataclass(frozen=True, slots=True)
class RequestArrived:
    """A routed request for `request.expert_id`, not in any queue yet (record its arrival with
    `ops.record_arrival` before the step)."""

    request: QueuedRequest


@dataclasses.dataclass(frozen=True, slots=True)
class WakeExpert:
    expert_id: ExpertId
    reason: Reason


@fast_init
@dataclasses.dataclass(frozen=True, slots=True)
class RoutePredicted:
    prediction: RoutePrediction


Event = RequestArrived | WakeExpert | RoutePredicted


@dataclasses.dataclass(frozen=True, slots=True)
class ControlState:
    """All policy state carried between steps."""

    keepalive: KeepAliveState = KeepAliveState()
    autoscale: AutoscaleState = AutoscaleState()
    prewarm: PrewarmState = PrewarmState()
    num_replicas_created: int = 0
    replacing: tuple[tuple[ExpertId, ReplicaId, ReplicaId], ...] = ()
    """Re-placements of warm replicas under way: (expert, old replica, new replica still starting)."""
    replaced_at: tuple[tuple[ExpertId, float], ...] = ()
    """When each expert's warm replica was last re-placed (for `replace_warm_cooldown_s`)."""
    replace_warm_checked_at: float = -math.inf
    """When warm replicas were last looked at for a cheaper kind (every `replace_warm_check_interval_s`)."""


@dataclasses.dataclass(frozen=True, slots=True)
class StepResult:
    actions: tuple[Action, ...]
    state: ControlState
    snapshot: FleetSnapshot
    """The input fleet with every action applied (what the fleet will look like once they take effect)."""
    keepalive: Mapping[ExpertId, KeepAliveDecision]
    scaling: Mapping[ExpertId, ScaleDecision]


@dataclasses.dataclass(frozen=True, slots=True)
class FastAdmission:
    """Outcome of `ControlPlane.admit_fast`: final `actions`, or `needs_step` (and no actions)."""

    actions: tuple[Action, ...]
    needs_step: bool


class ControlReasonCode(str, enum.Enum):
    UNKNOWN_EXPERT = "unknown-expert"
    WAKE_REQUESTED = "wake-requested"
    DRAINED = "drained"
    START_FAILED = "start-failed"
    EVICTED = "evicted-for-memory"
    ENGINE_LOST = "engine-lost"


# --------------------------------------------------------------------------------------------- the plan


def _never_served(replica: Replica) -> bool:
    warm_at = max((t.at_s for t in replica.transitions if t.to_state is ReplicaState.WARM), default=replica.created_at)
    return replica.last_busy_at <= warm_at


def _new_replica_capacity(snapshot: FleetSnapshot) -> Mapping[ExpertId, EngineCapacity]:
    """Per expert, the smallest capacity among its hardware options (scale for the worst case). Read-only:
    computed once per catalogue (`FleetSnapshot.catalog_memo`)."""
    memo = snapshot.catalog_memo()
    capacity = memo.get(_NEW_REPLICA_CAPACITY_KEY)
    if capacity is None:
        smallest: dict[ExpertId, EngineCapacity] = {}
        for (expert_id, _), estimate in sorted(snapshot.estimates.items()):
            c = estimate.capacity
            if expert_id not in smallest or c.kv_capacity_tokens < smallest[expert_id].kv_capacity_tokens:
                smallest[expert_id] = c
        capacity = memo[_NEW_REPLICA_CAPACITY_KEY] = types.MappingProxyType(smallest)
    return capacity


_NEW_REPLICA_CAPACITY_KEY = "control.new_replica_capacity"


class ControlPlane:
    """The configured policies. Stateless itself: all state is in `ControlState`, passed in and returned."""

    def __init__(self, settings: ControlSettings | None = None) -> None:
        self.settings = settings or ControlSettings()
        s = self.settings
        self.keepalive = make_keepalive(s.keepalive)
        self.autoscale = make_autoscale(s.autoscale)
        self.placement = make_placement(s.placement, sleep_after_s=s.keepalive.sleep_after_s)
        self.balance = make_balance(s.balance)
        self.admission = make_admission(s.admission)
        self.queue_order = make_queue_order(s.queue_order)
        self.migration = make_migration(s.migration)
        self.routing = make_routing(s.routing)
        self.prewarm = make_prewarm(s.prewarm)

    def route(
        self, snapshot: FleetSnapshot, candidates: Sequence[ExpertCandidate], usd_weight: float | None = None,
        stand_in_ids: Sequence[ExpertId] = (), num_prompt_tokens: int | None = None,
    ) -> RouteDecision:
        """Fleet-aware choice among the router's candidates (λ = `usd_weight` if given; `stand_in_ids` and
        `num_prompt_tokens` as in `RoutingPolicy.route`). Pass `WakeExpert` events for
        `decision.wake_expert_ids` (and a `RoutePredicted`) to the next step."""
        return self.routing.route(snapshot, candidates, usd_weight, stand_in_ids, num_prompt_tokens)

    def plan_start(
        self, snapshot: FleetSnapshot, state: ControlState, expert_id: ExpertId, reason: Reason
    ) -> tuple[tuple[Action, ...] | Unplaceable, ControlState]:
        """The actions that start a replica of `expert_id` where placement puts it, with a fresh replica id
        (outside a step, e.g. experts configured warm at start-up): a `StartReplica`, after the `EvictAsleep`s
        placement asked for; and the state that reserves the id."""
        plan = Plan(snapshot, state.num_replicas_created)
        outcome = self._start(plan, expert_id, reason)
        new_state = dataclasses.replace(state, num_replicas_created=plan.num_replicas_created)
        if isinstance(outcome, Unplaceable):
            return outcome, state
        return tuple(plan.actions), new_state

    def admit_fast(self, snapshot: FleetSnapshot, request: QueuedRequest, rng: random.Random) -> FastAdmission:
        """The per-request fast path a gateway takes without running a whole step.

        Warm admissions (balanced onto a warm replica), external forwards and rejections that wake nothing are
        final here and give the same action the step would. Anything that starts a replica — or queues behind
        one — returns `needs_step`: run `step` with a `RequestArrived(request)` event.
        """
        spec = snapshot.experts.get(request.expert_id)
        if spec is None:
            return FastAdmission((RejectRequest(request, 503, 0, Reason(ControlReasonCode.UNKNOWN_EXPERT,
                                                                        request.expert_id)),), False)
        decision = self.admission.admit(snapshot, request, reclaim_idle_memory=self.settings.evict_idle_for_memory)
        if spec.is_external:
            return FastAdmission((ForwardUpstream(request, decision.reason),), False)
        if decision.wake_expert:
            return FastAdmission((), True)
        if not decision.verdict.is_admitted:
            return FastAdmission((RejectRequest(request, decision.status_code, decision.retry_after_s,
                                                decision.reason),), False)
        outcome = self.balance.choose(snapshot, request, rng)
        if not isinstance(outcome, Balanced) or not snapshot.replicas[outcome.replica_id].is_warm:
            return FastAdmission((), True)
        ttft_s = predict.ttft_s(snapshot, snapshot.replicas[outcome.replica_id], request.num_prompt_tokens,
                                is_background=request.is_background)
        return FastAdmission((AssignRequest(request, outcome.replica_id, ttft_s, False, decision.reason),), False)

    def step(
        self,
        snapshot: FleetSnapshot,
        state: ControlState,
        events: Sequence[Event] = (),
        rng: random.Random | None = None,
    ) -> StepResult:
        rng = rng if rng is not None else random.Random(0)
        plan = Plan(snapshot, state.num_replicas_created)
        now_s = snapshot.now_s

        unplaced_ids = {r.request_id for r in snapshot.unplaced}
        for request in snapshot.unplaced:
            self._handle_request(plan, request, rng)
        for event in events:
            # An arrival the driver also parked in `unplaced` was handled above: handle each request once.
            if isinstance(event, RequestArrived) and event.request.request_id not in unplaced_ids:
                self._handle_request(plan, event.request, rng)
        for event in events:
            if isinstance(event, WakeExpert) and self._can_start(plan, event.expert_id):
                self._start(plan, event.expert_id, event.reason)

        cold_start_s = {e: predict.wake_option(plan.snapshot, e).cold_start_s for e in plan.snapshot.experts}
        keepalive, keepalive_state = self.keepalive.decide(plan.snapshot, state.keepalive, cold_start_s)
        zeroed = self._apply_keepalive(plan, keepalive, keepalive_state.histograms, cold_start_s)

        predictions = [e.prediction for e in events if isinstance(e, RoutePredicted)]
        prewarm_state = self.prewarm.observe(state.prewarm, predictions, now_s)
        for wanted in self.prewarm.wanted(plan.snapshot, prewarm_state):
            # Keep-alive has the last word on an expert it unloads in this step, and on one asleep whose request
            # wakes it within its SLO (the sleep tier): a start ahead of demand would only undo its decision.
            if wanted.expert_id in zeroed or keepalive[wanted.expert_id].reason.code is KeepAliveReasonCode.SLEEP:
                continue
            self._start(plan, wanted.expert_id, wanted.reason)

        if self.settings.replace_starts:
            replace.replace_starts(plan, self.placement,
                                   lambda e: self.prewarm.routed_requests_per_s(prewarm_state, e))
        replacing, replaced_at, checked_at = state.replacing, dict(state.replaced_at), state.replace_warm_checked_at
        if self.settings.replace_warm:
            # Finishing a move is checked every step; looking for new ones (pricing every kind for every expert)
            # only every `replace_warm_check_interval_s`: a move is never urgent.
            look = now_s - checked_at >= self.settings.replace_warm_check_interval_s
            replacing, replaced_at = replace.replace_warm(
                plan, self.placement, replacing, replaced_at, look_for_new=look,
                after_s=self.settings.replace_warm_after_s, cooldown_s=self.settings.replace_warm_cooldown_s,
                min_saving=self.settings.replace_warm_min_saving)
            checked_at = now_s if look else checked_at

        floors = {e: int(d.wants_replica) for e, d in keepalive.items()}
        scaling, autoscale_state = self.autoscale.decide(
            plan.snapshot, state.autoscale, _new_replica_capacity(plan.snapshot), floors
        )
        for expert_id, decision in scaling.items():
            if expert_id not in zeroed:
                self._apply_scale(plan, decision)

        for move in self.migration.plan(plan.snapshot):
            plan.do(MigrateRequest(move.request_id, move.from_replica_id, move.to_replica_id, move.reason))

        for replica_id, replica in sorted(plan.snapshot.replicas.items()):
            if replica.state is ReplicaState.DRAINING and replica.load.num_outstanding_requests == 0:
                plan.do(StopReplica(replica_id, Reason(ControlReasonCode.DRAINED, "drained: no work left")))

        replaced_at = replace.cooldowns_after_evictions(snapshot, plan.actions, replaced_at)
        new_state = ControlState(keepalive_state, autoscale_state, prewarm_state, plan.num_replicas_created, replacing,
                                 tuple(sorted(replaced_at.items())), checked_at)
        return StepResult(tuple(plan.actions), new_state, plan.snapshot, keepalive, scaling)

    # ---- stages

    def _can_start(self, plan: Plan, expert_id: ExpertId) -> bool:
        spec = plan.snapshot.experts.get(expert_id)
        return spec is not None and not spec.is_external and not plan.snapshot.accepting_replicas_of(expert_id)

    def _start(self, plan: Plan, expert_id: ExpertId, why: Reason, *, may_evict: bool = False) -> ReplicaId | Unplaceable:
        """Place and start a replica. Only starts that serve waiting work (`may_evict`) evict idle replicas:
        speculative ones (pre-warms, wakes) must not push out replicas that might be used."""
        outcome = self.placement.place(plan.snapshot, expert_id)
        while (isinstance(outcome, Unplaceable) and outcome.status in (PlacementStatus.NO_MEMORY, PlacementStatus.NO_DEVICES)
               and may_evict and self.settings.evict_idle_for_memory and self._evict_one_idle(plan, expert_id)):
            outcome = self.placement.place(plan.snapshot, expert_id)
        if isinstance(outcome, Unplaceable):
            return outcome
        return plan.start_on(outcome.candidate, expert_id, Reason(why.code, f"{why.detail}; on {outcome.reason.detail}"))

    def _evict_one_idle(self, plan: Plan, expert_id: ExpertId) -> bool:
        """Stop the longest-idle warm replica of another expert on hardware that could host `expert_id`, to
        make room for it (an idle replica is worth less than a waiting request). Returns whether one was."""
        now_s = plan.snapshot.now_s
        snapshot = plan.snapshot
        need_gb = min((e.memory_gb for (eid, _), e in snapshot.estimates.items() if eid == expert_id), default=0.0)
        hosts = {w.hardware for w in snapshot.workers.values() if snapshot.estimate(expert_id, w.hardware)}
        idle = [r for r in snapshot.replicas.values()
                if r.is_warm and r.expert_id != expert_id and r.hardware in hosts
                and r.load.num_outstanding_requests == 0
                and snapshot.memory_free_gb(r.worker_id)
                + predict.reclaimable_gb(snapshot, r.worker_id, expert_id) >= need_gb - 1e-9
                and devices_reachable(snapshot, snapshot.workers[r.worker_id], snapshot.estimates[(expert_id, r.hardware)],
                                      predict.reclaimable_devices(snapshot, r.worker_id, expert_id))]
        if not idle:
            return False
        victim = max(idle, key=lambda r: (r.idle_for_s(now_s), r.replica_id))
        reason = Reason(ControlReasonCode.EVICTED, f"idle {victim.idle_for_s(now_s):.0f}s; its memory is needed by {expert_id}")
        plan.do(DrainReplica(victim.replica_id, reason))
        plan.do(StopReplica(victim.replica_id, reason))
        return True

    def _handle_request(self, plan: Plan, request: QueuedRequest, rng: random.Random) -> None:
        snapshot = plan.snapshot
        spec = snapshot.experts.get(request.expert_id)
        if spec is None:
            plan.do(RejectRequest(request, 503, 0, Reason(ControlReasonCode.UNKNOWN_EXPERT, request.expert_id)))
            return
        decision = self.admission.admit(snapshot, request, reclaim_idle_memory=self.settings.evict_idle_for_memory)
        if spec.is_external:
            plan.do(ForwardUpstream(request, decision.reason))
            return
        if not decision.verdict.is_admitted:
            plan.do(RejectRequest(request, decision.status_code, decision.retry_after_s, decision.reason))
            if decision.wake_expert and self._can_start(plan, request.expert_id):
                self._start(plan, request.expert_id, decision.reason)
            return
        accepting = plan.snapshot.accepting_replicas_of(request.expert_id)
        may_add = len(accepting) < self.settings.autoscale.max_replicas
        if not accepting or (decision.wake_expert and may_add):
            started = self._start(plan, request.expert_id, decision.reason, may_evict=True)
            if isinstance(started, Unplaceable):
                plan.do(RejectRequest(request, 503, max(1, round(self.settings.admission.retry_after_unavailable_s)),
                                      Reason(ControlReasonCode.START_FAILED, started.reason.detail)))
                return
            replica_id = started
        else:
            outcome = self.balance.choose(plan.snapshot, request, rng)
            if not isinstance(outcome, Balanced):  # unreachable: accepting replicas exist
                raise RuntimeError(f"balancer found no replica for {request.expert_id}: {outcome.reason}")
            replica_id = outcome.replica_id
        replica = plan.snapshot.replicas[replica_id]
        ttft_s = predict.ttft_s(plan.snapshot, replica, request.num_prompt_tokens, is_background=request.is_background)
        plan.do(AssignRequest(request, replica_id, ttft_s, not replica.is_warm, decision.reason))

    def _apply_keepalive(
        self,
        plan: Plan,
        decisions: Mapping[ExpertId, KeepAliveDecision],
        histograms: Mapping[ExpertId, IdleHistogram],
        cold_start_s: Mapping[ExpertId, float],
    ) -> set[ExpertId]:
        """Carry out keep-alive decisions; returns the experts being scaled to zero."""
        now_s = plan.snapshot.now_s
        zeroed = set()
        for expert_id, decision in sorted(decisions.items()):
            if decision.action is KeepAliveAction.SCALE_TO_ZERO:
                if self.settings.autoscale.min_for(expert_id) > 0:
                    continue  # pinned warm by configuration: keep-alive does not apply
                zeroed.add(expert_id)
                for replica in plan.snapshot.warm_replicas_of(expert_id):
                    is_fresh = _never_served(replica) and replica.idle_for_s(now_s) < self.settings.prewarm_grace_s
                    if replica.load.num_outstanding_requests == 0 and not is_fresh:
                        plan.do(DrainReplica(replica.replica_id, decision.reason))
                if decision.reason.code is KeepAliveReasonCode.PREWARM_GAP and not plan.snapshot.accepting_replicas_of(expert_id):
                    # Unloaded for a predicted gap: announce when to come back in the same step.
                    then = decide_from_window(
                        expert_id, plan.snapshot.activity_of(expert_id), self.keepalive.window(histograms[expert_id]),
                        has_replica=False, cold_start_s=cold_start_s.get(expert_id, 0.0), now_s=now_s)
                    if then.action is KeepAliveAction.PREWARM and then.at_s > now_s:
                        plan.do(PrewarmAt(expert_id, then.at_s, then.reason))
            elif decision.action is KeepAliveAction.PREWARM:
                if decision.at_s <= now_s:
                    if self._can_start(plan, expert_id):
                        self._start(plan, expert_id, decision.reason)
                else:
                    plan.do(PrewarmAt(expert_id, decision.at_s, decision.reason))
        return zeroed

    def _apply_scale(self, plan: Plan, decision: ScaleDecision) -> None:
        expert_id = decision.expert_id
        for _ in range(max(0, decision.delta)):
            draining = [r for r in plan.snapshot.replicas_of(expert_id) if r.state is ReplicaState.DRAINING]
            if draining:
                plan.do(ReactivateReplica(draining[0].replica_id, decision.reason))
            # Only a scale-up for waiting requests may evict idle replicas of other experts (as for a request's
            # own start): evicting a replica that is idle between requests to add capacity elsewhere trades a
            # sure cold start for a speculative gain.
            elif isinstance(self._start(plan, expert_id, decision.reason, may_evict=bool(
                    plan.snapshot.unplaced_of(expert_id))), Unplaceable):
                break
        if decision.delta >= 0:
            return
        workers = plan.snapshot.workers
        rank = {replica_id: k for k, replica_id in enumerate(decision.retire_first)}
        # Retire in the policy's order if it gave one, else the least loaded first, the most expensive among
        # equals; never a starting replica with a queue.
        victims = sorted(
            (r for r in plan.snapshot.accepting_replicas_of(expert_id) if r.is_warm or not r.load.queue),
            key=lambda r: (not r.is_warm, rank.get(r.replica_id, len(rank)), r.load.num_outstanding_tokens,
                           -workers[r.worker_id].usd_per_hour, r.replica_id),
        )
        for replica in victims[: -decision.delta]:
            action = DrainReplica if replica.is_warm else StopReplica
            plan.do(action(replica.replica_id, decision.reason))
