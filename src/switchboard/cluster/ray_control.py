"""The control plane as one named, detached Ray actor, shared by every gateway on the cluster (docs/ray.md).

`ControlActor` runs the same `LiveFleet` as embedded mode (policies, admission, leases, reaping, node-loss
handling) over `RayCluster`, so all gateways see one fleet; each gateway holds a `ray_gateway.RemoteFleet`
instead of a `LiveFleet`. A request to a warm replica with room is assigned in the gateway itself
(`ray_routing.LocalRouter`, on the view this actor pushes by long poll) and reported to the actor in batches;
anything else takes a lease from the actor. Tokens stream straight from the replica actor to the gateway (the
control actor never carries answer traffic).

The first gateway creates the actor (`get_if_exists`); later ones join it and must bring the same config. The
actor outlives the gateways (it is detached): `stop_control_actor` (or `switchboard ray-stop`) ends it and its
replicas. Every gateway has an id; the leases it holds are released when it has not been heard from (it
long-polls its fleet view at least every `ray_routing.POLL_INTERVAL_S`) for `cluster.gateway_timeout_s`, so a gateway
process that dies mid-request does not leave its replicas looking busy.

Ray restarts the actor when its node dies (`max_restarts=-1`); the restarted one takes over the live replica
actors and counts again the requests the gateways report in flight (docs/ray.md, "When the control actor's
node dies"). What only it knew, the keep-alive histograms and the keys' counts, it reads back from its last
checkpoint in the GCS (`ray_checkpoint`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools
import json
import logging
import time
import uuid
from typing import Any

from switchboard.cluster.ray_checkpoint import (
    Checkpointer,
    CheckpointStore,
    ControlCheckpoint,
    GcsCheckpointStore,
    MemoryCheckpointStore,
    checkpoint_key,
    histograms_state,
    restored_histograms,
)
from switchboard.cluster.ray_cluster import connect
from switchboard.cluster.ray_limits import KeyCounts
from switchboard.cluster.ray_replica import RemoteEngineError
from switchboard.cluster.ray_routing import Ended, Routed, RoutingView, Served, Started, Timed, without_requests
from switchboard.config.schema import RayClusterConfig, SwitchboardConfig
from switchboard.engines.base import EngineError
from switchboard.policies.keepalive import KeepAliveState
from switchboard.runtime.fleet import LiveFleet, background_request
from switchboard.runtime.lease import AdmissionRejected, Lease
from switchboard.types import ExpertId, ReplicaState

log = logging.getLogger("switchboard.cluster")

VERSION_CHECK_INTERVAL_S = 0.02
"""How often the control actor looks for a new view version to answer the gateways' long polls with."""
EARLY_END_KEPT_S = 60.0
"""How long an end reported before its start (`ControlActor.report`) waits for that start: long enough for any
reordered call; its start may never come (it went to an earlier incarnation, or was not counted)."""
REJOIN_WAIT_S = 5.0
"""How long a restarted control actor lends no key quota while gateways that used keys have not told it their
recent grants (`ray_limits.Rejoined`): a gateway that died with the old actor is not waited for longer."""


def config_fingerprint(config: SwitchboardConfig) -> str:
    """Gateways sharing a control actor must serve the same config; this is what they compare. The cluster
    address is left out: gateways on different nodes may reach the same cluster by different addresses; so is
    `direct_requests`, each gateway's own way to its replicas."""
    settings = config.model_dump(mode="json")
    settings["cluster"].pop("address", None)
    settings["cluster"].pop("direct_requests", None)  # how a gateway reaches replicas: its own business
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
    monotonic seconds; `checkpoint_store` defaults to the GCS on Ray, a dict elsewhere (all passed in by tests)."""

    def __init__(self, config: dict[str, Any], gateway_timeout_s: float | None = None,
                 clock: Any = time.monotonic, fleet_tag: str = "", checkpoint_store: CheckpointStore | None = None) -> None:
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
        self._early_ends: dict[str, dict[str, tuple[float, Ended]]] = {}
        """Gateway id -> request id -> (when heard, the event): ends reported before their starts. Ray does not keep
        an async actor's calls in the order one caller made them, so a gateway's report with a request's end can
        run before the earlier one with its start; counted as it came, the start would never end (the replica
        busy for good: keep-alive would never stop it). Applied right after the start when it comes; dropped after
        `EARLY_END_KEPT_S`."""
        self._changed = asyncio.Event()
        """Set (and replaced) when the view version changes: what the gateways' long polls wait on."""
        self._watcher: asyncio.Task | None = None
        is_ray = isinstance(cluster, RayClusterConfig)
        if checkpoint_store is None:
            checkpoint_store = GcsCheckpointStore() if is_ray else MemoryCheckpointStore()
        self.checkpointer = Checkpointer(checkpoint_store, checkpoint_key(
            cluster.namespace if is_ray else "", cluster.control_actor if is_ray else "", fleet_tag), self._checkpoint)
        self._checkpoints: asyncio.Task | None = None
        self._loading = asyncio.Lock()
        self._histograms_seen: dict = {}
        self._restored_histograms: dict = {}
        self._all_rejoined = asyncio.Event()
        self._rejoin_deadline = 0.0
        self.is_restored = False
        """Whether this incarnation started from a predecessor's checkpoint."""

    def _checkpoint(self) -> ControlCheckpoint:
        histograms = self.fleet.loop.state.keepalive.histograms if self.fleet is not None else self._restored_histograms
        return ControlCheckpoint(histograms_state(histograms), self.keys.checkpoint())

    async def _load_checkpoint(self) -> None:
        """Once, before this incarnation counts anything (a key's call may come before the fleet starts): counts
        what the last checkpoint of this fleet holds (a predecessor's, if Ray restarted the actor), and keeps
        its keep-alive histograms for the fleet; then checkpoints from now on. The gateways in it count as heard
        from now (released if they stay silent)."""
        async with self._loading:
            if self._checkpoints is not None:
                return
            checkpoint = await self.checkpointer.load()
            if checkpoint is not None:
                self.keys.restore(checkpoint.keys)
                self._rejoin_deadline = self.clock() + REJOIN_WAIT_S
                self._restored_histograms = restored_histograms(checkpoint.histograms)
                for gateway_id in self.keys.gateway_ids():
                    self._heard_from(gateway_id)
                self.is_restored = True
                log.warning("control plane restarted: restored %d keep-alive histograms and the key counts of %d "
                            "gateways", len(checkpoint.histograms), len(self.keys.gateway_ids()))
            self._checkpoints = asyncio.create_task(self.checkpointer.run(), name="switchboard-checkpoints")

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
                await self._load_checkpoint()
                fleet.loop.state = dataclasses.replace(fleet.loop.state, keepalive=KeepAliveState(self._restored_histograms))
                await fleet.start(survivors)
                if survivors:
                    log.warning("control plane restarted: took over %d live replicas (%s)", len(survivors),
                                ", ".join(s.replica_id for s in survivors))
                self.fleet = fleet
                self._reaper = asyncio.create_task(self._reclaim_forever(), name="switchboard-gateway-leases")
                self._watcher = asyncio.create_task(self._watch_versions(), name="switchboard-view-versions")
                self.checkpointer.mark()
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
        for task in (self._reaper, self._watcher, self._checkpoints):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self.fleet is not None:
            await self.fleet.stop()
        await self.checkpointer.delete()  # the fleet ends: nothing is to be restored

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
            self._early_ends.pop(gateway_id, None)
            adopted = self._adopted.pop(gateway_id, {})
            for lease in adopted.values():
                await lease.__aexit__(asyncio.CancelledError, None, None)
            tokens += list(adopted)
            self.num_leases_reclaimed += len(tokens)
            if self.keys.release_gateway(gateway_id):
                self.checkpointer.mark()
            if tokens:
                log.warning("gateway %s silent for over %.0f s: released the %d leases it held (%s)", gateway_id,
                            self.gateway_timeout_s, len(tokens), ", ".join(tokens))
        self._forget_old_early_ends()
        return silent

    def _forget_old_early_ends(self) -> None:
        oldest_s = self.clock() - EARLY_END_KEPT_S
        for gateway_id, ends in list(self._early_ends.items()):
            for request_id in [r for r, (heard_at, _) in ends.items() if heard_at < oldest_s]:
                del ends[request_id]
            if not ends:
                del self._early_ends[gateway_id]

    async def _watch_versions(self) -> None:
        version = self.view_version()
        while True:
            await asyncio.sleep(VERSION_CHECK_INTERVAL_S)
            self._watch_histograms()
            if (now := self.view_version()) != version:
                version = now
                self._changed.set()
                self._changed = asyncio.Event()

    def _watch_histograms(self) -> None:
        """Marks the checkpoint dirty when a keep-alive histogram changed (an idle gap ended): the policy
        replaces a histogram only then, so identity tells."""
        histograms = self._fleet().loop.state.keepalive.histograms
        if len(histograms) != len(self._histograms_seen) or any(
                self._histograms_seen.get(e) is not h for e, h in histograms.items()):
            self._histograms_seen = dict(histograms)
            self.checkpointer.mark()

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

    async def acquire(self, expert_id: str, request_id: str, num_prompt_tokens: int, max_tokens: int, prefix_key: str,
                      gateway_id: str = "", is_background: bool = False) -> tuple:
        """("ok", replica info) once a replica may run the request; ("rejected", ...) or ("error", ...) if not.
        The lease belongs to `gateway_id` (released if that gateway falls silent). `is_background`: a batch's
        request, which queues behind live ones (`runtime.fleet.background_request`, set for this call only)."""
        self._heard_from(gateway_id)
        fleet = await self._started()
        marked = background_request.set(is_background)
        try:
            lease = fleet.lease(expert_id, request_id, num_prompt_tokens, max_tokens, prefix_key)
        finally:
            background_request.reset(marked)
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

    async def lease_key(self, gateway_id: str, key_id: str, limits: Any, num_tokens: int, usd_estimate: float,
                        admit_one: bool, updates: list[Any]) -> Any:
        """After `updates` (the gateway's settlements and returns, in order; its batches may come in any order:
        `KeyCounts.apply`): a quota lease of the key for the gateway, or (`admit_one`, the key near a limit) the
        request admitted exactly, or refused (`KeyCounts.lease`)."""
        self._heard_from(gateway_id)
        await self._load_checkpoint()
        self._apply_key_updates(gateway_id, updates)
        await self._until_gateways_rejoined()
        return self.keys.lease(key_id, limits, num_tokens, usd_estimate, gateway_id, admit_one)

    async def key_updates(self, gateway_id: str, updates: list[Any]) -> None:
        self._heard_from(gateway_id)
        await self._load_checkpoint()
        self._apply_key_updates(gateway_id, updates)

    def _apply_key_updates(self, gateway_id: str, updates: list[Any]) -> None:
        self.keys.apply(updates, gateway_id)
        self.checkpointer.mark()
        if not self.keys.rejoining:
            self._all_rejoined.set()

    async def _until_gateways_rejoined(self) -> None:
        """After a restart, until the gateways that used keys before it told their recent grants, or
        `REJOIN_WAIT_S` passed: quota lent before then could overshoot by what they hold unknown here."""
        if not self.keys.rejoining:
            return
        try:
            await asyncio.wait_for(self._all_rejoined.wait(), max(0.0, self._rejoin_deadline - self.clock()))
        except asyncio.TimeoutError:
            if self.keys.rejoining:
                log.warning("gateways %s did not rejoin the restarted control actor within %.0f s: lending key quota "
                            "without their recent grants", ", ".join(sorted(self.keys.rejoining)), REJOIN_WAIT_S)
                self.keys.rejoining.clear()

    async def seed_keys(self, seeds: list[tuple[str, float, float]]) -> None:
        await self._load_checkpoint()
        for key_id, usd_today, usd_this_month in seeds:
            self.keys.seed(key_id, usd_today, usd_this_month)
        self.checkpointer.mark()

    async def checkpoint_status(self) -> tuple[bool, bool]:
        """(whether this incarnation started from a predecessor's checkpoint, whether its own last checkpoint is
        current), for operators and tests."""
        await self._started()
        return self.is_restored, self.checkpointer.is_current

    async def keepalive_histograms(self) -> dict[str, tuple[float, tuple[int, ...], int]]:
        """Each expert's keep-alive idle-time histogram: (bin width, counts, idle times beyond its range)."""
        return histograms_state((await self._started()).loop.state.keepalive.histograms)

    async def key_usage(self, key_id: str) -> tuple[int, float, float]:
        """(requests in the key's window, USD spent today, USD held): what the fleet counts of a key now."""
        await self._load_checkpoint()
        usage = self.keys.meter.snapshot(key_id, self.keys.clock())
        return usage.num_requests, usage.usd_today, usage.usd_held

    async def wake(self, expert_id: str, detail: str) -> None:
        (await self._started()).wake(expert_id, detail)

    # ---- gateways' own decisions (`switchboard.cluster.ray_routing`)

    async def report(self, gateway_id: str, events: list[Served | Started | Ended | Routed | Timed]) -> None:
        """What `gateway_id` started on warm replicas it chose itself, and what of it ended, in order: counted in
        the fleet model as if admitted here (an end also feeds the replica's circuit and, for a lost engine, stops
        and replaces the replica). A start on a replica no longer warm here is not counted, nor its end; nor are
        requests reported `Served` (started and served) on one. Those arrive before the other events and end
        after them (`LiveFleet.arrive_served`), so the requests they report running overlap them. Its routing
        decisions (`Routed`) are recorded as this fleet's own, its answers' timings (`Timed`) measure the
        experts' speeds.

        Ray may run two reports of one gateway out of the order it made them (an async actor's calls are not kept
        in order): an end whose start this actor has not counted waits for that start (`_early_ends`) and is
        applied right after it, so a reordered pair still counts the request once and ends it."""
        self._heard_from(gateway_id)
        fleet = await self._started()
        adopted = self._adopted.setdefault(gateway_id, {})
        early_ends = self._early_ends.setdefault(gateway_id, {})
        served = [e for e in events if isinstance(e, Served) and fleet.arrive_served(e.replica_id, e.requests)]
        for event in events:
            if isinstance(event, Served):
                continue
            if isinstance(event, Routed):
                fleet.record_route(event.at_s, event.preferred, event.decision)
            elif isinstance(event, Timed):
                fleet.observe_timing(event.replica_id, event.timing)
            elif isinstance(event, Started):
                request = event.request
                if request.request_id not in adopted:
                    lease = Lease(fleet, request.expert_id, request)
                    if fleet.adopt(lease, event.replica_id):
                        adopted[request.request_id] = lease
                early = early_ends.get(request.request_id)
                if early is not None and early[1].replica_id in ("", event.replica_id):
                    del early_ends[request.request_id]
                    await _end(adopted.pop(request.request_id, None), early[1])
            elif event.request_id in adopted:
                await _end(adopted.pop(event.request_id), event)
            else:
                early_ends[event.request_id] = (self.clock(), event)
        for event in served:
            fleet.end_served(event.replica_id, event.requests)

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


async def _end(lease: Lease | None, event: Ended) -> None:
    """Ends an adopted request's lease as its gateway reported (served, failed with an engine error, or not
    served); nothing when it was not counted."""
    if lease is not None:
        exc = event.error.to_exception() if event.error is not None else None
        exc_type = type(exc) if exc is not None else (None if event.ok else asyncio.CancelledError)
        await lease.__aexit__(exc_type, exc, None)


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
