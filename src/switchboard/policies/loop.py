"""The control loop: the one decision path that both drivers — the live fleet (`switchboard.runtime.fleet`) and
the simulator (`switchboard.sim.planes.ServerlessPlane`) — call, so that what the simulator replays is what the
server decides.

    loop = ControlLoop(settings, step_interval_s=1.0, seed=0)
    expert = loop.route(snapshot, candidates, preferred).expert_id  # an `auto` request (queues wake-ups)
    actions = loop.admit(snapshot, request)                         # every arrival: fast path, or a whole step
    actions = loop.step(snapshot).actions                           # on an interval and whenever `step_is_due`
    actions = loop.start(snapshot, expert_id, reason)               # a start outside a step (warm at start-up)
    stop = loop.lost(replica_id, detail)                            # an engine died under its requests

A driver owns time, engines and the `FleetSnapshot`; it executes the returned actions and keeps its snapshot
with `apply_action`. What it may not do is decide: every admit/assign/start/queue/reject and every step comes
from here, with the loop's one `ControlState`, its one seeded `random.Random`, and its one rule for *when* a
step is due (`step_is_due`, `next_periodic_step_at`). `tests/runtime/test_differential.py` drives the same
arrivals through both drivers and compares `log`, the actions in the order this loop returned them.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Sequence

from switchboard.fleet.state import FleetSnapshot, QueuedRequest, Replica
from switchboard.policies.actions import Action, AssignRequest, MigrateRequest, PrewarmAt, RejectRequest, StartReplica, StopReplica
from switchboard.policies.base import Reason
from switchboard.policies.control import (
    ControlPlane,
    ControlReasonCode,
    ControlSettings,
    ControlState,
    Event,
    RequestArrived,
    RoutePredicted,
    StepResult,
    WakeExpert,
)
from switchboard.policies.ordering import QueueOrderPolicy
from switchboard.policies.placement import Unplaceable
from switchboard.policies.routing import ExpertCandidate, RouteDecision, RoutePrediction
from switchboard.types import ExpertId, ReplicaId, ReplicaState


@dataclasses.dataclass(frozen=True, slots=True)
class LoggedAction:
    """One entry of `ControlLoop.log`: when an action was decided, and what it was (its kind, the replica or
    request it names, its expert, its reason's code, and for an assignment whether it waits for a start)."""

    at_s: float
    kind: str
    subject: str
    target: str
    code: str


def _logged(at_s: float, action: Action) -> LoggedAction:
    kind = type(action).__name__
    code = action.reason.code.value
    if isinstance(action, AssignRequest):
        return LoggedAction(at_s, kind, action.request.request_id, f"{action.replica_id} cold={action.is_cold_start}", code)
    if isinstance(action, RejectRequest):
        return LoggedAction(at_s, kind, action.request.request_id, f"{action.status_code}", code)
    if isinstance(action, MigrateRequest):
        return LoggedAction(at_s, kind, action.request_id, f"{action.from_replica_id}->{action.to_replica_id}", code)
    if isinstance(action, PrewarmAt):
        return LoggedAction(at_s, kind, action.expert_id, f"{action.at_s:.6f}", code)
    if isinstance(action, StartReplica):
        return LoggedAction(at_s, kind, action.replica_id, f"{action.worker_id}", code)
    replica_id = getattr(action, "replica_id", None)
    request = getattr(action, "request", None)
    return LoggedAction(at_s, kind, str(replica_id or (request.request_id if request else "")), "", code)


def next_to_run(replica: Replica, order: QueueOrderPolicy, now_s: float) -> QueuedRequest | None:
    """The queued request `replica` runs next, now: the queue order's pick when the replica is warm and has a
    free sequence slot, else None. A running request is handed to the engine (which may still hold it a few
    milliseconds before its prefill: the fleet model does not follow the engine's own queue, which the live
    fleet cannot see)."""
    load = replica.load
    if replica.state is not ReplicaState.WARM or not load.queue or load.num_running >= replica.capacity.max_num_seqs:
        return None
    return order.next_request(load.queue, now_s)


class ControlLoop:
    """A `ControlPlane` with its state, its random source, the events waiting for the next step, and the rule
    for when to step. Not thread-safe: one driver owns it.

    `log` (a list when `keep_log`): every action returned, stamped with the snapshot's time.
    """

    def __init__(self, settings: ControlSettings | None = None, *, step_interval_s: float = 1.0, seed: int = 0,
                 keep_log: bool = False) -> None:
        self.plane = ControlPlane(settings)
        self.settings = self.plane.settings
        self.state = ControlState()
        self.rng = random.Random(seed)
        self.step_interval_s = step_interval_s
        self.log: list[LoggedAction] | None = [] if keep_log else None
        self.last_step: StepResult | None = None
        self._events: list[Event] = []
        self._waking: set[ExpertId] = set()

    # ---- routing and wake-ups: events for the next step

    def route(self, snapshot: FleetSnapshot, candidates: Sequence[ExpertCandidate], preferred: ExpertId,
              usd_weight: float | None = None, stand_in_ids: Sequence[ExpertId] = (),
              num_prompt_tokens: int | None = None) -> RouteDecision:
        """Fleet-aware choice among the router's `candidates` (and `stand_in_ids`, experts the router cannot
        rate: `RoutingPolicy.route`); `preferred` (the router's own pick) feeds route-aware pre-warming, and
        experts the decision wakes (cold-start hiding) are started by the next step, which is then due at once
        (`step_is_due`)."""
        decision = self.plane.route(snapshot, candidates, usd_weight, stand_in_ids, num_prompt_tokens)
        self.routed(snapshot.now_s, preferred, decision)
        return decision

    def routed(self, now_s: float, preferred: ExpertId, decision: RouteDecision) -> None:
        """What `route` records of a decision: `preferred` for pre-warming, and the wake-ups. Called directly for
        a decision made elsewhere with `plane.route` (a Ray gateway, on its view of this fleet)."""
        self.predicted(now_s, preferred)
        for expert_id in decision.wake_expert_ids:
            self.wake(expert_id, decision.reason)

    def predicted(self, now_s: float, preferred: ExpertId) -> None:
        """The router preferred `preferred` at `now_s` (route-aware pre-warming's demand signal)."""
        self._events.append(RoutePredicted(RoutePrediction(now_s, {preferred: 1.0})))

    def wake(self, expert_id: ExpertId, reason: Reason) -> None:
        """Ask the next step to start a replica of `expert_id` (nothing if it has one or may not)."""
        if expert_id not in self._waking:
            self._waking.add(expert_id)
            self._events.append(WakeExpert(expert_id, reason))

    @property
    def step_is_due(self) -> bool:
        """A step should run now: an expert is waiting to be woken. (Drivers also step at once when a request
        is left unplaced or a replica became warm, and periodically — `next_periodic_step_at`.)"""
        return bool(self._waking)

    def next_periodic_step_at(self, now_s: float) -> float:
        """The first periodic step time after `now_s`: steps fall on multiples of `step_interval_s`, whatever
        else made the loop step in between, so both drivers step on the same grid. Always later than `now_s`:
        on a grid point k × interval, `now_s / interval` may round to just under k (1.02 s: 127 × 1.02 / 1.02 <
        127), and the step would be scheduled at its own time again, forever."""
        index = math.floor(now_s / self.step_interval_s) + 1
        at_s = index * self.step_interval_s
        while at_s <= now_s:
            index += 1
            at_s = index * self.step_interval_s
        return at_s

    # ---- decisions

    def next_to_run(self, replica: Replica, now_s: float) -> QueuedRequest | None:
        """`next_to_run` with the configured queue order."""
        return next_to_run(replica, self.plane.queue_order, now_s)

    def admit(self, snapshot: FleetSnapshot, request: QueuedRequest) -> tuple[Action, ...]:
        """The actions for an arriving request (recorded with `ops.record_arrival`, in no queue yet): the
        control plane's fast path when it is final, else a whole step with a `RequestArrived` event. They end
        the request's placement: it is assigned, forwarded or rejected."""
        fast = self.plane.admit_fast(snapshot, request, self.rng)
        if fast.needs_step:
            return self.step(snapshot, (RequestArrived(request),)).actions
        self._record(snapshot.now_s, fast.actions)
        return fast.actions

    def step(self, snapshot: FleetSnapshot, events: Sequence[Event] = ()) -> StepResult:
        """One control step over `snapshot` with the events queued since the last one (then `events`)."""
        queued, self._events = self._events, []
        self._waking.clear()
        result = self.plane.step(snapshot, self.state, queued + list(events), self.rng)
        self.state = result.state
        self.last_step = result
        self._record(snapshot.now_s, result.actions)
        return result

    def start(self, snapshot: FleetSnapshot, expert_id: ExpertId, reason: Reason) -> tuple[Action, ...] | Unplaceable:
        """The actions that start `expert_id` where placement puts it, outside a step (experts configured warm at
        start-up, a replacement for a lost replica): its `StartReplica`, last, after any `EvictAsleep` placement
        asked for. The caller executes them in order."""
        outcome, self.state = self.plane.plan_start(snapshot, self.state, expert_id, reason)
        if not isinstance(outcome, Unplaceable):
            self._record(snapshot.now_s, outcome)
        return outcome

    def lost(self, now_s: float, replica_id: ReplicaId, detail: str) -> StopReplica:
        """The stop of a replica whose engine died (its requests failed with it): the caller executes it."""
        stop = StopReplica(replica_id, Reason(ControlReasonCode.ENGINE_LOST, detail))
        self._record(now_s, (stop,))
        return stop

    def _record(self, at_s: float, actions: Sequence[Action]) -> None:
        if self.log is not None:
            self.log.extend(_logged(at_s, a) for a in actions)
