"""The live fleet: the control plane's policies driven by wall-clock time, executing on real engines.

It keeps a `FleetSnapshot` (the fleet model) in step with the engines it runs, and follows the executor
contract of `switchboard.policies.control` (docs/control-plane.md): every arrival and finish is recorded, the
control step runs on an interval and on events (a request that needs a replica started, a replica that became
warm, a due pre-warm), and every action it returns is executed here — `StartReplica` spawns an engine in the
background, `StopReplica` stops one, `AssignRequest` hands the request its replica, `RejectRequest` answers
429/503 with Retry-After. The simulator drives the same `ControlPlane` through simulated time.

A request holds a `Lease` for its lifetime. External (`openai`) experts are always warm and bypass the
policies: one pseudo-replica each, no placement, no admission.

Live engines queue internally (llama.cpp serves one sequence at a time; simulated engines batch), so every
admitted request is marked running at once; the fleet model's queues only hold requests waiting for a replica
to start, and migration (which moves queued requests) acts only on those.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from switchboard.cluster.base import Cluster, EngineFactory
from switchboard.cluster.build import build_cluster
from switchboard.config.schema import EmbeddedClusterConfig, ExpertConfig, LlamaCppBackend, OpenAIBackend, SwitchboardConfig
from switchboard.engines.base import EngineError, EngineUnavailable, ReplicaLost
from switchboard.engines.factory import PooledEngineFactory
from switchboard.fleet import ops
from switchboard.fleet.state import FleetSnapshot, QueuedRequest, Worker
from switchboard.perf.roofline import engine_profile
from switchboard.policies.actions import (
    Action,
    DrainReplica,
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
from switchboard.policies.control import ControlPlane, ControlSettings, ControlState, Event, RequestArrived, RoutePredicted, WakeExpert
from switchboard.policies.routing import ExpertCandidate, RoutePrediction
from switchboard.runtime import estimates as est
from switchboard.runtime.circuits import CircuitBoard
from switchboard.runtime.devices import DeviceBook, DevicesBusy
from switchboard.runtime.sleeping import LiveSleepTier, stop_after_sleep
from switchboard.types import ExpertId, ReplicaId, ReplicaState, RequestId

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
        self.plane = ControlPlane(ControlSettings.model_validate(cp.policies))
        keepalive = self.plane.settings.keepalive
        self.sleep_tier = LiveSleepTier(keepalive.asleep_keepalive_s) if keepalive.sleep_after_s is not None else None
        self.devices = DeviceBook({w.id: w.devices for w in config.workers})
        self.rng = random.Random(cp.seed)
        self._experts = {e.id: e for e in config.experts}
        workers = self.cluster.workers()
        estimates = [e for x in config.experts for e in est.serving_estimates(x, workers)]
        self.model: FleetSnapshot = ops.empty_fleet(clock(), workers, [est.expert_spec(e) for e in config.experts], estimates)
        self.state = ControlState()
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
        self._changed = asyncio.Event()
        self._pending_events: list[Event] = []
        self._rejections: dict[RequestId, RejectRequest] = {}
        self._last_keepalive: dict[str, dict[str, Any]] = {}

    # ---- life cycle

    def expert(self, expert_id: str) -> ExpertConfig | None:
        return self._experts.get(expert_id)

    def is_available(self, expert_id: str) -> bool:
        """False while the expert's circuit is open (a request would be refused without being tried)."""
        return self.expert_circuits.would_allow(expert_id)

    async def start(self) -> None:
        """Starts the control loop and one replica per `warm_at_start` expert, waiting at most `startup_wait_s`
        for them; failures are logged, not fatal."""
        for expert in self.config.experts:
            if isinstance(expert.backend, OpenAIBackend):
                replica = LiveReplica(f"{expert.id}/upstream", expert, "remote", self.engine_factory(expert))  # external: bypasses the cluster
                self.external[expert.id] = replica
                await replica.engine.start()
        for expert in self.config.experts:
            if expert.warm_at_start and expert.id not in self.external:
                start = self._start_action(expert)
                if start is not None:
                    self._execute([start])  # one at a time: each placement sees the memory the last one took
        self._loop_task = asyncio.create_task(self._control_loop(), name="switchboard-control-loop")
        # Real engines get up to `startup_wait_s` to come up before serving starts; simulated ones model cold
        # starts of a minute or more for big experts, which must not hold the whole gateway.
        starting = [r.start_task for r in self.live.values() if r.start_task and r.expert.backend.kind != "simulated"]
        if starting:
            await asyncio.wait(starting, timeout=self.config.control_plane.startup_wait_s)
        if isinstance(self.engine_factory, PooledEngineFactory):
            self.engine_factory.start()  # after the first starts, so the standby workers do not slow them

    def _start_action(self, expert: ExpertConfig, code: LiveReasonCode = LiveReasonCode.WARM_AT_START,
                      why: str = "the expert is configured warm_at_start") -> StartReplica | None:
        """A start for `expert` where the placement policy puts it, given the replicas already planned."""
        placement = self.plane.placement.place(self._now(), ExpertId(expert.id))
        if not placement.is_placed:
            log.error("no worker can host a replica of expert %s (%s): %s", expert.id, why, placement.reason)
            return None
        worker, estimate = placement.candidate.worker, placement.candidate.estimate
        self.state = dataclasses.replace(self.state, num_replicas_created=self.state.num_replicas_created + 1)
        replica_id = ReplicaId(f"{expert.id}#{self.state.num_replicas_created}")
        return StartReplica(replica_id, ExpertId(expert.id), worker.worker_id, worker.hardware, estimate.cold_start_s,
                            Reason(code, why))

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

    def route(self, choice: Any) -> tuple[str, dict[str, Any]]:
        """Re-scores the router's feasible candidates against the live fleet (queueing, cold starts).

        Returns the expert to use and what to report about it. Cold experts that quality prefers are woken in
        the background (cold-start hiding), and the router's pick feeds route-aware pre-warming.
        """
        if not choice.candidates:
            return choice.expert_id, {}
        candidates = [ExpertCandidate(ExpertId(e), q, p) for e, q, p in choice.candidates if self.is_available(e)]
        if not candidates:  # every circuit open: keep the router's pick, whose lease will say so
            return choice.expert_id, {}
        stand_in_ids = [ExpertId(e) for e in getattr(choice, "stand_ins", ()) if self.is_available(e)]
        decision = self.plane.route(self._now(), candidates, choice.cost_weight, stand_in_ids)
        if not decision.expert_id:
            return choice.expert_id, {}
        now = self.clock()
        self._pending_events.append(RoutePredicted(RoutePrediction(now, {ExpertId(choice.expert_id): 1.0})))
        for expert_id in decision.wake_expert_ids:
            self._pending_events.append(WakeExpert(expert_id, decision.reason))
        if decision.wake_expert_ids:
            self._wakeup.set()
        if decision.expert_id != choice.expert_id or decision.wake_expert_ids:
            self.decisions.append({"at": now, "action": "Route", "expert": decision.expert_id, "replica": "",
                                   "reason": decision.reason.detail, "code": decision.reason.code.value})
        return decision.expert_id, {
            "fleet": decision.reason.code.value,
            "fleet_reason": decision.reason.detail,
            "router_choice": choice.expert_id,
            "expects_cold_start": decision.is_cold_start,
            "waking": list(decision.wake_expert_ids),
        }

    def is_ready(self, expert_id: str) -> bool:
        """Whether a request to `expert_id` can start without a cold start (a warm replica, or external)."""
        return self.model.is_warm(ExpertId(expert_id))

    def wake(self, expert_id: str, detail: str) -> None:
        """Asks the control plane to start a replica of `expert_id` (nothing if it may not or has one)."""
        self._pending_events.append(WakeExpert(ExpertId(expert_id), Reason(LiveReasonCode.KEY_POLICY, detail)))
        self._wakeup.set()

    # ---- requests

    def lease(self, expert_id: str, request_id: str, num_prompt_tokens: int, max_tokens: int, prefix_key: str = "") -> Lease:
        expert = self._experts[expert_id]
        if expert.id in self.external:
            return Lease(self, expert_id, None)
        request = QueuedRequest(
            RequestId(request_id), expert.id, self.clock(), num_prompt_tokens, max_tokens,
            ttft_slo_s=expert.ttft_slo_s, prefix_key=prefix_key,
        )
        return Lease(self, expert_id, request)

    async def _acquire(self, lease: Lease) -> tuple[LiveReplica, bool]:
        if lease.request is None:
            return self.external[lease.expert_id], False
        request = lease.request
        self.model = ops.record_arrival(self._now(), request.expert_id, request.num_prompt_tokens,
                                        request.num_output_tokens_expected)
        fast = self.plane.admit_fast(self.model, request, self.rng)
        if fast.needs_step:
            self._step([RequestArrived(request)])
        else:
            self._execute(list(fast.actions))
        return await self._await_replica(request)

    async def _await_replica(self, request: QueuedRequest) -> tuple[LiveReplica, bool]:
        """Follows the request through the model until it may run on a warm replica, or is rejected.

        A request runs when its replica is warm, has a free sequence slot and the queue-order policy picks it
        next; until then it waits in the model's queue, where autoscaling sees it and migration may move it.
        """
        was_cold = False
        deadline = time.monotonic() + self.config.control_plane.start_timeout_s
        request_id = request.request_id
        try:
            while True:
                changed = self._changed
                rejection = self._rejections.pop(request_id, None)
                if rejection is not None:
                    self.model = ops.record_finish(self._now(), request.expert_id)
                    raise AdmissionRejected(request.expert_id, rejection.status_code, rejection.retry_after_s, rejection.reason.detail)
                where = self._where(request_id)
                replica = self.model.replicas.get(where) if where is not None else None
                if replica is not None and replica.state is ReplicaState.WARM and where in self.live:
                    if replica.load.num_running < replica.capacity.max_num_seqs:
                        chosen = self.plane.queue_order.next_request(replica.load.queue, self.model.now_s)
                        if chosen.request_id == request_id:
                            self.model = ops.start_request(self._now(), where, request_id)
                            self.counters["admitted"] += 1
                            return self.live[where], was_cold
                else:
                    was_cold = True
                    if where is None:
                        self._wakeup.set()  # unplaced: the next step re-admits it
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise EngineUnavailable(request.expert_id, f"no replica could take the request within {self.config.control_plane.start_timeout_s:.0f} s")
                try:
                    await asyncio.wait_for(changed.wait(), timeout=min(remaining, 1.0))
                except asyncio.TimeoutError:
                    pass
        except BaseException:
            if self._where(request_id) != "missing":
                self.model = ops.remove_request(self._now(), request_id)[0]
                self.model = ops.record_finish(self.model, request.expert_id)
            self._notify()
            raise

    def _where(self, request_id: RequestId) -> ReplicaId | None | str:
        """The replica a not-yet-started request waits on, None if unplaced, "missing" if not in the model."""
        for rid, queued in self.model.iter_requests():
            if queued.request_id == request_id:
                return rid
        return "missing"

    def _notify(self) -> None:
        """Wakes every waiting request to look at the model again (a slot freed, a replica warmed, a move)."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _release(self, lease: Lease, *, ok: bool, exc: Any) -> None:
        replica = count_outcome(lease, self.expert_circuits, ok=ok, exc=exc)
        if lease.request is None:
            return
        replica_circuit = self.replica_circuits.record(replica.replica_id, None if ok else exc)
        model = self._now()
        if replica.replica_id in model.replicas:
            model = ops.finish_request(model, ReplicaId(replica.replica_id), lease.request.num_tokens)
        self.model = ops.record_finish(model, lease.request.expert_id)
        self._notify()
        if isinstance(exc, EngineUnavailable) and replica.replica_id in self.live:
            # The engine is gone (process died): stop the replica; the next request starts a fresh one.
            replica.last_error = exc.detail
            self._execute([StopReplica(ReplicaId(replica.replica_id), Reason(LiveReasonCode.ENGINE_LOST, exc.detail))])
            if isinstance(exc, ReplicaLost):  # its worker may be gone: re-read the inventory, then replace it
                self._to_replace.append(replica.expert.id)
                self._wakeup.set()
        elif replica_circuit is CircuitState.OPEN and replica.replica_id in self.live:
            # A local replica is ours to restart: replacing it beats probing it (the policies start a fresh one
            # if the load needs it), and routing can never pick a stopped replica.
            replica.last_error = f"circuit opened: {getattr(exc, 'detail', None) or type(exc).__name__}"
            self._execute([StopReplica(ReplicaId(replica.replica_id), Reason(LiveReasonCode.CIRCUIT_OPEN, replica.last_error))])

    # ---- the control step and its actions

    def _step(self, events: list[Event]) -> None:
        events = self._pending_events + events
        self._pending_events = []
        result = self.plane.step(self._now(), self.state, events, self.rng)
        self.state = result.state
        self._last_keepalive = {
            e: {"action": d.action.value, "reason": d.reason.detail} for e, d in result.keepalive.items()
        } if result.keepalive else self._last_keepalive
        self._execute(list(result.actions))

    def _execute(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, PrewarmAt):
                # The loop steps every step_interval_s, which is when a due pre-warm starts; the step re-announces
                # pending pre-warms each time, so only a new time is worth an entry in the decision log.
                if self._prewarms_announced.get(action.expert_id) != action.at_s:
                    self._prewarms_announced[action.expert_id] = action.at_s
                    self._record(action, action.expert_id)
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
                asleep = self.sleep_tier.take(expert.id, action.worker_id, self.clock()) if self.sleep_tier else None
                engine = asleep[0] if asleep else self.cluster.engine_for(action.replica_id, expert, action.worker_id)
                try:
                    asleep, engine = self._give_devices(action, engine, asleep)
                except DevicesBusy as exc:
                    self._execute([StopReplica(action.replica_id, Reason(LiveReasonCode.START_FAILED, str(exc)))])
                    continue
                replica = LiveReplica(action.replica_id, expert, action.hardware, engine)
                self.live[action.replica_id] = replica
                self.counters["wakes" if asleep else "cold_starts"] += 1
                replica.start_task = asyncio.create_task(self._run_start(replica, asleep[1] if asleep else None))
                self._record(action, action.expert_id)
            elif isinstance(action, StopReplica):
                replica = self.live.pop(action.replica_id, None)
                self.replica_circuits.forget(action.replica_id)
                self.devices.release(action.replica_id)  # an asleep replica holds no device either
                if replica is not None and not self._sleeps(action.replica_id, replica):
                    asyncio.create_task(replica.engine.stop())
                self._record(action, action.replica_id.split("#")[0])
                self.model = ops.prune_stopped(self.model)
            elif isinstance(action, (DrainReplica, ReactivateReplica)):
                if self.sleep_tier is not None and live is not None:
                    if isinstance(action, DrainReplica):
                        self.sleep_tier.note_drain(action.replica_id, action.reason.code, live.engine)
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

    def _give_devices(self, action: StartReplica, engine: Any, asleep: Any) -> tuple[Any, Any]:
        """Gives a starting replica whole devices of its worker, if the worker declares any: the perf model's
        tensor-parallel size, the same devices for an asleep engine (its CUDA context is there; if they were
        given away meanwhile, it is stopped and a fresh engine started). Returns (asleep, engine); raises
        DevicesBusy when too few devices are free."""
        if not self.devices.has_devices(action.worker_id) or not hasattr(engine, "devices"):
            return asleep, engine
        expert = self._experts[action.expert_id]
        num_devices = engine_profile(expert.params_b, action.hardware).num_devices
        if asleep is not None:
            try:
                self.devices.assign(action.replica_id, action.worker_id, num_devices, exactly=engine.devices)
                return asleep, engine
            except DevicesBusy:
                asyncio.ensure_future(stop_after_sleep(engine, asleep[1]))
                asleep, engine = None, self.cluster.engine_for(action.replica_id, expert, action.worker_id)
        engine.devices = self.devices.assign(action.replica_id, action.worker_id, num_devices)
        return asleep, engine

    def _sleeps(self, replica_id: str, replica: LiveReplica) -> bool:
        """Puts a stopping replica to sleep instead, if keep-alive unloaded it for that and its engine can."""
        model_replica = self.model.replicas.get(ReplicaId(replica_id))
        if self.sleep_tier is None or model_replica is None:
            return False
        wake_s = (replica.cold_start or {}).get("wake_s") or self.model.estimates[(replica.expert.id, replica.hardware)].cold_start_s
        return self.sleep_tier.stop_or_sleep(replica_id, replica.expert.id, model_replica.worker_id, replica.hardware,
                                             replica.engine, wake_s, self.clock())

    async def _run_start(self, replica: LiveReplica, sleep_task: asyncio.Task | None = None) -> None:
        started = time.perf_counter()
        if sleep_task is not None:  # an asleep engine: wake it, no new process
            try:
                replica.cold_start = {"wake_s": await LiveSleepTier.wake(replica.engine, sleep_task)}
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
            self._wakeup.set()
            self._notify()

    async def _control_loop(self) -> None:
        interval_s = self.config.control_plane.step_interval_s
        while True:
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=interval_s)
            except asyncio.TimeoutError:
                pass
            self._wakeup.clear()
            try:
                due = self._inventory_interval_s is not None and time.monotonic() - self._inventory_read_at >= self._inventory_interval_s
                if due or self._to_replace:
                    await self.refresh_inventory()
                self._reap_dead_engines()
                if self.sleep_tier is not None:
                    self.sleep_tier.expire(self.clock())
                self._step([])
            except Exception:  # noqa: BLE001 — a failing step must not kill the loop; it is logged and retried
                log.exception("control step failed")

    def _reap_dead_engines(self) -> None:
        """Stops warm replicas whose engine process has exited (health check), so requests stop going there
        and the policies start a replacement if one is needed."""
        for replica_id, live in list(self.live.items()):
            replica = self.model.replicas.get(ReplicaId(replica_id))
            if replica is not None and replica.state is ReplicaState.WARM and getattr(live.engine, "is_running", True) is False:
                live.last_error = "the engine process exited"
                self._execute([StopReplica(ReplicaId(replica_id), Reason(LiveReasonCode.ENGINE_LOST, live.last_error))])

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
                self._execute([start])

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
        from switchboard.runtime.view import describe_fleet

        return describe_fleet(self)


