"""The live fleet: the control plane's policies driven by wall-clock time, executing on real engines.

It keeps a `FleetSnapshot` (the fleet model) in step with the engines it runs, and follows the executor
contract of `switchboard.policies.control` (docs/control-plane.md): every arrival and finish is recorded, the
control step runs on an interval and on events (a request that needs a replica started, a replica that became
warm, a due pre-warm), and every action it returns is executed here — `StartReplica` spawns an engine in the
background, `StopReplica` stops one, `AssignRequest` hands the request its replica, `RejectRequest` answers
429/503 with Retry-After. Every decision comes from its `ControlLoop` (`switchboard.policies.loop`), which the
simulator drives through simulated time in the same way (`tests/runtime/test_differential.py` checks both take
the same decisions).

A request holds a `Lease` for its lifetime. External (`openai`) experts are always warm and bypass the
policies: one pseudo-replica each, no placement, no admission.

Live engines queue internally (llama.cpp serves one sequence at a time; simulated engines batch), so every
admitted request is marked running at once; the fleet model's queues only hold requests waiting for a replica
to start, and migration (which moves queued requests) acts only on those.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import heapq
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from switchboard.cluster.base import Cluster, EngineFactory, SurvivingReplica
from switchboard.cluster.build import build_cluster
from switchboard.config.schema import EmbeddedClusterConfig, ExpertConfig, LlamaCppBackend, OpenAIBackend, SwitchboardConfig
from switchboard.engines.base import EngineError, EngineUnavailable, ReplicaLost, Timing
from switchboard.engines.factory import PooledEngineFactory
from switchboard.fleet import ops
from switchboard.fleet.sleep import Asleep, reflect_asleep
from switchboard.fleet.state import FleetSnapshot, QueuedRequest, ReplicaLoad, Whereabouts, Worker
from switchboard.policies.actions import (
    Action,
    DrainReplica,
    EvictAsleep,
    MigrateRequest,
    PrewarmAt,
    ReactivateReplica,
    RejectRequest,
    StartReplica,
    StopReplica,
    apply_action,
)
from switchboard.policies.base import Reason
from switchboard.policies.circuit import CircuitState
from switchboard.policies.control import ControlPlane
from switchboard.policies.loop import ControlLoop
from switchboard.policies.placement import Unplaceable, sleep_frees_accelerator
from switchboard.policies.routing import ExpertCandidate, RouteDecision
from switchboard.runtime import estimates as est
from switchboard.runtime import speeds
from switchboard.runtime.circuits import CircuitBoard
from switchboard.runtime.devices import DeviceBook, DevicesBusy
from switchboard.runtime.sleeping import LiveSleepTier, stop_after_sleep
from switchboard.runtime.view import describe_fleet
from switchboard.types import ExpertId, ReplicaId, ReplicaState, RequestId, WorkerId

background_request: contextvars.ContextVar[bool] = contextvars.ContextVar("switchboard_background_request", default=False)
"""True while a batch's request is served (the batch runner sets it around each): its lease's queued request is
background, started after every live one queued with it (policies/ordering.py)."""
log = logging.getLogger("switchboard.fleet")

Clock = Callable[[], float]
from switchboard.runtime.lease import (
    MAX_DECISIONS_KEPT,
    AdmissionRejected,
    Lease,
    LiveReasonCode,
    LiveReplica,
    count_outcome,
)


class LiveFleet:
    """All replicas of all experts. Used from the gateway's one event loop; never blocks it."""

    def __init__(
        self,
        config: SwitchboardConfig,
        *,
        clock: Clock = time.time,
        engine_factory: EngineFactory | None = None,
        cluster: Cluster | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        if engine_factory is None:
            # Embedded llama.cpp experts adopt pre-started workers (issue 15); elsewhere plain `build_engine`.
            has_llamacpp = any(isinstance(e.backend, LlamaCppBackend) for e in config.experts)
            embedded = cluster is None and isinstance(config.cluster, EmbeddedClusterConfig)
            engine_factory = PooledEngineFactory(config.control_plane.standby_workers if has_llamacpp and embedded else 0)
        self.engine_factory = engine_factory
        # Where replicas run (docs/ray.md): local processes by default, Ray actors for `cluster: {kind: ray}`.
        self.cluster = cluster if cluster is not None else build_cluster(config, engine_factory)
        self._inventory_interval_s = self.cluster.inventory_interval_s
        self._inventory_read_at = time.monotonic()
        self._to_replace: list[str] = []  # experts that lost a replica with its worker, actor or process
        cp = config.control_plane
        self.loop = ControlLoop(cp.policies, step_interval_s=cp.step_interval_s, seed=cp.seed)
        self.plane = self.loop.plane
        keepalive = self.plane.settings.keepalive
        self.sleep_tier = LiveSleepTier(keepalive.asleep_keepalive_s) if keepalive.sleep_after_s is not None else None
        self.devices = DeviceBook({w.id: w.devices for w in config.workers})
        self._experts = {e.id: e for e in config.experts}
        workers = self.cluster.workers()
        estimates = [e for x in config.experts for e in est.serving_estimates(x, workers)]
        self.model: FleetSnapshot = ops.empty_fleet(clock(), workers, [est.expert_spec(e) for e in config.experts], estimates)
        self.live: dict[str, LiveReplica] = {}
        self.external: dict[str, LiveReplica] = {}
        self.decisions: deque[dict[str, Any]] = deque(maxlen=MAX_DECISIONS_KEPT)
        self.counters = {"cold_starts": 0, "wakes": 0, "rejected": 0, "admitted": 0}
        failover = config.failover
        self.expert_circuits = CircuitBoard(failover.expert_circuit, clock)
        self.replica_circuits = CircuitBoard(failover.replica_circuit, clock)
        self._loop_task: asyncio.Task | None = None
        self._wakeup = asyncio.Event()
        self._prewarms_announced: dict[str, float] = {}
        self._prewarm_steps_at: list[float] = []  # a heap: when announced pre-warms are due (a step then)
        self._waiters: dict[RequestId, asyncio.Future] = {}  # requests not yet running: each its own future
        self._waited_for_start: set[RequestId] = set()
        self._rejections: dict[RequestId, RejectRequest] = {}
        self.measured_speeds: dict[tuple[str, str], speeds.MeasuredSpeed] = {}  # (expert, hardware): from answers

    # ---- life cycle

    def expert(self, expert_id: str) -> ExpertConfig | None:
        return self._experts.get(expert_id)

    def is_available(self, expert_id: str) -> bool:
        """False while the expert's circuit is open (a request would be refused without being tried)."""
        return self.expert_circuits.would_allow(expert_id)

    async def start(self, survivors: Sequence[SurvivingReplica] = ()) -> None:
        """Starts the control loop and one replica per `warm_at_start` expert, waiting at most `startup_wait_s`
        for them; failures are logged, not fatal. `survivors` are warm replicas of an earlier run of this fleet
        (a restarted Ray control actor found them alive): they are taken over as warm, and an expert with one
        is not started again."""
        for survivor in survivors:
            self._take_over(survivor)
        for expert in self.config.experts:
            if isinstance(expert.backend, OpenAIBackend):
                replica = LiveReplica(f"{expert.id}/upstream", expert, "remote", self.engine_factory(expert))  # external: bypasses the cluster
                self.external[expert.id] = replica
                await replica.engine.start()
        for expert in self.config.experts:
            if expert.warm_at_start and expert.id not in self.external and not self.model.is_warm(ExpertId(expert.id)):
                start = self._start_action(expert)
                if start is not None:
                    self._execute(start)  # one at a time: each placement sees the memory the last one took
        self._loop_task = asyncio.create_task(self._control_loop(), name="switchboard-control-loop")
        # Real engines get up to `startup_wait_s` to come up before serving starts; simulated ones model cold
        # starts of a minute or more for big experts, which must not hold the whole gateway.
        starting = [r.start_task for r in self.live.values() if r.start_task and r.expert.backend.kind != "simulated"]
        if starting:
            await asyncio.wait(starting, timeout=self.config.control_plane.startup_wait_s)
        if isinstance(self.engine_factory, PooledEngineFactory):
            self.engine_factory.start()  # after the first starts, so the standby workers do not slow them

    def _take_over(self, survivor: SurvivingReplica) -> None:
        """Counts a surviving replica as warm in the model (and its number as used, so no new replica takes its
        id); one on an unknown worker or expert, or whose id is taken, is stopped instead."""
        expert = self._experts.get(survivor.expert_id)
        worker = self.model.workers.get(survivor.worker_id)
        estimate = self.model.estimates.get((survivor.expert_id, worker.hardware)) if worker and expert else None
        try:
            if estimate is None:
                raise ValueError(f"no worker {survivor.worker_id} or expert {survivor.expert_id} here")
            self.model = ops.add_replica(self._now(), ReplicaId(survivor.replica_id), estimate, WorkerId(survivor.worker_id))
        except ValueError as exc:
            log.warning("not taking over replica %s: %s", survivor.replica_id, exc)
            asyncio.ensure_future(survivor.engine.stop())
            return
        self.model = ops.transition(self.model, ReplicaId(survivor.replica_id), ReplicaState.STARTING)
        self.model = ops.transition(self.model, ReplicaId(survivor.replica_id), ReplicaState.WARM)
        self.live[survivor.replica_id] = LiveReplica(survivor.replica_id, expert, worker.hardware, survivor.engine)
        # Replica ids are `<expert>#<n>`, n counting the fleet's starts: later starts must count on from it.
        suffix = survivor.replica_id.rsplit("#", 1)[-1]
        state = self.loop.state
        self.loop.state = dataclasses.replace(
            state, num_replicas_created=max(state.num_replicas_created, int(suffix) if suffix.isdigit() else 0))
        self.decisions.append({"at": self.clock(), "action": "TakeOverReplica", "expert": expert.id,
                               "replica": survivor.replica_id, "reason": "alive after the control plane restarted",
                               "code": "taken-over"})

    def _start_action(self, expert: ExpertConfig, code: LiveReasonCode = LiveReasonCode.WARM_AT_START,
                      why: str = "the expert is configured warm_at_start", *, avoid_worker: str | None = None,
                      ) -> list[Action] | None:
        """The actions of a start for `expert` where the placement policy puts it, given the replicas already
        planned (its `StartReplica`, after the `EvictAsleep`s placement asked for); with `avoid_worker`, on any
        other worker (None, not logged, if no other worker can host it)."""
        snapshot = self._now()
        if avoid_worker is not None:
            others = {w: worker for w, worker in snapshot.workers.items() if w != avoid_worker}
            if not self.plane.placement.place(snapshot.evolve(workers=others), ExpertId(expert.id)).is_placed:
                return None
            snapshot = snapshot.evolve(workers=others)
        start = self.loop.start(snapshot, ExpertId(expert.id), Reason(code, why))
        if isinstance(start, Unplaceable):
            log.error("no worker can host a replica of expert %s (%s): %s", expert.id, why, start.reason)
            return None
        return list(start)

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        replicas = list(self.live.values()) + list(self.external.values())
        await asyncio.gather(*(r.engine.stop() for r in replicas), return_exceptions=True)
        for replica_id in list(self.live):
            self._transition(replica_id, ReplicaState.STOPPED)
        if self.sleep_tier is not None:
            await self.sleep_tier.close()
        if isinstance(self.engine_factory, PooledEngineFactory):
            await self.engine_factory.close()
        await self.cluster.close()

    # ---- the model, advanced to now

    def _now(self) -> FleetSnapshot:
        self.model = ops.at_time(self.model, max(self.clock(), self.model.now_s))
        return self.model

    def _transition(self, replica_id: str, to_state: ReplicaState) -> None:
        replica = self._now().replicas.get(ReplicaId(replica_id))
        if replica is not None and replica.state is not to_state and replica.state is not ReplicaState.STOPPED:
            self.model = ops.transition(self.model, ReplicaId(replica_id), to_state)

    # ---- fleet-aware routing

    async def route(self, choice: Any) -> tuple[str, dict[str, Any]]:
        """Re-scores the router's feasible candidates against the live fleet (queueing, cold starts).

        Returns the expert to use and what to report about it. Cold experts that quality prefers are woken in
        the background (cold-start hiding), and the router's pick feeds route-aware pre-warming.
        """
        snapshot = self._now()
        decision = fleet_route(self.loop.plane, snapshot, choice, self.is_available)
        if decision is None:
            return choice.expert_id, {}
        self.record_route(snapshot.now_s, choice.expert_id, decision)
        return route_answer(choice, decision)

    def record_route(self, at_s: float, preferred: str, decision: RouteDecision) -> None:
        """Records a fleet-aware routing decision (made here, or by a Ray gateway on its view of this fleet):
        the router's pick `preferred` for pre-warming, the experts it wakes, and the decision log's entry."""
        self.loop.routed(at_s, ExpertId(preferred), decision)
        if decision.wake_expert_ids:
            self._wakeup.set()
        if decision.expert_id and (decision.expert_id != preferred or decision.wake_expert_ids):
            self.decisions.append({"at": at_s, "action": "Route", "expert": decision.expert_id, "replica": "",
                                   "reason": decision.reason.detail, "code": decision.reason.code.value})

    def is_ready(self, expert_id: str) -> bool:
        """Whether a request to `expert_id` can start without a cold start (a warm replica, or external)."""
        return self.model.is_warm(ExpertId(expert_id))

    def wake(self, expert_id: str, detail: str) -> None:
        """Asks the control plane to start a replica of `expert_id` (nothing if it may not or has one)."""
        self.loop.wake(ExpertId(expert_id), Reason(LiveReasonCode.KEY_POLICY, detail))
        self._wakeup.set()

    # ---- requests

    def lease(self, expert_id: str, request_id: str, num_prompt_tokens: int, max_tokens: int, prefix_key: str = "") -> Lease:
        expert = self._experts[expert_id]
        if expert.id in self.external:
            return Lease(self, expert_id, None)
        request = QueuedRequest(
            RequestId(request_id), expert.id, self.clock(), num_prompt_tokens, max_tokens,
            ttft_slo_s=expert.ttft_slo_s, prefix_key=prefix_key, is_background=background_request.get(),
        )
        return Lease(self, expert_id, request)

    async def acquire(self, lease: Lease) -> tuple[LiveReplica, bool]:
        if lease.request is None:
            return self.external[lease.expert_id], False
        request = lease.request
        self.model = ops.record_arrival(self._now(), request.expert_id, request.num_prompt_tokens,
                                        request.num_output_tokens_expected)
        waiter = self._waiters[request.request_id] = asyncio.get_running_loop().create_future()
        self._execute(list(self.loop.admit(self.model, request)))  # may already answer `waiter`
        return await self._await_replica(request, waiter)

    def adopt(self, lease: Lease, replica_id: str) -> bool:
        """Counts a request that a gateway assigned to warm replica `replica_id` itself (Ray mode: the gateway
        decided with the same policies on its copy of the model, docs/ray.md "Local decisions") as running there,
        as if admitted here; `release(lease, ...)` ends it. False, and nothing counted, when that replica is not
        warm here any more (stopped since: the request fails on it and is retried elsewhere)."""
        live = self.live.get(replica_id)
        replica = self._now().replicas.get(ReplicaId(replica_id))
        request = lease.request
        if live is None or replica is None or replica.state is not ReplicaState.WARM or request is None:
            return False
        self.model = ops.record_arrival(self.model, request.expert_id, request.num_prompt_tokens,
                                        request.num_output_tokens_expected)
        self.model = ops.start_request(ops.enqueue(self.model, request, replica.replica_id), replica.replica_id,
                                       request.request_id)
        self.counters["admitted"] += 1
        lease.replica = live
        live.num_outstanding += 1
        return True

    def arrive_served(self, replica_id: str, requests: Sequence[tuple[str, int, int]]) -> bool:
        """The first half of counting requests that a gateway ran on warm replica `replica_id` and that were
        served before it reported them, each (expert id, prompt tokens, expected output tokens): their arrivals
        in the demand statistics, the replica busy now, `admitted` — what `adopt` of each counts, without queueing and starting each.
        `end_served` counts their ends; a report's other events go in between, so that the requests those
        report running overlap them as they did (no idle gap is recorded between a report's requests). False,
        and nothing counted, when that replica is not warm here any more (as `adopt`)."""
        live = self.live.get(replica_id)
        replica = self._now().replicas.get(ReplicaId(replica_id))
        if live is None or replica is None or replica.state is not ReplicaState.WARM or not requests:
            return False
        model = self.model
        for expert_id, num_prompt_tokens, num_output_tokens in requests:
            model = ops.record_arrival(model, ExpertId(expert_id), num_prompt_tokens, num_output_tokens)
        load = replica.load
        # Running, then done: the replica was busy now (keep-alive reads `last_busy_at`), its load as before.
        model = ops.set_load(model, replica.replica_id, ReplicaLoad(load.num_running + len(requests), load.num_running_tokens, load.queue))
        self.model = ops.set_load(model, replica.replica_id, load)
        self.counters["admitted"] += len(requests)
        return True

    def end_served(self, replica_id: str, requests: Sequence[tuple[str, int, int]]) -> None:
        """The second half of `arrive_served` (only after it returned True): the requests' ends in the demand
        statistics, served, the circuits' successes — what `release(ok=True)` of each counts."""
        model = self._now()
        for expert_id, _, _ in requests:
            model = ops.record_finish(model, ExpertId(expert_id))
            self.expert_circuits.record(expert_id, None)
            self.replica_circuits.record(replica_id, None)
        self.model = model
        live = self.live.get(replica_id)
        if live is not None:
            live.num_served += len(requests)

    async def _await_replica(self, request: QueuedRequest, waiter: asyncio.Future) -> tuple[LiveReplica, bool]:
        """Waits on the request's own future until it may run on a warm replica (`_notify` answers it), or is
        rejected, or `start_timeout_s` passes.

        A request runs when its replica is warm, has a free sequence slot and the queue-order policy picks it
        next (`ControlLoop.next_to_run`); until then it waits in the model's queue, where autoscaling sees it
        and migration may move it.
        """
        request_id = request.request_id
        timeout_s = self.config.control_plane.start_timeout_s
        try:
            try:
                replica_id = await asyncio.wait_for(waiter, timeout=timeout_s)
            except asyncio.TimeoutError:
                raise EngineUnavailable(request.expert_id, f"no replica could take the request within {timeout_s:.0f} s") from None
            self.counters["admitted"] += 1
            return self.live[replica_id], request_id in self._waited_for_start
        except AdmissionRejected:
            self.model = ops.record_finish(self._now(), request.expert_id)
            raise
        except BaseException:
            if self.model.locate(request_id).whereabouts is not Whereabouts.ABSENT:
                self.model = ops.remove_request(self._now(), request_id)[0]
                self.model = ops.record_finish(self.model, request.expert_id)
            self._notify()
            raise
        finally:
            self._waiters.pop(request_id, None)
            self._waited_for_start.discard(request_id)

    def _notify(self) -> None:
        """After any change of the model: start the queued requests that may run now, each on its warm replica
        in the queue order (`ControlLoop.next_to_run`, as the simulator does), answering their own futures;
        answer rejected requests; note those that wait for a replica to start; wake the control loop for an
        unplaced one (the next step places it)."""
        for request_id, rejection in self._rejections.items():
            waiter = self._waiters.get(request_id)
            if waiter is not None and not waiter.done():
                waiter.set_exception(AdmissionRejected(rejection.request.expert_id, rejection.status_code,
                                                       rejection.retry_after_s, rejection.reason.detail))
        self._rejections.clear()
        if not self._waiters:
            return
        model = self._now()
        for replica_id, request in list(model.iter_requests()):
            if request.request_id not in self._waiters:
                continue
            if replica_id is None:
                self._waited_for_start.add(request.request_id)
                self._wakeup.set()
                continue
            replica = self.model.replicas[replica_id]
            if replica.state is not ReplicaState.WARM or replica_id not in self.live:
                self._waited_for_start.add(request.request_id)
                continue
            while (chosen := self.loop.next_to_run(replica, self.model.now_s)) is not None:
                waiter = self._waiters.get(chosen.request_id)
                if waiter is None or waiter.done():
                    break  # not this fleet's to start (it is being withdrawn)
                self.model = ops.start_request(self.model, replica_id, chosen.request_id)
                replica = self.model.replicas[replica_id]
                waiter.set_result(replica_id)

    def release(self, lease: Lease, *, ok: bool, exc: Any) -> None:
        replica = count_outcome(lease, self.expert_circuits, ok=ok, exc=exc)
        if lease.request is None:
            return
        replica_circuit = self.replica_circuits.record(replica.replica_id, None if ok else exc)
        model = self._now()
        if replica.replica_id in model.replicas:
            model = ops.finish_request(model, ReplicaId(replica.replica_id), lease.request.num_tokens,
                                       lease.request.is_background)
        self.model = ops.record_finish(model, lease.request.expert_id)
        self._notify()
        if isinstance(exc, EngineUnavailable) and replica.replica_id in self.live:
            # The engine is gone (process died): stop the replica; the next request starts a fresh one.
            replica.last_error = exc.detail
            lost_on = self.model.replicas[ReplicaId(replica.replica_id)].worker_id \
                if replica.replica_id in self.model.replicas else None
            self._execute([self.loop.lost(self.model.now_s, ReplicaId(replica.replica_id), exc.detail)])
            if isinstance(exc, ReplicaLost):
                self._replace_lost(replica.expert, lost_on)
        elif replica_circuit is CircuitState.OPEN and replica.replica_id in self.live:
            # A local replica is ours to restart: replacing it beats probing it (the policies start a fresh one
            # if the load needs it), and routing can never pick a stopped replica.
            replica.last_error = f"circuit opened: {getattr(exc, 'detail', None) or type(exc).__name__}"
            self._execute([StopReplica(ReplicaId(replica.replica_id), Reason(LiveReasonCode.CIRCUIT_OPEN, replica.last_error))])

    def observe_timing(self, replica_id: str, timing: Timing) -> None:
        """An answer's own timing from `replica_id` (a llama.cpp worker's): the expert's measured prefill and
        decode rates on that hardware replace the roofline's in its estimate and its replicas' capacity, so
        admission and load balancing predict what this machine does (`runtime/speeds.py`). Engines that batch
        (their speed depends on the load) keep the roofline's."""
        live = self.live.get(replica_id)
        if live is None:
            return
        key = (live.expert.id, live.hardware)
        estimate = self.model.estimates.get(key)
        if estimate is None or estimate.max_num_seqs != 1:
            return
        speed = speeds.updated(self.measured_speeds.get(key, speeds.MeasuredSpeed()), timing)
        self.measured_speeds[key] = speed
        measured = est.with_measured_speed(estimate, speed)
        if measured == estimate:
            return
        estimates = {**self.model.estimates, key: measured}
        capacity = measured.capacity
        replicas = {rid: dataclasses.replace(r, capacity=capacity) if (r.expert_id, r.hardware) == key else r
                    for rid, r in self.model.replicas.items()}
        self.model = self.model.evolve(estimates=estimates, replicas=replicas)

    def _replace_lost(self, expert: ExpertConfig, lost_on: str | None) -> None:
        """Starts the replacement of a lost replica in the same step as its stop, so the requests retried after
        the loss queue on it (rather than making the policies start another) and the decision log pairs the
        stop with its `replace-lost` start. It goes to another worker than `lost_on`: that worker's node may be
        dead before the inventory knows. If no other worker can host it, the inventory is re-read first (the
        control loop's next pass) and the replacement placed then."""
        start = None
        if lost_on is not None:
            start = self._start_action(expert, LiveReasonCode.REPLACE_LOST, f"replaces a replica lost on {lost_on}",
                                       avoid_worker=lost_on)
        if start is not None:
            self._execute(start)
        else:
            self._to_replace.append(expert.id)
            self._wakeup.set()

    # ---- the control step and its actions

    def _step(self) -> None:
        self._execute(list(self.loop.step(self._now()).actions))

    def keepalive_decision(self, expert_id: str) -> dict[str, Any] | None:
        """The last step's keep-alive decision for `expert_id` (action and reason), None before any."""
        step = self.loop.last_step
        decision = step.keepalive.get(ExpertId(expert_id)) if step is not None else None
        return None if decision is None else {"action": decision.action.value, "reason": decision.reason.detail}

    def _execute(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, PrewarmAt):
                # The step re-announces pending pre-warms each time: schedule a step for each new time once (as
                # the simulator does), and log only a new time.
                if self._prewarms_announced.get(action.expert_id) != action.at_s:
                    self._prewarms_announced[action.expert_id] = action.at_s
                    self._record(action, action.expert_id)
                at_s = max(self.model.now_s, action.at_s)
                if at_s not in self._prewarm_steps_at:
                    heapq.heappush(self._prewarm_steps_at, at_s)
                continue
            live = self.live.get(getattr(action, "replica_id", ""))
            if self.sleep_tier is not None and live is not None and self.sleep_tier.skips(action, live.engine):
                continue  # keep-alive would put it to sleep, but its engine cannot sleep: it stays warm
            try:
                self.model = apply_action(self._now(), action)
            except (KeyError, ValueError) as exc:
                log.warning("skipping stale action %s: %s", action, exc)
                continue
            if isinstance(action, StartReplica):
                expert = self._experts[action.expert_id]
                # The one the model woke (`ops.wake_asleep`): the same rule at the same time.
                woken = self.sleep_tier.take(expert.id, action.worker_id, self.model.now_s) if self.sleep_tier else None
                if woken is not None:
                    self._reflect_asleep()
                    engine, sleep_task = woken.handle
                else:
                    num_devices = self.model.replicas[action.replica_id].num_devices
                    engine, sleep_task = self.cluster.engine_for(action.replica_id, expert, action.worker_id,
                                                                 num_devices=num_devices), None
                try:
                    self._give_devices(action, engine, woken)
                except DevicesBusy as exc:  # the book disagrees with the model: never double-book, refuse the start
                    log.error("%s", exc)
                    self._execute([StopReplica(action.replica_id, Reason(LiveReasonCode.START_FAILED, str(exc)))])
                    continue
                replica = LiveReplica(action.replica_id, expert, action.hardware, engine)
                self.live[action.replica_id] = replica
                self.counters["wakes" if woken else "cold_starts"] += 1
                replica.start_task = asyncio.create_task(self._run_start(replica, sleep_task))
                self._record(action, action.expert_id)
            elif isinstance(action, EvictAsleep):
                evicted = self.sleep_tier.asleep.evict(action.replica_id)
                self.devices.release(action.replica_id)  # the start right after this takes them
                asyncio.ensure_future(stop_after_sleep(*evicted.handle))
                self._reflect_asleep()
                self._record(action, evicted.expert_id)
            elif isinstance(action, StopReplica):
                replica = self.live.pop(action.replica_id, None)
                self.replica_circuits.forget(action.replica_id)
                if replica is not None and self._sleeps(action.replica_id, replica, action.reason.code):
                    pass  # asleep: it keeps its devices (held under its id until woken, evicted or expired)
                else:
                    self.devices.release(action.replica_id)
                    if replica is not None:
                        asyncio.create_task(replica.engine.stop())
                self._record(action, action.replica_id.split("#")[0])
                self.model = ops.prune_stopped(self.model)
            elif isinstance(action, (DrainReplica, ReactivateReplica)):
                if self.sleep_tier is not None and live is not None:
                    if isinstance(action, DrainReplica):
                        model_replica = self.model.replicas.get(ReplicaId(action.replica_id))
                        worker = self.model.workers[model_replica.worker_id] if model_replica is not None else None
                        self.sleep_tier.note_drain(action.replica_id, action.reason.code, live.engine,
                                                   frees_accelerator=worker is not None
                                                   and sleep_frees_accelerator(worker))
                    else:
                        self.sleep_tier.note_reactivate(action.replica_id)
                self._record(action, action.replica_id.split("#")[0])
            elif isinstance(action, RejectRequest):
                self.counters["rejected"] += 1
                self._rejections[action.request.request_id] = action
                self._record(action, action.request.expert_id)
            elif isinstance(action, MigrateRequest):
                self._record(action, str(action.to_replica_id).split("#")[0])
        if actions:
            self._notify()

    def _give_devices(self, action: StartReplica, engine: Any, woken: Asleep | None) -> None:
        """Books a starting replica's devices, as many as the fleet model counts for it (`Replica.num_devices`:
        its tensor-parallel size on a worker that declares devices): a woken engine keeps those it held asleep
        (its accelerator context is there), a fresh one gets the lowest free indices. Raises DevicesBusy when
        too few are free: placement never chooses such a worker, so only if the book and the model disagree."""
        if woken is not None:
            held = self.devices.held(woken.replica_id)
            self.devices.release(woken.replica_id)
            if held:
                self.devices.assign(action.replica_id, action.worker_id, len(held), exactly=held)
            return
        num_devices = self.model.replicas[action.replica_id].num_devices
        if num_devices and self.devices.has_devices(action.worker_id) and hasattr(engine, "devices"):
            engine.devices = self.devices.assign(action.replica_id, action.worker_id, num_devices)

    def _sleeps(self, replica_id: str, replica: LiveReplica, stop_code: Any = None) -> bool:
        """Puts a stopping replica to sleep instead, if keep-alive unloaded it for that, its engine can, and the
        stop (`stop_code`) is not for another start's room."""
        model_replica = self.model.replicas.get(ReplicaId(replica_id))
        if self.sleep_tier is None or model_replica is None:
            return False
        estimate = self.model.estimates[(replica.expert.id, replica.hardware)]
        # The wake this engine took last, else the perf model's, else (an engine the model has no wake for: the
        # CPU worker's until measured) its cold start.
        wake_s = (replica.cold_start or {}).get("wake_s") or estimate.wake_s or estimate.unpriced().cold_start_s
        if not self.sleep_tier.stop_or_sleep(replica_id, replica.expert.id, model_replica.worker_id, replica.hardware,
                                             replica.engine, wake_s, self.clock(),
                                             num_devices=model_replica.num_devices, stop_code=stop_code):
            return False
        self._reflect_asleep()
        return True

    def _reflect_asleep(self) -> None:
        """The model with the asleep replicas in it: starts priced at their wakes and the devices they keep
        (`fleet.sleep.reflect_asleep`, as the simulator does)."""
        self.model = reflect_asleep(self.model, self.sleep_tier.asleep)

    async def _run_start(self, replica: LiveReplica, sleep_task: asyncio.Task | None = None) -> None:
        started = time.perf_counter()
        if sleep_task is not None:  # an asleep engine: wake it, no new process
            try:
                replica.cold_start = {"wake_s": await LiveSleepTier.wake(replica.engine, sleep_task, self.clock)}
            except Exception as exc:  # noqa: BLE001 — a failed wake: stop the engine; the policies start afresh
                replica.last_error = exc.detail if isinstance(exc, EngineError) else f"{type(exc).__name__}: {exc}"
                await replica.engine.stop()
                self._execute([StopReplica(ReplicaId(replica.replica_id), Reason(LiveReasonCode.START_FAILED, replica.last_error))])
                return
            if replica.replica_id in self.live:
                self._transition(replica.replica_id, ReplicaState.WARM)
                self._wakeup.set()
                self._notify()
            return
        try:
            await replica.engine.start()
        except Exception as exc:  # noqa: BLE001 — any start failure makes the replica unusable, with the reason kept
            detail = exc.detail if isinstance(exc, EngineError) else f"{type(exc).__name__}: {exc}"
            replica.last_error = detail
            log.error("replica %s failed to start: %s", replica.replica_id, detail)
            self._execute([StopReplica(ReplicaId(replica.replica_id), Reason(LiveReasonCode.START_FAILED, detail))])
            return
        anatomy = getattr(replica.engine, "last_cold_start", None)
        measured_s = time.perf_counter() - started
        replica.cold_start = dataclasses.asdict(anatomy) if anatomy is not None else {"ready_s": measured_s}
        key = (replica.expert.id, replica.hardware)
        if key in self.model.estimates and anatomy is not None:
            # Measured cold starts replace the guess, so admission and routing predict wake-ups truthfully.
            estimates = dict(self.model.estimates)
            estimates[key] = est.with_measured_cold_start(estimates[key], measured_s)
            self.model = self.model.evolve(estimates=estimates)
        if replica.replica_id in self.live:
            self._transition(replica.replica_id, ReplicaState.WARM)
            # The requests queued on it start first, then a step sees the replica warm and busy (the simulator
            # does the same, in the same order).
            self._notify()
            self._wakeup.set()

    def _next_step_at(self) -> float:
        """The loop's next periodic step, or an announced pre-warm's time if sooner."""
        next_at = self.loop.next_periodic_step_at(self.clock())
        if self._prewarm_steps_at:
            next_at = min(next_at, self._prewarm_steps_at[0])
        return next_at

    async def _control_loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=max(0.0, self._next_step_at() - self.clock()))
            except asyncio.TimeoutError:
                pass
            # Let whatever else happens at this instant (a replica turning warm, an arrival) land first: one step
            # then serves every trigger of the instant, after them, as the simulator orders its events.
            await asyncio.sleep(0)
            self._wakeup.clear()
            while self._prewarm_steps_at and self._prewarm_steps_at[0] <= self.clock():
                heapq.heappop(self._prewarm_steps_at)
            try:
                due = self._inventory_interval_s is not None and time.monotonic() - self._inventory_read_at >= self._inventory_interval_s
                if due or self._to_replace:
                    await self.refresh_inventory()
                self._reap_dead_engines()
                if self.sleep_tier is not None and (expired := self.sleep_tier.expire(self.clock())):
                    for asleep in expired:
                        self.devices.release(asleep.replica_id)
                    self._reflect_asleep()
                self._step()
            except Exception:  # noqa: BLE001 — a failing step must not kill the loop; it is logged and retried
                log.exception("control step failed")

    def _reap_dead_engines(self) -> None:
        """Stops warm replicas whose engine process has exited (health check), so requests stop going there
        and the policies start a replacement if one is needed."""
        for replica_id, live in list(self.live.items()):
            replica = self.model.replicas.get(ReplicaId(replica_id))
            if replica is not None and replica.state is ReplicaState.WARM and getattr(live.engine, "is_running", True) is False:
                live.last_error = "the engine process exited"
                self._execute([self.loop.lost(self.model.now_s, ReplicaId(replica_id), live.last_error)])

    async def refresh_inventory(self) -> None:
        """Re-reads the cluster's workers now (stopping the replicas of lost ones), then starts a replacement,
        where the placement policy puts it, for every replica lost since the last refresh."""
        if self._inventory_interval_s is not None:
            self._inventory_read_at = time.monotonic()
            self._apply_inventory(await asyncio.to_thread(self.cluster.workers))
        pending, self._to_replace = self._to_replace, []
        for expert_id in pending:
            start = self._start_action(self._experts[expert_id], LiveReasonCode.REPLACE_LOST, "replaces a lost replica")
            if start is not None:
                self._execute(start)

    def _apply_inventory(self, workers: list[Worker]) -> None:
        """Brings the model's workers in line with the cluster's: replicas on a lost worker are stopped (their
        in-flight requests fail with `ReplicaLost`, their queued ones go back to be placed) and queued for
        replacement; new workers (and new hardware kinds) become usable."""
        alive = {w.worker_id: w for w in workers}
        model = self._now()
        lost_workers = [worker_id for worker_id in model.workers if worker_id not in alive]
        for worker_id in lost_workers:
            detail = f"worker {worker_id} was lost (its node left the cluster)"
            log.error("%s; stopping its replicas", detail)
            for replica_id, replica in list(self.model.replicas.items()):
                if replica.worker_id != worker_id or replica.state is ReplicaState.STOPPED:
                    continue
                live = self.live.get(replica_id)
                if live is not None:
                    live.last_error = detail
                self._execute([StopReplica(replica_id, Reason(LiveReasonCode.WORKER_LOST, detail))])
                self._to_replace.append(replica.expert_id)
        if not lost_workers and alive.keys() == model.workers.keys():
            return
        estimates = dict(self.model.estimates)
        for expert in self.config.experts:
            for estimate in est.serving_estimates(expert, workers):
                estimates.setdefault((estimate.expert_id, estimate.hardware), estimate)  # measured ones stay
        self.model = self.model.evolve(workers=alive, estimates=estimates)

    def _record(self, action: Action, expert_id: str) -> None:
        reason = getattr(action, "reason", None)
        self.decisions.append({
            "at": self.clock(), "action": type(action).__name__, "expert": expert_id,
            "replica": str(getattr(action, "replica_id", "") or ""),
            "reason": getattr(reason, "detail", "") if reason is not None else "",
            "code": reason.code.value if reason is not None else "",
        })

    # ---- for operators

    def snapshot(self) -> dict[str, Any]:
        """The JSON view behind GET /admin/fleet (see `switchboard.runtime.view`)."""
        return describe_fleet(self, self._now())


def fleet_route(plane: ControlPlane, snapshot: FleetSnapshot, choice: Any, is_available: Callable[[str], bool]) -> RouteDecision | None:
    """The fleet-aware choice among `choice`'s candidates (and stand-ins) whose circuits are closed, on
    `snapshot`; None when there is nothing to decide (no candidates, every circuit open): the router's pick
    stands. A pure function of its arguments, shared by `LiveFleet` and a Ray gateway deciding on its view."""
    if not choice.candidates:
        return None
    candidates = [ExpertCandidate(ExpertId(e), q, p) for e, q, p in choice.candidates if is_available(e)]
    if not candidates:  # every circuit open: keep the router's pick, whose lease will say so
        return None
    stand_in_ids = [ExpertId(e) for e in getattr(choice, "stand_ins", ()) if is_available(e)]
    return plane.route(snapshot, candidates, choice.cost_weight, stand_in_ids, getattr(choice, "num_prompt_tokens", None))


def route_answer(choice: Any, decision: RouteDecision) -> tuple[str, dict[str, Any]]:
    """`route`'s answer for `decision`: the expert to use and what the `x-switchboard-route` header says."""
    if not decision.expert_id:
        return choice.expert_id, {}
    return decision.expert_id, {
        "fleet": decision.reason.code.value,
        "fleet_reason": decision.reason.detail,
        "router_choice": choice.expert_id,
        "expects_cold_start": decision.is_cold_start,
        "waking": list(decision.wake_expert_ids),
    }
