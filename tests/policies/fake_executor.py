"""A stateful fake of what runs the control step — the live control plane or the simulator.

It executes actions on the fleet model with `apply_action`, brings starting replicas up after their cold start,
runs queued requests on warm (and draining) replicas in batches, and keeps a ledger of every request's fate so
tests can assert conservation.
"""

from __future__ import annotations

import collections
import dataclasses
import random

from switchboard.fleet import ops
from switchboard.fleet.state import FleetSnapshot, QueuedRequest
from switchboard.policies.actions import AssignRequest, ForwardUpstream, PrewarmAt, RejectRequest, apply_action
from switchboard.policies.control import ControlPlane, ControlState, RequestArrived, StepResult
from switchboard.types import ReplicaState


@dataclasses.dataclass
class Ledger:
    arrived: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    assigned: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    rejected: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    started: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    finished: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    cold_served: set = dataclasses.field(default_factory=set)
    status_codes: dict = dataclasses.field(default_factory=dict)


class FakeExecutor:
    def __init__(self, snapshot: FleetSnapshot, plane: ControlPlane, *, seconds_per_token: float = 0.01,
                 seed: int = 0) -> None:
        self.snapshot = snapshot
        self.plane = plane
        self.state = ControlState()
        self.rng = random.Random(seed)
        self.ledger = Ledger()
        self.seconds_per_token = seconds_per_token
        self.running: dict[str, list[tuple[float, QueuedRequest]]] = collections.defaultdict(list)
        self.results: list[StepResult] = []
        self.wakeups: list[float] = []
        """`PrewarmAt` times: a step runs at each, as the live loop's timer or the simulator's event would."""

    # ---- time

    def advance(self, now_s: float) -> None:
        """Let engines work up to `now_s` (finishing, warming, starting queued requests in time order)."""
        while True:
            next_at = self._next_engine_event_at(now_s)
            due = [t for t in self.wakeups if t <= now_s]
            if due and (next_at is None or min(due) <= next_at):
                at_s = max(min(due), self.snapshot.now_s)
                self.wakeups = [t for t in self.wakeups if t > at_s]
                self._engines_at(at_s)
                self.step()
                continue
            if next_at is None:
                break
            self._engines_at(next_at)
        self.snapshot = ops.at_time(self.snapshot, now_s)
        self._engines_at(now_s)

    def _next_engine_event_at(self, until_s: float):
        times = [r.expected_warm_at for r in self.snapshot.replicas.values()
                 if r.state is ReplicaState.STARTING and self.snapshot.now_s < r.expected_warm_at <= until_s]
        times += [t for jobs in self.running.values() for t, _ in jobs if self.snapshot.now_s < t <= until_s]
        return min(times) if times else None

    def _engines_at(self, now_s: float) -> None:
        self.snapshot = ops.at_time(self.snapshot, now_s)
        for rid, replica in sorted(self.snapshot.replicas.items()):
            if replica.state is ReplicaState.STARTING and replica.expected_warm_at <= now_s:
                self.snapshot = ops.transition(self.snapshot, rid, ReplicaState.WARM)
        for rid, jobs in self.running.items():
            for done_at, request in [j for j in jobs if j[0] <= now_s]:
                jobs.remove((done_at, request))
                self.snapshot = ops.finish_request(self.snapshot, rid, request.num_tokens)
                self.snapshot = ops.record_finish(self.snapshot, request.expert_id)
                self.ledger.finished[request.request_id] += 1
        for rid, replica in sorted(self.snapshot.replicas.items()):
            if replica.state not in (ReplicaState.WARM, ReplicaState.DRAINING):
                continue
            while replica.load.queue and replica.load.num_running < replica.capacity.max_num_seqs:
                request = self.plane.queue_order.next_request(replica.load.queue, now_s)
                self.snapshot = ops.start_request(self.snapshot, rid, request.request_id)
                self.running[rid].append((now_s + request.num_tokens * self.seconds_per_token, request))
                self.ledger.started[request.request_id] += 1
                replica = self.snapshot.replicas[rid]

    # ---- the control loop

    def arrive(self, request: QueuedRequest) -> StepResult:
        self.snapshot = ops.record_arrival(self.snapshot, request.expert_id)
        self.ledger.arrived[request.request_id] += 1
        return self.step([RequestArrived(request)])

    def step(self, events=()) -> StepResult:
        result = self.plane.step(self.snapshot, self.state, events, self.rng)
        for action in result.actions:
            self.snapshot = apply_action(self.snapshot, action)
            match action:
                case AssignRequest():
                    self.ledger.assigned[action.request.request_id] += 1
                    if action.is_cold_start:
                        self.ledger.cold_served.add(action.request.request_id)
                case ForwardUpstream():
                    self.ledger.assigned[action.request.request_id] += 1
                    self.ledger.finished[action.request.request_id] += 1
                    self.snapshot = ops.record_finish(self.snapshot, action.request.expert_id)
                case PrewarmAt():
                    self.wakeups.append(action.at_s)
                case RejectRequest():
                    self.ledger.rejected[action.request.request_id] += 1
                    self.ledger.status_codes[action.request.request_id] = action.status_code
                    self.snapshot = ops.record_finish(self.snapshot, action.request.expert_id)
        # The step's own projection must equal the fleet after executing its actions one by one.
        assert result.snapshot.replicas == self.snapshot.replicas
        assert result.snapshot.unplaced == self.snapshot.unplaced
        self.state = result.state
        self.results.append(result)
        self._engines_at(self.snapshot.now_s)
        return result

    def actions_of(self, kind) -> list:
        return [a for r in self.results for a in r.actions if isinstance(a, kind)]
