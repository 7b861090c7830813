"""The simulation loop: a workload through a control plane and per-replica engines, in simulated time.

Each handler takes one event and returns the events it causes; `Simulation.run` pops them in
(time, priority, seq) order until none are left. The fleet's control-plane view is a `FleetSnapshot` updated
only through `switchboard.fleet.ops` (the same updates the live server makes; those of engine events are
applied together at the next decision, `Simulation._sync`), so the policies see the same kind of state they
see live.

Conservation, checked at the end of every run (`RunResult.check_conservation`): every request arrives exactly
once and ends exactly once, either finished or rejected.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

from switchboard.fleet import ops
from switchboard.fleet.activity import ExpertActivity
from switchboard.fleet.state import FleetSnapshot, QueuedRequest, Replica
from switchboard.sim.cluster import BuiltCluster
from switchboard.sim.engine import ReplicaEngine, Sequence, StepDone, StepOutcome
from switchboard.sim.events import Event, EventQueue, Priority
from switchboard.fleet.sleep import AsleepReplicas, reflect_asleep
from switchboard.perf.sleep import wake_time_s
from switchboard.policies.actions import (
    AssignRequest,
    DrainReplica,
    EvictAsleep,
    ForwardUpstream,
    MigrateRequest,
    PrewarmAt,
    ReactivateReplica,
    RejectRequest,
    StartReplica,
    StopReplica,
    apply_action,
)
from switchboard.policies.keepalive import KeepAliveReasonCode
from switchboard.policies.loop import next_to_run
from switchboard.policies.ordering import QueueOrderSettings, make_queue_order
from switchboard.policies.placement import sleep_frees_accelerator
from switchboard.policies.routing import PrewarmReasonCode
from switchboard.router.selection import Caution, cautious_quality
from switchboard.sim.plane import RouteQuery, SimPlane
from switchboard.sim.workload import NO_EXPERT, Workload
from switchboard.types import ExpertId, ReplicaId, ReplicaState, RequestId


@dataclasses.dataclass(frozen=True)
class RoutingInputs:
    """Per-request quality, columns in the cluster's expert order: `predicted` is what the router believes,
    `true` the graded score of each expert's real answer (from the routing data)."""

    predicted: np.ndarray
    true: np.ndarray
    caution_prior: np.ndarray | None = None
    """(n, m) per request, what the router knows as each expert's mean score, for its conservative rule
    (`router.selection.Caution`); None: the plain rule."""
    caution_margin: np.ndarray | None = None
    """(n, 1) per request, the rule's margin (gated by the router's confidence where it is; 0 without a prompt)."""

    def judged(self, usd_per_mtok: np.ndarray, cost_weight: float) -> "RoutingInputs":
        """These inputs with `predicted` less the conservative rule's margin where the router's own choice would
        apply it (experts priced below each request's prior choice at `cost_weight`), and no rule left: what every
        plane, the static one and the fleet-aware ones alike, then scores, as `RouterChooser` hands the live fleet
        the router's judged quality. Unchanged without a rule."""
        if self.caution_prior is None or self.caution_margin is None or not len(self.predicted):
            return self
        price = np.asarray(usd_per_mtok, np.float64)
        mask = np.ones(self.predicted.shape, dtype=bool)
        traded = np.broadcast_to(price, self.predicted.shape)
        judged = cautious_quality(self.predicted, Caution(self.caution_prior, self.caution_margin), traded, mask, price,
                                  cost_weight)
        return RoutingInputs(judged, self.true)


_PREWARM_CODES = frozenset({KeepAliveReasonCode.PREWARM_DUE, KeepAliveReasonCode.PREWARM_SCHEDULED,
                            PrewarmReasonCode.PREDICTED_DEMAND})
"""Start reasons of pre-warms: a start decided ahead of demand rather than for a request."""


@dataclasses.dataclass(frozen=True)
class ReplicaCrash:
    """A fault to inject: the engine of `replica_id` dies at `at_s` (if that replica is warm then). Requests it
    holds fail (they end as `failed`, counted with the rejected), and the control loop stops the replica
    (`ControlLoop.lost`), as the live fleet does when an engine fails under its requests."""

    at_s: float
    replica_id: str


@dataclasses.dataclass
class ReplicaRecord:
    replica_id: str
    expert_id: str
    hardware: str
    num_devices: int
    usd_per_hour: float
    created_at: float
    warm_at: float = math.nan
    stopped_at: float = math.nan
    is_preprovisioned: bool = False
    is_from_zero: bool = False
    """Its expert had no accepting replica when it was started (a scale-from-zero, not a scale-up)."""
    is_prewarm: bool = False
    """Started ahead of demand by a pre-warm (keep-alive's histogram or route-aware pre-warming), not for
    requests that had arrived or been routed."""
    busy_s: float = 0.0
    busy_before_warmup_s: float = 0.0
    is_wake: bool = False
    """Woken from the sleep tier (a wake, not a cold start)."""
    worker_id: str = ""


@dataclasses.dataclass
class RunResult:
    """Raw outcome of a run; `switchboard.sim.report.summarize` turns it into the reported metrics."""

    workload: Workload
    expert_ids: tuple[str, ...]
    expert_index: np.ndarray
    """Expert each request was sent to (-1 if rejected before routing)."""
    arrived: np.ndarray
    first_token_at: np.ndarray
    finished_at: np.ndarray
    rejected: np.ndarray
    """Ended without an answer: rejected by the control plane, or failed with a crashed replica (`failed`)."""
    waited_for_cold_start: np.ndarray
    """Waited for a replica to start: assigned to one still starting, or left without a replica (what the live
    fleet answers as `x-switchboard-cold-start`)."""
    true_quality: np.ndarray
    replicas: list[ReplicaRecord]
    started_at: np.ndarray
    """When each request's prefill began (NaN if rejected)."""
    cached_prompt_tokens: np.ndarray
    """Prompt tokens each request took from its engine's prefix cache (0 if none or rejected)."""
    served_by: dict[int, str]
    """Replica that served each finished request."""
    end_s: float
    num_events: int
    warmup_s: float
    ttft_slo_s: float
    tpot_slo_s: float
    failed: np.ndarray | None = None
    """Lost with a crashed replica (`ReplicaCrash`); None when no crash was injected."""

    def check_conservation(self) -> None:
        """Raises AssertionError unless every request arrived once and ended once (finished xor rejected)."""
        finished = ~np.isnan(self.finished_at)
        if not np.all(self.arrived == 1):
            raise AssertionError(f"{int(np.sum(self.arrived != 1))} requests did not arrive exactly once")
        if not np.all(finished ^ self.rejected):
            raise AssertionError(f"{int(np.sum(~(finished ^ self.rejected)))} requests did not end exactly once")


class Simulation:
    """One run. Build, call `run()` once."""

    def __init__(
        self,
        cluster: BuiltCluster,
        workload: Workload,
        plane: SimPlane,
        routing: RoutingInputs,
        *,
        on_progress: Callable[[int], None] | None = None,
        warmup_s: float = 0.0,
        crashes: tuple[ReplicaCrash, ...] = (),
    ) -> None:
        """`warmup_s`: when the report's measurement window starts (engines' busy time is recorded then).
        `crashes`: replica engines that die during the run."""
        self.warmup_s = warmup_s
        self.crashes = crashes
        self.failed = np.zeros(len(workload), dtype=bool) if crashes else None
        self.cluster = cluster
        self.workload = workload
        self.plane = plane
        self.routing = routing
        self.on_progress = on_progress
        self.queue = EventQueue()
        self.snapshot: FleetSnapshot = ops.empty_fleet(0.0, cluster.workers, cluster.experts, cluster.estimates)
        self.engines: dict[str, ReplicaEngine] = {}
        self.records: dict[str, ReplicaRecord] = {}
        self.sequences: dict[int, Sequence] = {}
        # Load and activity changes (engine events, an arrival's assignment) not yet in `self.snapshot` (`_sync`).
        self._pending_replicas: dict[ReplicaId, Replica] = {}
        self._pending_activity: dict[ExpertId, ExpertActivity] = {}
        self._prewarm_steps_at: set[float] = set()
        self._steps_queued_at: set[float] = set()
        """Times with a control step queued and not yet run: one step serves every trigger of an instant (the
        live control loop likewise steps once for all that woke it)."""
        self._expert_ids = cluster.expert_ids
        self._expert_pos = {e: i for i, e in enumerate(self._expert_ids)}
        n = len(workload)
        self.expert_index = np.full(n, -1, dtype=np.int32)
        self.arrived = np.zeros(n, dtype=np.int32)
        self.first_token_at = np.full(n, np.nan)
        self.finished_at = np.full(n, np.nan)
        self.rejected = np.zeros(n, dtype=bool)
        self.waited_for_cold_start = np.zeros(n, dtype=bool)
        self.started_at = np.full(n, np.nan)
        self.cached_prompt_tokens = np.zeros(n, dtype=np.int64)
        self.served_by: dict[int, str] = {}
        self._pinned = self._map_pinned(workload).tolist()
        self._arrival_s = workload.arrival_s.tolist()
        self._prompt_tokens = workload.num_prompt_tokens.tolist()
        self._output_tokens = workload.num_output_tokens.tolist()
        self._prefix_tokens = workload.num_prefix_tokens.tolist()
        self._max_kv_tokens = {e: max((p.kv_capacity_tokens for (x, _), p in cluster.profiles.items() if x == e),
                                      default=0) for e in self._expert_ids}
        self._ttft_slo_s = cluster.spec.slo.ttft_s
        loop = getattr(plane, "loop", None)
        fifo = make_queue_order(QueueOrderSettings())
        self._next_to_run = loop.next_to_run if loop is not None else (lambda r, now_s: next_to_run(r, fifo, now_s))
        # The sleep tier (policies/keepalive.py `sleep_after_s`): replicas keep-alive unloads sleep instead of
        # stopping, billed nothing while asleep (they keep their devices, which placement may evict them for),
        # and a start there wakes them.
        keepalive = getattr(getattr(plane, "settings", None), "keepalive", None)
        self.asleep = (AsleepReplicas(keepalive.asleep_keepalive_s)
                       if keepalive is not None and keepalive.sleep_after_s is not None else None)

    def _map_pinned(self, workload: Workload) -> np.ndarray:
        if not workload.expert_names:
            return np.full(len(workload), NO_EXPERT, dtype=np.int32)
        missing = [n for n in workload.expert_names if n not in self._expert_pos]
        if missing:
            raise ValueError(f"workload names experts the cluster does not have: {', '.join(missing)}")
        table = np.array([self._expert_pos[n] for n in workload.expert_names] + [NO_EXPERT], dtype=np.int32)
        return table[workload.pinned_expert]

    # ------------------------------------------------------------------------------------------ the loop

    def run(self) -> RunResult:
        now_s = 0.0
        self.snapshot = ops.at_time(self.snapshot, 0.0)
        self.queue.extend(self._apply(self.plane.initial_actions(self.snapshot), 0.0))
        if len(self.workload):
            self.queue.push(Event(float(self.workload.arrival_s[0]), Priority.ARRIVAL, "arrival", 0))
        if self.plane.control_interval_s:
            self.queue.push(self._step_at(self.plane.control_interval_s, periodic=True))
        if self.warmup_s > 0:
            self.queue.push(Event(self.warmup_s, Priority.END, "warmup_ends", None))
        for crash in self.crashes:
            self.queue.push(Event(crash.at_s, Priority.ENGINE_STEP, "crash", ReplicaId(crash.replica_id)))
        handlers = {"warmup_ends": self._on_warmup_ends, "arrival": self._on_arrival, "engine_step": self._on_engine_step,
                    "replica_ready": self._on_replica_ready, "control": self._on_control, "crash": self._on_crash}
        num_events = 0
        end_s = now_s
        self._num_outstanding = len(self.workload)

        def handle(event: Event) -> list[Event]:
            nonlocal num_events, end_s
            end_s = event.time_s
            if event.kind == "control" and event.payload and self._num_outstanding == 0:
                self._steps_queued_at.discard(end_s)
                return []  # periodic control stops once every request has ended
            num_events += 1
            return handlers[event.kind](event, end_s)

        self.queue.drain(handle)
        self._sync(end_s)
        for record in self.records.values():
            if math.isnan(record.stopped_at):
                record.stopped_at = end_s
            engine = self.engines.get(record.replica_id)
            if engine is not None:
                record.busy_s = engine.busy_time_s(min(end_s, record.stopped_at))
        result = RunResult(
            workload=self.workload, expert_ids=self._expert_ids, expert_index=self.expert_index,
            arrived=self.arrived, first_token_at=self.first_token_at, finished_at=self.finished_at,
            rejected=self.rejected, waited_for_cold_start=self.waited_for_cold_start,
            true_quality=self._true_quality(), replicas=list(self.records.values()), started_at=self.started_at,
            cached_prompt_tokens=self.cached_prompt_tokens, served_by=self.served_by, end_s=end_s,
            num_events=num_events, warmup_s=self.warmup_s, ttft_slo_s=self.cluster.spec.slo.ttft_s, tpot_slo_s=self.cluster.spec.slo.tpot_s,
            failed=self.failed,
        )
        result.check_conservation()
        return result

    def _true_quality(self) -> np.ndarray:
        q = np.full(len(self.workload), np.nan)
        routed = self.expert_index >= 0
        if self.routing.true.size:
            rows = np.nonzero(routed)[0]
            q[rows] = self.routing.true[rows, self.expert_index[rows]]
        return q

    def _sync(self, now_s: float) -> None:
        """Bring `self.snapshot` to `now_s` with every pending engine change in it. Called before anything reads
        the snapshot beyond a replica's state or updates it: policies and `ops`/`apply_action` calls.

        Engine events (and an arrival's assignment) only change replicas' load and experts' activity, and
        nothing reads those between two policy decisions, so `_absorb` (and `_apply`) compute each change at its
        event's time (`ops.started` / `ended` / `finished` / `enqueued`, what `start_requests` / `end_requests` /
        `enqueue` do) and they enter the snapshot together, in one update (`ops.apply_changes`), instead of one
        snapshot per event."""
        if self._pending_replicas or self._pending_activity:
            self.snapshot = ops.apply_changes(self.snapshot, now_s, self._pending_replicas, self._pending_activity)
            self._pending_replicas = {}
            self._pending_activity = {}
        elif now_s != self.snapshot.now_s:
            self.snapshot = ops.at_time(self.snapshot, now_s)

    # ------------------------------------------------------------------------------------------ handlers

    def _on_arrival(self, event: Event, now_s: float) -> list[Event]:
        i = event.payload
        out: list[Event] = []
        if i + 1 < len(self._arrival_s):
            out.append(Event(self._arrival_s[i + 1], Priority.ARRIVAL, "arrival", i + 1))
        if self.on_progress is not None and i % 500 == 0:
            self.on_progress(i)
        self._sync(now_s)
        self.arrived[i] += 1
        expert = self._pinned[i]
        num_prompt, num_output = self._prompt_tokens[i], self._output_tokens[i]
        if expert == NO_EXPERT:
            expert = self.plane.route(self.snapshot, RouteQuery(
                i, self.routing.predicted[i], num_prompt, num_output)).expert_index
        self.expert_index[i] = expert
        expert_id = ExpertId(self._expert_ids[expert])
        self.snapshot = ops.record_arrival(self.snapshot, expert_id, num_prompt, num_output)
        request = QueuedRequest(RequestId(str(i)), expert_id, now_s, num_prompt, num_output,
                                ttft_slo_s=self._ttft_slo_s)
        if not self._fits_somewhere(expert_id, request):
            self._end_rejected(i, expert_id)
            return out
        actions = self.plane.admit(self.snapshot, request)
        out += self._apply(actions, now_s)
        if i not in self.sequences and not self.rejected[i] and not self._is_on_warm_replica(request):
            self.waited_for_cold_start[i] = True  # it waits for a start (what the live fleet answers)
        if self.plane.step_is_due():  # routing asked for a wake-up: the live control loop steps at once
            out += self._step_now(now_s)
        if not (i in self.sequences or self.rejected[i]):
            self._sync(now_s)
            if not self._is_queued_on_a_replica(request):
                raise AssertionError(f"plane left request {i} unplaced: {actions!r}")
        return out

    def _is_on_warm_replica(self, request: QueuedRequest) -> bool:
        self._sync(self.snapshot.now_s)
        return any(q.request_id == request.request_id and rid is not None
                   and self.snapshot.replicas[rid].state is ReplicaState.WARM
                   for rid, q in self.snapshot.iter_requests())

    def _is_queued_on_a_replica(self, request: QueuedRequest) -> bool:
        return any(q.request_id == request.request_id for rid, q in self.snapshot.iter_requests() if rid is not None)

    def _fits_somewhere(self, expert_id: str, request: QueuedRequest) -> bool:
        return request.num_prompt_tokens + request.num_output_tokens_expected <= self._max_kv_tokens[expert_id]

    def _run_queued(self, replica_id: ReplicaId, now_s: float) -> list[Event]:
        """Hand the replica's queued requests to its engine while it is warm with free sequence slots, in the
        queue order's pick (`ControlLoop.next_to_run`, the live fleet's rule): they are running in the fleet
        model from now, as live, though the engine may hold one a few milliseconds before its prefill."""
        engine = self.engines.get(replica_id)
        if engine is None:
            return []
        replica = self._pending_replicas.get(replica_id) or self.snapshot.replicas[replica_id]
        out: list[Event] = []
        while (request := self._next_to_run(replica, now_s)) is not None:
            replica = ops.started(replica, (request.request_id,), now_s)
            self._pending_replicas[replica_id] = replica
            i = int(request.request_id)
            seq = Sequence(i, request.num_prompt_tokens, request.num_output_tokens_expected, self._prefix_tokens[i])
            self.sequences[i] = seq
            self.served_by[i] = replica_id
            out += self._absorb(replica_id, engine.submit(seq, now_s), now_s)
        return out

    def _absorb(self, replica_id: ReplicaId, outcome: StepOutcome, now_s: float) -> list[Event]:
        """Mirror an engine outcome into the per-request results and, for finished requests, the fleet snapshot
        (pending until the next `_sync`); freed slots take the next queued requests."""
        for seq in outcome.started:
            self.started_at[seq.request_index] = seq.started_at
            if seq.num_cached_tokens:
                self.cached_prompt_tokens[seq.request_index] = seq.num_cached_tokens
        for seq in outcome.first_tokens:
            self.first_token_at[seq.request_index] = seq.first_token_at
        out = [outcome.next_event] if outcome.next_event is not None else []
        if outcome.finished:
            # Requests end on a replica of the expert they were routed to (what `ops.end_requests` does).
            replica = self._pending_replicas.get(replica_id) or self.snapshot.replicas[replica_id]
            num_tokens = [seq.num_reserved_tokens for seq in outcome.finished]
            expert_id = replica.expert_id
            activity = self._pending_activity.get(expert_id) or self.snapshot.activity_of(expert_id)
            self._pending_activity[expert_id] = ops.finished(activity, num_tokens, now_s)
            replica = self._pending_replicas[replica_id] = ops.ended(replica, num_tokens, now_s)
            for seq in outcome.finished:
                self.finished_at[seq.request_index] = seq.finished_at
                del self.sequences[seq.request_index]
            self._num_outstanding -= len(outcome.finished)
            if replica.load.queue:
                out += self._run_queued(replica_id, now_s)
        return out

    def _end_rejected(self, i: int, expert_id: ExpertId) -> None:
        self.rejected[i] = True
        self.snapshot = ops.record_finish(self.snapshot, expert_id)
        self._num_outstanding -= 1

    def _on_engine_step(self, event: Event, now_s: float) -> list[Event]:
        done: StepDone = event.payload
        engine = self.engines.get(done.replica_id)
        if engine is None or done.version != engine.version:
            return []
        return self._absorb(ReplicaId(done.replica_id), engine.on_step(done, now_s), now_s)

    def _on_replica_ready(self, event: Event, now_s: float) -> list[Event]:
        replica_id = event.payload
        replica = self.snapshot.replicas.get(replica_id)
        if replica is None or replica.state is not ReplicaState.STARTING:
            return []
        self._sync(now_s)
        self.snapshot = ops.transition(self.snapshot, replica_id, ReplicaState.WARM)
        self.records[replica_id].warm_at = now_s
        profile = self.cluster.profiles[(replica.expert_id, replica.hardware)]
        self.engines[replica_id] = ReplicaEngine(replica_id, profile)
        out = self._run_queued(replica_id, now_s)
        if self.plane.control_interval_s:  # its queue started: a step sees it warm (as the live fleet steps then)
            out += self._step_now(now_s)
        return out

    def _on_warmup_ends(self, event: Event, now_s: float) -> list[Event]:
        for replica_id, engine in self.engines.items():
            self.records[replica_id].busy_before_warmup_s = engine.busy_time_s(now_s)
        return []

    def _on_crash(self, event: Event, now_s: float) -> list[Event]:
        """The replica's engine dies: the requests it runs fail, then the control loop stops the replica (its
        queued requests go back to be placed). As live, a dead engine holding nothing is not noticed here (the
        live health check finds it at a later step)."""
        replica_id = event.payload
        engine = self.engines.get(replica_id)
        if engine is None or not engine.num_outstanding or self.plane.loop is None:
            return []
        self._sync(now_s)
        for i in sorted(i for i in self.sequences if self.served_by.get(i) == replica_id):
            seq = self.sequences.pop(i)
            self.snapshot = ops.end_requests(self.snapshot, replica_id, [seq.num_reserved_tokens])
            self.failed[i] = self.rejected[i] = True
            self._num_outstanding -= 1
        self.records[replica_id].busy_s = engine.busy_time_s(now_s)
        del self.engines[replica_id]  # its pending step events are stale from now on
        return self._apply([self.plane.loop.lost(now_s, replica_id, "the engine crashed")], now_s)

    def _step_at(self, at_s: float, *, periodic: bool) -> Event:
        self._steps_queued_at.add(at_s)
        return Event(at_s, Priority.CONTROL, "control", periodic)

    def _step_now(self, at_s: float) -> list[Event]:
        """A control step at `at_s` (after the instant's other events), unless one is queued for then."""
        return [] if at_s in self._steps_queued_at else [self._step_at(at_s, periodic=False)]

    def _on_control(self, event: Event, now_s: float) -> list[Event]:
        self._steps_queued_at.discard(now_s)
        self._sync(now_s)
        if self.asleep is not None and self.asleep.expired(now_s):
            self._reflect_asleep()
        out = self._apply(self.plane.control(self.snapshot), now_s)
        if event.payload:  # periodic, on the loop's grid
            out.append(self._step_at(self.plane.loop.next_periodic_step_at(now_s), periodic=True))
        return out

    # ------------------------------------------------------------------------------------------ actions

    def _apply(self, actions, now_s: float) -> list[Event]:
        """Apply the plane's actions to the fleet (`apply_action`) and carry them out on the engines."""
        if len(actions) == 1 and type(actions[0]) is AssignRequest:  # most arrivals: the loops below, unrolled
            action = actions[0]
            if self.snapshot.unplaced:  # `apply_action` takes the request out of them too
                self._sync(now_s)
                self.snapshot = apply_action(self.snapshot, action)
            else:  # `apply_action` is then `ops.enqueue` alone: a pending change, like the engines' (`_sync`)
                replica = self._pending_replicas.get(action.replica_id) or self.snapshot.replicas[action.replica_id]
                self._pending_replicas[action.replica_id] = ops.enqueued(replica, action.request, now_s)
            out = self._run_queued(action.replica_id, now_s)
            if self.snapshot.unplaced and self.plane.control_interval_s:
                out += self._step_now(now_s)
            return out
        out: list[Event] = []
        for action in actions:
            replica_id = getattr(action, "replica_id", None)
            if isinstance(action, StopReplica) and self._engine_outstanding(replica_id):
                raise AssertionError(f"{replica_id} stopped with work in its engine")
            self._sync(now_s)  # an earlier action's engine may have started requests
            self.snapshot = apply_action(self.snapshot, action)
            if isinstance(action, StartReplica):
                out += self._start(action, now_s)
            elif isinstance(action, StopReplica):
                self._stopped(replica_id, action.reason.code)
            elif isinstance(action, EvictAsleep):
                self.asleep.evict(action.replica_id)
                self._reflect_asleep()
            elif isinstance(action, DrainReplica) and self.asleep is not None:
                worker = self.snapshot.workers[self.snapshot.replicas[action.replica_id].worker_id]
                self.asleep.note_drain(action.replica_id, action.reason.code,
                                       frees_accelerator=sleep_frees_accelerator(worker))
            elif isinstance(action, ReactivateReplica) and self.asleep is not None:
                self.asleep.note_reactivate(action.replica_id)
            elif isinstance(action, AssignRequest):
                out += self._run_queued(action.replica_id, now_s)
            elif isinstance(action, RejectRequest):
                self._end_rejected(int(action.request.request_id), action.request.expert_id)
            elif isinstance(action, MigrateRequest):
                out += self._migrate(action, now_s)
            elif isinstance(action, PrewarmAt):
                # Every step re-announces pending pre-warms; schedule each wake-up time once.
                at_s = max(now_s, action.at_s)
                if at_s not in self._prewarm_steps_at:
                    self._prewarm_steps_at.add(at_s)
                    out += self._step_now(at_s)
            elif isinstance(action, ForwardUpstream):
                raise ValueError("the simulator has no external upstream experts")
        if self.snapshot.unplaced and self.plane.control_interval_s:
            for request in self.snapshot.unplaced:  # it waits for a replica again (the live fleet says cold)
                self.waited_for_cold_start[int(request.request_id)] = True
            out += self._step_now(now_s)  # a stopped start left requests behind
        return out

    def _engine_outstanding(self, replica_id) -> int:
        engine = self.engines.get(replica_id)
        return engine.num_outstanding if engine is not None else 0

    def _start(self, action: StartReplica, now_s: float) -> list[Event]:
        profile = self.cluster.profiles[(action.expert_id, action.hardware)]
        preprovisioned = self.plane.is_preprovisioned(action.replica_id)
        others = [r for r in self.snapshot.accepting_replicas_of(action.expert_id) if r.replica_id != action.replica_id]
        woken = self.asleep.take(action.expert_id, action.worker_id, now_s) if self.asleep is not None else None
        self.records[action.replica_id] = ReplicaRecord(
            # The devices it holds (none on a worker that declares none), not the profile's tensor-parallel size.
            action.replica_id, action.expert_id, action.hardware, self.snapshot.replicas[action.replica_id].num_devices,
            profile.usd_per_hour, now_s,
            is_preprovisioned=preprovisioned, is_from_zero=not others, is_prewarm=action.reason.code in _PREWARM_CODES,
            is_wake=woken is not None, worker_id=action.worker_id)
        ready_in_s = action.cold_start_s
        if woken is not None:
            ready_in_s = woken.wake_s
            self._reflect_asleep()
        return [Event(now_s + ready_in_s, Priority.REPLICA_READY, "replica_ready", action.replica_id)]

    def _reflect_asleep(self) -> None:
        """The fleet with the asleep replicas in it: starts priced at their wakes and the devices they keep
        (`fleet.sleep.reflect_asleep`, as the live fleet does)."""
        self.snapshot = reflect_asleep(self.snapshot, self.asleep)

    def _migrate(self, action: MigrateRequest, now_s: float) -> list[Event]:
        if int(action.request_id) in self.sequences:
            raise AssertionError(f"migrated request {action.request_id} had already started on {action.from_replica_id}")
        return self._run_queued(action.to_replica_id, now_s)

    def _stopped(self, replica_id: ReplicaId, stop_code=None) -> None:
        record = self.records[replica_id]
        record.stopped_at = self.snapshot.now_s
        if self.asleep is not None and self.asleep.should_sleep(replica_id, stop_code) and not math.isnan(record.warm_at):
            profile = self.cluster.profiles[(record.expert_id, record.hardware)]
            self.asleep.put(replica_id, ExpertId(record.expert_id), record.worker_id, record.hardware,
                            wake_time_s(profile), self.snapshot.now_s,
                            num_devices=self.snapshot.replicas[replica_id].num_devices)
            self._reflect_asleep()
        engine = self.engines.get(replica_id)
        if engine is not None:
            record.busy_s = engine.busy_time_s(self.snapshot.now_s)
        self.snapshot = ops.prune_stopped(self.snapshot)
