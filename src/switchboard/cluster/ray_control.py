"""The control plane as one named, detached Ray actor, shared by every gateway on the cluster (docs/ray.md).

`ControlActor` runs the same `LiveFleet` as embedded mode (policies, admission, leases, reaping, node-loss
handling) over `RayCluster`, so all gateways see one fleet. `RemoteFleet` is what a gateway holds instead of a
`LiveFleet`: the same surface (`lease`, `route`, `snapshot`, ...). A request to a warm replica with room is
assigned in the gateway itself (`ray_routing.LocalRouter`, on the view the actor pushes by long poll) and
reported to the actor in batches; anything else takes a lease from the actor. Tokens stream straight from the
replica actor to the gateway (the control actor never carries answer traffic).

The first gateway creates the actor (`get_if_exists`); later ones join it and must bring the same config. The
actor outlives the gateways (it is detached): `stop_control_actor` (or `switchboard ray-stop`) ends it and its
replicas. Every gateway has an id; the leases it holds are released when it has not been heard from (it
long-polls its fleet view at least every `SNAPSHOT_INTERVAL_S`) for `cluster.gateway_timeout_s`, so a gateway
process that dies mid-request does not leave its replicas looking busy.

Ray restarts the actor when its node dies (`max_restarts=-1`); the restarted one takes over the live replica
actors and counts again the requests the gateways report in flight (docs/ray.md, "When the control actor's
node dies").
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import random
import time
import uuid
from collections import deque
from types import SimpleNamespace
from typing import Any

from switchboard.cluster.ray_cluster import connect
from switchboard.cluster.ray_limits import KeyCounts, RayKeyLedger
from switchboard.cluster.ray_replica import RayReplicaEngine, RemoteEngineError
from switchboard.cluster.ray_routing import (
    POLL_INTERVAL_S,
    REPORT_INTERVAL_S,
    Ended,
    LoadReports,
    LocalRouter,
    RoutingView,
    Started,
    without_requests,
)
from switchboard.config.schema import ExpertConfig, OpenAIBackend, RayClusterConfig, SwitchboardConfig
from switchboard.engines.base import EngineError, EngineUnavailable
from switchboard.engines.factory import build_engine
from switchboard.fleet.state import QueuedRequest
from switchboard.policies.control import ControlPlane
from switchboard.runtime.circuits import CircuitBoard
from switchboard.runtime.fleet import LiveFleet
from switchboard.runtime.lease import MAX_DECISIONS_KEPT, AdmissionRejected, Lease, LiveReplica, count_outcome
from switchboard.runtime.view import describe_external
from switchboard.types import ExpertId, ReplicaState, RequestId

log = logging.getLogger("switchboard.cluster")

SNAPSHOT_INTERVAL_S = POLL_INTERVAL_S
"""How often, at the latest, a gateway's copy of the fleet view (GET /admin/fleet, /metrics, the dashboard, and
its routing view) is refreshed; a new view version is pushed at once (long poll)."""
CONTROL_RETRY_INTERVAL_S = 0.2
"""How often a request that needs the control actor tries again while Ray restarts it."""
VERSION_CHECK_INTERVAL_S = 0.02
"""How often the control actor looks for a new view version to answer the gateways' long polls with."""


def config_fingerprint(config: SwitchboardConfig) -> str:
    """Gateways sharing a control actor must serve the same config; this is what they compare. The cluster
    address is left out: gateways on different nodes may reach the same cluster by different addresses."""
    settings = config.model_dump(mode="json")
    settings["cluster"].pop("address", None)
    text = json.dumps(settings, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _replica_info(token: str, lease: Lease) -> dict[str, Any]:
    replica = lease.replica
    assert replica is not None
    engine = replica.engine
    return {"token": token, "replica_id": replica.replica_id, "hardware": replica.hardware, "was_cold": lease.was_cold,
            "actor": getattr(engine, "actor", None), "node_id": getattr(engine, "node_id", "")}


def view_key(fleet: LiveFleet) -> tuple:
    """What changes whenever the fleet's membership changes: a replica starts, changes state (every transition
    is counted) or goes, or a worker comes or goes. Loads and routing or admission decisions are left out: they
    change with every request, and a gateway catching up on each would refresh its whole view per request (the
    periodic refresh brings them)."""
    model = fleet.model
    return sum(model.transition_counts.values()), tuple(sorted(model.replicas)), tuple(sorted(model.workers))


def silent_gateways(seen_at_s: dict[str, float], now_s: float, timeout_s: float) -> list[str]:
    """Gateways not heard from for more than `timeout_s` at `now_s`, oldest first."""
    return sorted((g for g, t in seen_at_s.items() if now_s - t > timeout_s), key=seen_at_s.__getitem__)


class ControlActor:
    """The body of the control actor. Every method is a coroutine on the actor's one event loop.

    `gateway_timeout_s` defaults to the config's `cluster.gateway_timeout_s` (Ray) or 10 s; `clock` is
    monotonic seconds (both passed in by tests)."""

    def __init__(self, config: dict[str, Any], gateway_timeout_s: float | None = None,
                 clock: Any = time.monotonic, fleet_tag: str = "") -> None:
        self.config = SwitchboardConfig.model_validate(config)
        self.fleet_tag = fleet_tag
        """Prefix of this fleet's replica actor names; Ray passes it again when it restarts the actor, so the
        restarted one finds the replicas by name."""
        self._starting = asyncio.Lock()
        self.fleet: LiveFleet | None = None
        self._leases: dict[str, Lease] = {}
        self._owners: dict[str, str] = {}
        """Lease token -> id of the gateway holding it."""
        self._seen_at_s: dict[str, float] = {}
        """Gateway id -> when it last called (a lease, a release, its fleet-view refresh)."""
        self._tokens = itertools.count(1)
        cluster = self.config.cluster
        self.gateway_timeout_s = gateway_timeout_s if gateway_timeout_s is not None else (
            cluster.gateway_timeout_s if isinstance(cluster, RayClusterConfig) else 10.0)
        self.clock = clock
        self.num_leases_reclaimed = 0
        self.keys = KeyCounts(self.config.auth.rate_window_s)
        """Every gateway's keyed requests, counted once for the fleet (cluster-wide rpm, tpm and budgets)."""
        self._incarnation = uuid.uuid4().hex[:8]
        self._view_key: tuple = ()
        self._view_number = 0
        self._reaper: asyncio.Task | None = None
        self._adopted: dict[str, dict[str, Lease]] = {}
        """Gateway id -> request id -> lease: the requests gateways assigned to warm replicas themselves."""
        self._changed = asyncio.Event()
        """Set (and replaced) when the view version changes: what the gateways' long polls wait on."""
        self._watcher: asyncio.Task | None = None

    async def start(self) -> str:
        """Starts the fleet once (later calls only answer); returns the config fingerprint.

        On Ray the fleet first takes over the replica actors of this fleet still alive and serving: after Ray
        restarted this actor (its node died), the fleet is rebuilt from them, and from what the gateways report
        of their requests in flight (`report`), instead of starting replicas afresh."""
        async with self._starting:
            if self.fleet is None:
                cluster, survivors = None, []
                if isinstance(self.config.cluster, RayClusterConfig):
                    from switchboard.cluster.ray_cluster import RayCluster

                    cluster = RayCluster(self.config.cluster, fleet_tag=self.fleet_tag)
                    survivors = await cluster.surviving_replicas()
                fleet = LiveFleet(self.config, cluster=cluster)
                await fleet.start(survivors)
                if survivors:
                    log.warning("control plane restarted: took over %d live replicas (%s)", len(survivors),
                                ", ".join(s.replica_id for s in survivors))
                self.fleet = fleet
                self._reaper = asyncio.create_task(self._reclaim_forever(), name="switchboard-gateway-leases")
                self._watcher = asyncio.create_task(self._watch_versions(), name="switchboard-view-versions")
        return config_fingerprint(self.config)

    async def _started(self) -> LiveFleet:
        """The fleet, started first if need be (a restarted actor starts on its first call, from any gateway)."""
        if self.fleet is None:
            await self.start()
        return self._fleet()

    def node_id(self) -> str:
        """The Ray node this actor runs on (tests kill it; operators check where it went after a restart)."""
        import ray

        return ray.get_runtime_context().get_node_id()

    async def shutdown(self) -> None:
        await self._started()  # a restarted actor takes its replicas over first, so that they are stopped too
        for task in (self._reaper, self._watcher):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self.fleet is not None:
            await self.fleet.stop()

    def view_version(self) -> tuple[str, int]:
        """(this actor's incarnation, a number that grows whenever `view_key` changes): a gateway whose view is
        older than a version it was handed refreshes it. Another incarnation's numbers are not comparable."""
        key = view_key(self._fleet())
        if key != self._view_key:
            self._view_key = key
            self._view_number += 1
        return self._incarnation, self._view_number

    def _heard_from(self, gateway_id: str) -> None:
        if gateway_id:
            self._seen_at_s[gateway_id] = self.clock()

    async def reclaim_silent_gateways(self) -> list[str]:
        """Releases every lease held by a gateway silent for longer than the timeout (its process died or lost
        the cluster mid-request), counted as not served; returns those gateways' ids."""
        silent = silent_gateways(self._seen_at_s, self.clock(), self.gateway_timeout_s)
        for gateway_id in silent:
            del self._seen_at_s[gateway_id]
            tokens = [t for t, owner in self._owners.items() if owner == gateway_id]
            for token in tokens:
                del self._owners[token]
                await self._leases.pop(token).__aexit__(asyncio.CancelledError, None, None)
            adopted = self._adopted.pop(gateway_id, {})
            for lease in adopted.values():
                await lease.__aexit__(asyncio.CancelledError, None, None)
            tokens += list(adopted)
            self.num_leases_reclaimed += len(tokens)
            self.keys.release_gateway(gateway_id)
            if tokens:
                log.warning("gateway %s silent for over %.0f s: released the %d leases it held (%s)", gateway_id,
                            self.gateway_timeout_s, len(tokens), ", ".join(tokens))
        return silent

    async def _watch_versions(self) -> None:
        version = self.view_version()
        while True:
            await asyncio.sleep(VERSION_CHECK_INTERVAL_S)
            if (now := self.view_version()) != version:
                version = now
                self._changed.set()
                self._changed = asyncio.Event()

    async def _reclaim_forever(self) -> None:
        while True:
            await asyncio.sleep(self.gateway_timeout_s / 4)
            try:
                await self.reclaim_silent_gateways()
            except Exception:  # noqa: BLE001 — a failed pass is retried; the fleet must keep running
                log.exception("could not release the leases of silent gateways")

    def _fleet(self) -> LiveFleet:
        assert self.fleet is not None, "start() first"
        return self.fleet

    async def route(self, expert_id: str, candidates: tuple, cost_weight: float | None) -> tuple[str, dict[str, Any]]:
        return await (await self._started()).route(SimpleNamespace(expert_id=expert_id, candidates=candidates, cost_weight=cost_weight))

    async def acquire(self, expert_id: str, request_id: str, num_prompt_tokens: int, max_tokens: int, prefix_key: str,
                      gateway_id: str = "") -> tuple:
        """("ok", replica info) once a replica may run the request; ("rejected", ...) or ("error", ...) if not.
        The lease belongs to `gateway_id` (released if that gateway falls silent)."""
        self._heard_from(gateway_id)
        lease = (await self._started()).lease(expert_id, request_id, num_prompt_tokens, max_tokens, prefix_key)
        try:
            await lease.__aenter__()
        except AdmissionRejected as exc:
            return ("rejected", exc.expert_id, exc.status, exc.retry_after_s, exc.reason)
        except EngineError as exc:
            return ("error", RemoteEngineError.of(exc))
        token = f"{request_id}@{next(self._tokens)}"
        self._leases[token] = lease
        if gateway_id:
            self._owners[token] = gateway_id
        return ("ok", _replica_info(token, lease), self.view_version())

    async def release(self, token: str, error: RemoteEngineError | None, gateway_id: str = "") -> None:
        self._heard_from(gateway_id)
        self._owners.pop(token, None)
        lease = self._leases.pop(token, None)
        if lease is not None:
            exc = error.to_exception() if error is not None else None
            await lease.__aexit__(type(exc) if exc is not None else None, exc, None)

    async def abandon(self, request_id: str) -> None:
        """Releases any lease still held for `request_id` (its gateway gave up while the lease was granted)."""
        for token in [t for t in self._leases if t.startswith(f"{request_id}@")]:
            self._owners.pop(token, None)
            await self._leases.pop(token).__aexit__(asyncio.CancelledError, None, None)  # counted as not served

    async def refresh_inventory(self) -> None:
        await (await self._started()).refresh_inventory()

    # ---- keys' limits, for every gateway (`switchboard.cluster.ray_limits`)

    async def admit_key(self, key_id: str, limits: Any, num_tokens: int, usd_estimate: float, gateway_id: str) -> Any:
        self._heard_from(gateway_id)
        return self.keys.admit(key_id, limits, num_tokens, usd_estimate, gateway_id)

    async def settle_key(self, hold_id: str, num_tokens: int | None, usd: float) -> None:
        self.keys.settle(hold_id, num_tokens, usd)

    async def release_key(self, hold_id: str) -> None:
        self.keys.release(hold_id)

    async def seed_keys(self, seeds: list[tuple[str, float, float]]) -> None:
        for key_id, usd_today, usd_this_month in seeds:
            self.keys.seed(key_id, usd_today, usd_this_month)

    async def wake(self, expert_id: str, detail: str) -> None:
        (await self._started()).wake(expert_id, detail)

    # ---- gateways' own decisions (`switchboard.cluster.ray_routing`)

    async def report(self, gateway_id: str, events: list[Started | Ended]) -> None:
        """What `gateway_id` started on warm replicas it chose itself, and what of it ended, in order: counted
        in the fleet model as if admitted here (an end also feeds the replica's circuit and, for a lost engine,
        stops and replaces the replica). A start on a replica no longer warm here is not counted, nor its end."""
        self._heard_from(gateway_id)
        fleet = await self._started()
        adopted = self._adopted.setdefault(gateway_id, {})
        for event in events:
            if isinstance(event, Started):
                request = event.request
                if request.request_id not in adopted:
                    lease = Lease(fleet, request.expert_id, request)
                    if fleet.adopt(lease, event.replica_id):
                        adopted[request.request_id] = lease
            else:
                lease = adopted.pop(event.request_id, None)
                if lease is not None:
                    exc = event.error.to_exception() if event.error is not None else None
                    exc_type = type(exc) if exc is not None else (None if event.ok else asyncio.CancelledError)
                    await lease.__aexit__(exc_type, exc, None)

    async def poll(self, gateway_id: str, known_version: Any, timeout_s: float) -> dict[str, Any]:
        """The gateway's view (`snapshot`) with its `RoutingView` under "routing": at once if the view version
        is not `known_version`, else when it changes or after `timeout_s` (a long poll)."""
        self._heard_from(gateway_id)
        await self._started()
        if known_version is not None and tuple(known_version) == self.view_version():
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=timeout_s)
            except asyncio.TimeoutError:
                pass
        view = await self.snapshot(gateway_id)
        fleet = self._fleet()
        own = [(lease.replica.replica_id, lease.request) for lease in self._adopted.get(gateway_id, {}).values()
               if lease.replica is not None and lease.request is not None]
        actors = {}
        for replica_id, live in fleet.live.items():
            replica = fleet.model.replicas.get(replica_id)
            actor = getattr(live.engine, "actor", None)
            if replica is not None and replica.state is ReplicaState.WARM and actor is not None:
                actors[replica_id] = (actor, getattr(live.engine, "node_id", ""))
        view["routing"] = RoutingView(view["version"], without_requests(fleet.model, own), actors)
        return view

    async def snapshot(self, gateway_id: str = "") -> dict[str, Any]:
        """The fleet view, plus what gateways' metrics read from the model (unplaced requests, memory used).
        A gateway's periodic call is also how the actor knows it is alive."""
        self._heard_from(gateway_id)
        fleet = await self._started()
        view = fleet.snapshot()
        model = fleet.model
        for expert in view["experts"]:
            expert["num_unplaced"] = len(model.unplaced_of(ExpertId(expert["id"])))
        for worker in view["workers"]:
            worker["memory_used_gb"] = model.memory_used_gb(worker["worker_id"])
        view["decisions"] = list(fleet.decisions)
        view["counters"] = {**view["counters"], "leases_reclaimed_from_silent_gateways": self.num_leases_reclaimed}
        view["version"] = self.view_version()
        return view


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
            self._key_ledger = RayKeyLedger(lambda: self._actor, self.gateway_id, self.settings.control_actor)
        return self._key_ledger

    async def stop(self) -> None:
        """Leaves the shared fleet running (other gateways use it); stops this gateway's own upstream clients."""
        for task in (self._refresh_task, self._report_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._send_reports()
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
        if not choice.candidates:
            return choice.expert_id, {}
        routed = await self._control(choice.expert_id, lambda: self._actor.route.remote(choice.expert_id, tuple(choice.candidates), choice.cost_weight))
        return tuple(routed)  # type: ignore[return-value]

    def lease(self, expert_id: str, request_id: str, num_prompt_tokens: int, max_tokens: int, prefix_key: str = "") -> Lease:
        if expert_id in self.external:
            return Lease(self, expert_id, None)  # type: ignore[arg-type]
        expert = self._experts[expert_id]
        request = QueuedRequest(RequestId(request_id), ExpertId(expert_id), time.time(), num_prompt_tokens, max_tokens,
                                ttft_slo_s=expert.ttft_slo_s, prefix_key=prefix_key)
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
                                                                            make_actor=None, actor=local.actor)
            return LiveReplica(local.replica_id, self._experts[r.expert_id], local.hardware, engine), False
        pending: list[Any] = []

        def call() -> Any:
            pending.append(self._actor.acquire.remote(r.expert_id, r.request_id, r.num_prompt_tokens,
                                                      r.num_output_tokens_expected, r.prefix_key, self.gateway_id))
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
        engine = RayReplicaEngine(info["replica_id"], r.expert_id, info["node_id"], make_actor=None, actor=info["actor"])
        return LiveReplica(info["replica_id"], self._experts[r.expert_id], info["hardware"], engine), bool(info["was_cold"])

    def release(self, lease: Lease, *, ok: bool, exc: Any) -> None:
        count_outcome(lease, self.expert_circuits, ok=ok, exc=exc)
        if lease.request is None:
            return
        request_id = lease.request.request_id
        error = RemoteEngineError.of(exc) if isinstance(exc, EngineError) else None
        leased = self._tokens.pop(request_id, None)
        if leased is not None:
            token = leased[0]
            # Submitted now (Ray keeps one caller's calls in order), so a retry's acquire comes after it.
            self._actor.release.remote(token, error, self.gateway_id)
            return
        self.router.finish(request_id)
        self.reports.add(Ended(request_id, ok, error))
        if isinstance(exc, EngineUnavailable):
            # The replica's engine, actor or node is gone: never choose it again here, and tell the control
            # actor now (before a retry's acquire, submitted after this), which stops and replaces it.
            self.router.forget(lease.replica.replica_id)  # type: ignore[union-attr]
            self._send_reports()
        elif self.reports.is_due and self._report_due is not None:
            self._report_due.set()

    def _send_reports(self) -> None:
        """Sends the pending load events (fire and forget: Ray keeps one caller's calls in order)."""
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


def stop_control_actor(settings: RayClusterConfig) -> bool:
    """Stops the shared fleet (its replicas) and ends the control actor. False if none was running."""
    import ray

    connect(settings)
    try:
        actor = ray.get_actor(settings.control_actor, namespace=settings.namespace)
    except ValueError:
        return False
    ray.get(actor.shutdown.remote(), timeout=120)
    ray.kill(actor, no_restart=True)
    return True
