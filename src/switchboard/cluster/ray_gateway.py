"""A gateway's handle on the shared fleet of a Ray cluster (docs/ray.md): `RemoteFleet`, with `LiveFleet`'s
surface (`lease`, `route`, `snapshot`, ...), over the control actor (`ray_control.ControlActor`).

The gateway joins (or creates) the detached control actor, long-polls its view of the fleet (the operator's view
and the routing view, in one answer), assigns requests to warm replicas itself (`ray_routing.LocalRouter`) and
routes `model: auto` requests itself, reporting both in batches; a request that needs a start or a queue asks the
actor, waiting for it while Ray restarts it (`cluster.control_restart_wait_s`). When a new incarnation of the actor answers, the
gateway reports everything it has in flight to it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections import deque
from types import SimpleNamespace
from typing import Any

from switchboard.cluster.ray_cluster import connect
from switchboard.cluster.ray_control import ControlActor, config_fingerprint
from switchboard.cluster.ray_direct import connect_direct
from switchboard.cluster.ray_key_ledger import RayKeyLedger
from switchboard.cluster.ray_replica import RayReplicaEngine, RemoteEngineError
from switchboard.cluster.ray_streams import StreamChannel
from switchboard.cluster.ray_routing import POLL_INTERVAL_S, REPORT_INTERVAL_S, Ended, LoadReports, LocalRouter, Routed, Started, Timed
from switchboard.config.schema import ExpertConfig, OpenAIBackend, RayClusterConfig, SwitchboardConfig
from switchboard.engines.base import EngineError, EngineUnavailable
from switchboard.engines.factory import build_engine
from switchboard.fleet.state import QueuedRequest
from switchboard.policies.control import ControlPlane
from switchboard.runtime.circuits import CircuitBoard
from switchboard.runtime.fleet import background_request, fleet_route, route_answer
from switchboard.runtime.lease import MAX_DECISIONS_KEPT, AdmissionRejected, Lease, LiveReplica, count_outcome
from switchboard.runtime.view import describe_external
from switchboard.types import ExpertId, RequestId

log = logging.getLogger("switchboard.cluster")

SNAPSHOT_INTERVAL_S = POLL_INTERVAL_S
"""How often, at the latest, a gateway's copy of the fleet view (GET /admin/fleet, /metrics, the dashboard, and
its routing view) is refreshed; a new view version is pushed at once (long poll)."""
CONTROL_RETRY_INTERVAL_S = 0.2
"""How often a request that needs the control actor tries again while Ray restarts it."""


def _is_older(version: Any, than: Any) -> bool:
    """Whether view version `version` (None: no view yet) predates `than`; another incarnation's counts as older."""
    if than is None:
        return False
    if version is None or version[0] != than[0]:
        return True
    return version[1] < than[1]


class SnapshotModel:
    """The two fleet-model queries the gateway's metrics and dashboard make, answered from the actor's view."""

    def __init__(self, view: dict[str, Any]) -> None:
        self._unplaced = {e["id"]: e.get("num_unplaced", 0) for e in view.get("experts", [])}
        self._memory_used = {w["worker_id"]: w.get("memory_used_gb", 0.0) for w in view.get("workers", [])}

    def unplaced_of(self, expert_id: str) -> tuple[None, ...]:
        return (None,) * self._unplaced.get(expert_id, 0)

    def memory_used_gb(self, worker_id: str) -> float:
        return self._memory_used.get(worker_id, 0.0)


class RemoteFleet:
    """A gateway's handle on the shared control actor, with `LiveFleet`'s surface.

    External (`openai`) experts are served from the gateway itself, as in embedded mode. `snapshot()`,
    `decisions`, `live` and `model` are a copy refreshed every `SNAPSHOT_INTERVAL_S`.
    """

    def __init__(self, config: SwitchboardConfig, *, engine_factory: Any = build_engine) -> None:
        assert isinstance(config.cluster, RayClusterConfig)
        connect(config.cluster)
        self.config = config
        self.settings = config.cluster
        self.engine_factory = engine_factory
        self._experts = {e.id: e for e in config.experts}
        self.external: dict[str, LiveReplica] = {}
        self.live: dict[str, LiveReplica] = {}
        self.decisions: deque[dict[str, Any]] = deque(maxlen=MAX_DECISIONS_KEPT)
        self.counters: dict[str, Any] = {}
        self.model = SnapshotModel({})
        self._view: dict[str, Any] = {"now": time.time(), "workers": [], "experts": [], "counters": {}, "decisions": []}
        self._actor: Any = None
        self.gateway_id = uuid.uuid4().hex[:12]
        """Who holds this gateway's leases in the control actor (they are released if it falls silent)."""
        self._tokens: dict[str, tuple[str, str, QueuedRequest]] = {}
        """Request id -> (lease token, replica id, request) of the leases the control actor granted."""
        self.router = LocalRouter(ControlPlane(config.control_plane.policies), random.Random(config.control_plane.seed))
        """This gateway's own decisions for warm replicas, on the view the control actor pushes."""
        self.reports = LoadReports()
        self._engines: dict[str, RayReplicaEngine] = {}
        """Replica id -> the engine proxy this gateway calls it through (kept: it remembers a lost actor)."""
        self._channels: dict[str, StreamChannel] = {}
        """Replica id -> the channel this gateway's streams from it are fetched through."""
        self._report_due: asyncio.Event | None = None
        self._report_task: asyncio.Task | None = None
        self._refresh_task: asyncio.Task | None = None
        self._syncing: asyncio.Future | None = None
        self._key_ledger: RayKeyLedger | None = None
        # This gateway's own breakers (what it saw fail); the control actor keeps the replicas' for the fleet.
        self.expert_circuits = CircuitBoard(config.failover.expert_circuit, time.time)
        self.replica_circuits = CircuitBoard(config.failover.replica_circuit, time.time)

    def expert(self, expert_id: str) -> ExpertConfig | None:
        return self._experts.get(expert_id)

    def is_available(self, expert_id: str) -> bool:
        """False while this gateway's circuit for the expert is open."""
        return self.expert_circuits.would_allow(expert_id)

    def is_ready(self, expert_id: str) -> bool:
        """Whether the last fleet view (at most `SNAPSHOT_INTERVAL_S` old) has a warm replica, or it is external."""
        if expert_id in self.external:
            return True
        return any(r["state"] == "warm" for e in self._view["experts"] if e["id"] == expert_id for r in e["replicas"])

    def wake(self, expert_id: str, detail: str) -> None:
        """Asks the control actor to start a replica of `expert_id` (fire and forget, as in embedded mode)."""
        self._actor.wake.remote(expert_id, detail)

    async def start(self) -> None:
        """Joins (or creates) the control actor, which starts the fleet once for all gateways."""
        import ray

        for expert in self.config.experts:
            if isinstance(expert.backend, OpenAIBackend):
                replica = LiveReplica(f"{expert.id}/upstream", expert, "remote", self.engine_factory(expert))
                self.external[expert.id] = replica
                await replica.engine.start()
        actor_class = ray.remote(ControlActor)
        # Restarted by Ray wherever `control_resources` allow (any node by default) when its node dies; its calls
        # are not retried (a lease or a load report must not count twice): the restarted actor rebuilds its state
        # from the live replica actors and the gateways' reports instead.
        self._actor = actor_class.options(
            name=self.settings.control_actor, namespace=self.settings.namespace, lifetime="detached", get_if_exists=True,
            num_cpus=0, max_restarts=-1, max_task_retries=0, max_concurrency=10_000,
            resources=dict(self.settings.control_resources),
        ).remote(self.config.model_dump(mode="json"), fleet_tag=uuid.uuid4().hex[:8] + "/")
        fingerprint = await self._actor.start.remote()
        if fingerprint != config_fingerprint(self.config):
            raise RuntimeError(
                f"the control actor '{self.settings.control_actor}' in Ray namespace '{self.settings.namespace}' already serves a "
                "different config; serve the same config from every gateway, or stop it first (`switchboard ray-stop`)"
            )
        if self._key_ledger is not None:
            self._key_ledger.flush_seeds()
        await self._refresh()
        self._report_due = asyncio.Event()
        self._refresh_task = asyncio.create_task(self._poll_forever(), name="switchboard-fleet-view")
        self._report_task = asyncio.create_task(self._report_forever(), name="switchboard-load-reports")

    def key_ledger(self) -> RayKeyLedger:
        """Where this gateway counts keys' usage: the control actor, shared with every other gateway."""
        if self._key_ledger is None:
            self._key_ledger = RayKeyLedger(lambda: self._actor, self.gateway_id, self.settings.control_actor,
                                            self.settings.control_restart_wait_s)
        return self._key_ledger

    async def stop(self) -> None:
        """Leaves the shared fleet running (other gateways use it); stops this gateway's own upstream clients."""
        for task in (self._refresh_task, self._report_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._send_reports()
        if self._key_ledger is not None and self._actor is not None:
            self._key_ledger.flush(give_back_all=True)
        await asyncio.gather(*(r.engine.stop() for r in self.external.values()), return_exceptions=True)

    # ---- what the gateway calls per request

    async def _control(self, expert_id: str, call: Any, *, undo: Any = None) -> Any:
        """Awaits `call()`, a control actor call. While Ray restarts the actor (`ActorUnavailableError`) the call
        is made again (after `undo()`, in case the failed one did run) until `cluster.control_restart_wait_s`
        passed: such requests wait for the restarted actor. An actor that stays unreachable, or is gone for good,
        is a clear 503 naming it, not an internal error."""
        from ray.exceptions import ActorUnavailableError, RayActorError

        deadline = time.monotonic() + self.settings.control_restart_wait_s
        while True:
            try:
                return await call()
            except ActorUnavailableError as exc:
                if time.monotonic() >= deadline:
                    raise EngineUnavailable(expert_id, f"the control actor '{self.settings.control_actor}' is unreachable "
                                            f"(restarting?) for over {self.settings.control_restart_wait_s:.0f} s: "
                                            f"{str(exc).splitlines()[0]}") from None
                if undo is not None:
                    undo()
                await asyncio.sleep(CONTROL_RETRY_INTERVAL_S)
            except RayActorError as exc:
                raise EngineUnavailable(expert_id, f"the control actor '{self.settings.control_actor}' is unreachable: {str(exc).splitlines()[0]}") from None

    async def route(self, choice: Any) -> tuple[str, dict[str, Any]]:
        """Fleet-aware routing decided here, on this gateway's view, by the control actor's own function
        (`fleet_route`), and reported to it in the next batch (at once when it wakes an expert, so the start
        is not delayed): no call to wait for."""
        model = self.router.model_at(time.time())
        decision = None if model is None else fleet_route(self.router.plane, model, choice, self.expert_circuits.would_allow)
        if decision is None:
            return choice.expert_id, {}
        self.reports.add(Routed(model.now_s, choice.expert_id, decision))  # type: ignore[union-attr]
        if decision.wake_expert_ids:
            self._send_reports()
        elif self.reports.is_due and self._report_due is not None:
            self._report_due.set()
        return route_answer(choice, decision)

    def lease(self, expert_id: str, request_id: str, num_prompt_tokens: int, max_tokens: int, prefix_key: str = "") -> Lease:
        if expert_id in self.external:
            return Lease(self, expert_id, None)  # type: ignore[arg-type]
        expert = self._experts[expert_id]
        request = QueuedRequest(RequestId(request_id), ExpertId(expert_id), time.time(), num_prompt_tokens, max_tokens,
                                ttft_slo_s=expert.ttft_slo_s, prefix_key=prefix_key, is_background=background_request.get())
        return Lease(self, expert_id, request)  # type: ignore[arg-type]

    async def acquire(self, lease: Lease) -> tuple[LiveReplica, bool]:
        if lease.request is None:
            return self.external[lease.expert_id], False
        import ray

        r = lease.request
        local = self.router.assign(r, time.time())
        if local is not None:  # a warm replica with room, chosen here: no call to the control actor
            self.reports.add(Started(r, local.replica_id))
            if self.reports.is_due and self._report_due is not None:
                self._report_due.set()
            engine = self._engines.get(local.replica_id)
            if engine is None:
                engine = self._engines[local.replica_id] = RayReplicaEngine(local.replica_id, r.expert_id, local.node_id,
                                                                            make_actor=None, actor=local.actor,
                                                                            channel=self._channel(local.replica_id, local.actor))
            return LiveReplica(local.replica_id, self._experts[r.expert_id], local.hardware, engine), False
        pending: list[Any] = []

        def call() -> Any:
            pending.append(self._actor.acquire.remote(r.expert_id, r.request_id, r.num_prompt_tokens,
                                                      r.num_output_tokens_expected, r.prefix_key, self.gateway_id,
                                                      is_background=r.is_background))
            return pending[-1]

        try:
            answer = await self._control(r.expert_id, call, undo=lambda: self._actor.abandon.remote(r.request_id))
        except asyncio.CancelledError:  # the client left or timed out while waiting: the actor must not keep a lease for it
            ray.cancel(pending[-1])
            self._actor.abandon.remote(r.request_id)
            raise
        if answer[0] == "rejected":
            raise AdmissionRejected(*answer[1:])
        if answer[0] == "error":
            raise answer[1].to_exception()
        info, version = answer[1], answer[2]
        self._tokens[r.request_id] = (info["token"], info["replica_id"], r)
        if _is_older(self._view.get("version"), version):
            # The fleet changed since this gateway's last view (e.g. the replica just started for this request
            # became warm): catch up before answering, so the operator's view never lags what a client has seen.
            await self._sync_view(version)
        engine = RayReplicaEngine(info["replica_id"], r.expert_id, info["node_id"], make_actor=None, actor=info["actor"],
                                  channel=self._channel(info["replica_id"], info["actor"]))
        return LiveReplica(info["replica_id"], self._experts[r.expert_id], info["hardware"], engine), bool(info["was_cold"])

    def _channel(self, replica_id: str, actor: Any) -> StreamChannel:
        """The one channel this gateway fetches `replica_id`'s streams through (all of them in one call)."""
        channel = self._channels.get(replica_id)
        if channel is None or channel.actor != actor:
            channel = self._channels[replica_id] = StreamChannel(
                actor, connect=connect_direct if self.settings.direct_requests else None)
        return channel

    def observe_timing(self, replica_id: str, timing: Any) -> None:
        """An answer's own timing on `replica_id` (llama.cpp's): reported with the next batch, for the control
        actor to measure the expert's speed (`LiveFleet.observe_timing`); the view it pushes carries the result."""
        self.reports.add(Timed(replica_id, timing))
        if self.reports.is_due and self._report_due is not None:
            self._report_due.set()

    def release(self, lease: Lease, *, ok: bool, exc: Any) -> None:
        count_outcome(lease, self.expert_circuits, ok=ok, exc=exc)
        if lease.request is None:
            return
        request_id = lease.request.request_id
        error = RemoteEngineError.of(exc) if isinstance(exc, EngineError) else None
        leased = self._tokens.pop(request_id, None)
        if leased is not None:
            token = leased[0]
            # Submitted now, before a retry's acquire. (Ray does not promise that an async actor runs one caller's
            # calls in order: a retry counted before this release overlaps it for a moment, never for good.)
            self._actor.release.remote(token, error, self.gateway_id)
            return
        self.router.finish(request_id)
        self.reports.add(Ended(request_id, ok, error, getattr(lease.replica, "replica_id", "")))
        if isinstance(exc, EngineUnavailable):
            # The replica's engine, actor or node is gone: never choose it again here, and tell the control
            # actor now (before a retry's acquire, submitted after this), which stops and replaces it.
            self.router.forget(lease.replica.replica_id)  # type: ignore[union-attr]
            self._send_reports()
        elif self.reports.is_due and self._report_due is not None:
            self._report_due.set()

    def _send_reports(self) -> None:
        """Sends the pending load events (fire and forget; Ray may run two reports out of the order they were sent
        in, which `ControlActor.report` copes with)."""
        events = self.reports.take()
        if events and self._actor is not None:
            self._actor.report.remote(self.gateway_id, events)

    async def _report_forever(self) -> None:
        assert self._report_due is not None
        while True:
            try:
                await asyncio.wait_for(self._report_due.wait(), timeout=REPORT_INTERVAL_S)
            except asyncio.TimeoutError:
                pass
            self._report_due.clear()
            try:
                self._send_reports()
                if self._key_ledger is not None:
                    self._key_ledger.flush()
            except Exception:  # noqa: BLE001 — a failed send is logged; the events of a dead actor are rebuilt
                log.exception("could not send load reports to the control actor")

    async def refresh_inventory(self) -> None:
        await self._control("", lambda: self._actor.refresh_inventory.remote())

    # ---- for operators

    def snapshot(self) -> dict[str, Any]:
        view = dict(self._view)
        view["decisions"] = list(self.decisions)[-50:]
        view["experts"] = [dict(e, replicas=list(e["replicas"])) for e in view["experts"]]
        for expert in view["experts"]:
            ext = self.external.get(expert["id"])
            if ext is not None:  # served by this gateway, as in embedded mode
                expert["replicas"].append(describe_external(ext))
        return view

    async def _sync_view(self, version: tuple) -> None:
        """Refreshes the view until it is at least as new as `version`. Concurrent callers share one refresh in
        flight; one that started before `version` existed is followed by another (at most two rounds: a fleet
        that keeps changing is caught up with by the periodic refresh)."""
        for _ in range(2):
            if self._syncing is None or self._syncing.done():
                self._syncing = asyncio.ensure_future(self._refresh())
            try:
                await asyncio.shield(self._syncing)
            except Exception:  # noqa: BLE001 — a failed refresh leaves the last view; the periodic one retries
                log.exception("could not refresh the fleet view from the control actor")
                return
            if not _is_older(self._view.get("version"), version):
                return

    async def _refresh(self, known_version: Any = None) -> None:
        """Installs the control actor's view: at once (`known_version` None), else once it differs from
        `known_version` or `POLL_INTERVAL_S` passed (the long poll)."""
        view = await self._actor.poll.remote(self.gateway_id, known_version, POLL_INTERVAL_S)
        routing = view.pop("routing")
        new, old = view.get("version"), self._view.get("version")
        if new is not None and old is not None and new[0] == old[0] and new[1] < old[1]:
            return  # overtaken by a newer refresh: keep the newer view
        known = {(d["at"], d["action"], d["replica"], d["code"]) for d in self.decisions}
        for d in view.pop("decisions"):  # keep the dicts already seen: the metrics watcher tracks them by identity
            if (d["at"], d["action"], d["replica"], d["code"]) not in known:
                self.decisions.append(d)
        self.counters = view["counters"]
        self.model = SnapshotModel(view)
        self.live = {
            r["replica_id"]: SimpleNamespace(replica_id=r["replica_id"], hardware=r["hardware"], cold_start=r.get("cold_start"),
                                             expert=self._experts[r["expert"]])
            for e in view["experts"] for r in e["replicas"]
        }
        self._view = view
        self.router.install(routing)
        leased = {replica_id for _, replica_id, _ in self._tokens.values()}
        self._engines = {r: e for r, e in self._engines.items() if r in routing.actors}  # gone replicas' proxies go
        kept = {r: c for r, c in self._channels.items() if r in routing.actors or r in leased}
        for replica_id, channel in self._channels.items():
            if replica_id not in kept:
                channel.close_when_idle()  # its direct connection, once the requests still on it end
        self._channels = kept
        if new is not None and old is not None and new[0] != old[0]:
            self._rejoin()

    def _rejoin(self) -> None:
        """The control actor was restarted (a new incarnation answered): tells it what this gateway has in
        flight, so that it counts those requests on their replicas again. Leases the old incarnation granted
        become this gateway's own requests (reported like those it assigned itself)."""
        for request_id, (_, replica_id, request) in list(self._tokens.items()):
            del self._tokens[request_id]
            self.router.adopt(request, replica_id)
        self._send_reports()
        in_flight = self.router.in_flight()
        if in_flight:
            self._actor.report.remote(self.gateway_id, in_flight)
        if self._key_ledger is not None:
            self._key_ledger.reseed()
        log.warning("the control actor '%s' restarted: reported %d requests in flight to it", self.settings.control_actor,
                    len(in_flight))

    async def _poll_forever(self) -> None:
        from ray.exceptions import RayActorError

        while True:
            try:
                await self._refresh(self._view.get("version"))
            except RayActorError as exc:  # away (restarting): warm replicas are served from the last view meanwhile
                log.warning("the control actor '%s' is unreachable; serving from the last fleet view: %s",
                            self.settings.control_actor, str(exc).splitlines()[0])
                await asyncio.sleep(SNAPSHOT_INTERVAL_S)
            except Exception:  # noqa: BLE001 — a missed refresh leaves the last view; logged and retried
                log.exception("could not refresh the fleet view from the control actor")
                await asyncio.sleep(SNAPSHOT_INTERVAL_S)
