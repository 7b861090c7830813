"""The Ray cluster adapter: workers are Ray nodes, replicas are Ray actors pinned to the chosen node."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from typing import Any

from switchboard.cluster.base import SurvivingReplica
from switchboard.cluster.ray_inventory import RayWorker, workers_from_nodes
from switchboard.cluster.ray_replica import RayReplicaEngine, ReplicaActor
from switchboard.config.schema import ExpertConfig, RayClusterConfig
from switchboard.engines.base import Engine
from switchboard.fleet.state import Worker

log = logging.getLogger("switchboard.cluster")

REPLICA_ACTOR_PREFIX = "switchboard-replica:"


GCS_CONNECT_TIMEOUT_S = 5.0


def connect(settings: RayClusterConfig) -> None:
    """Joins the Ray cluster at `settings.address` as a driver, unless this process already is one.

    Raises ConnectionError at once when nothing listens at a host:port address (Ray itself would retry for
    minutes)."""
    import ray

    if not ray.is_initialized():
        address = settings.address
        if address != "auto" and "://" not in address and ":" in address:
            host, port = address.rsplit(":", 1)
            try:
                socket.create_connection((host, int(port)), timeout=GCS_CONNECT_TIMEOUT_S).close()
            except (OSError, ValueError) as exc:
                raise ConnectionError(f"no Ray cluster answers at {address}: {exc}") from None
        ray.init(address=address, namespace=settings.namespace, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)


class RayCluster:
    """`Cluster` on Ray. Placement (a pure policy) picks the worker; this only pins the actor to that node.

    Replica actors take no Ray CPUs (`num_cpus=0`): the control plane's placement already accounts for each
    worker's memory, and Ray's own scheduler must not refuse or move a replica the policy placed. On a node that
    declares GPUs (its Ray `GPU` resource, the worker's `num_devices`) a replica takes `num_gpus` = its
    tensor-parallel size, so Ray books the same devices placement counted and gives the actor their ids
    (`CUDA_VISIBLE_DEVICES`, `ray.get_gpu_ids()`), shown per replica in `/admin/fleet`. Actors are
    never restarted by Ray (`max_restarts=0`): a lost replica is replaced by the control plane, elsewhere if
    need be. `fleet_tag` makes replica actor names unique per fleet (several fleets may share a cluster); a
    restarted control actor finds its fleet's replicas by it (`surviving_replicas`).
    """

    def __init__(self, settings: RayClusterConfig, *, fleet_tag: str = "") -> None:
        connect(settings)
        self.settings = settings
        self.inventory_interval_s = settings.inventory_interval_s
        self.fleet_tag = fleet_tag
        self._lock = threading.Lock()  # workers() runs in a thread, engine_for() on the event loop
        self._by_worker: dict[str, RayWorker] = {}
        self._actor_class: Any = None

    def workers(self) -> list[Worker]:
        import ray

        found = workers_from_nodes(ray.nodes())
        with self._lock:
            self._by_worker.update({w.worker.worker_id: w for w in found})
        return [w.worker for w in found]

    def node_of(self, worker_id: str) -> str:
        with self._lock:
            return self._by_worker[worker_id].node_id

    def worker_of(self, node_id: str) -> str | None:
        """The worker id of Ray node `node_id` (as of the last `workers()`), None if it hosts no replicas."""
        with self._lock:
            return next((w for w, found in self._by_worker.items() if found.node_id == node_id), None)

    async def surviving_replicas(self, timeout_s: float = 10.0) -> list[SurvivingReplica]:
        """This fleet's replica actors that are alive and serving (found by name in the namespace), for a
        restarted control actor to take over. Ones whose engine never finished starting, or on a node that hosts
        no replicas now, are killed (the policies start what is needed afresh); unreachable ones are skipped."""
        import ray

        self.workers()
        prefix = self.actor_name("")
        names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                 if a["namespace"] == self.settings.namespace and a["name"].startswith(prefix)]
        found = []
        for name in names:
            try:
                actor = ray.get_actor(name, namespace=self.settings.namespace)
                info = await asyncio.wait_for(actor.describe.remote(), timeout=timeout_s)
            except Exception as exc:  # noqa: BLE001 — dead, or on a dead node: nothing to take over
                log.warning("replica actor %s did not answer: %s", name, exc)
                continue
            replica_id = name[len(prefix):]
            worker_id = self.worker_of(info["node_id"])
            if not info["is_started"] or worker_id is None:
                log.warning("replica actor %s was not serving (or its node hosts nothing now): stopped", name)
                ray.kill(actor, no_restart=True)
                continue
            engine = RayReplicaEngine(replica_id, info["expert_id"], info["node_id"], make_actor=None, actor=actor)
            engine.devices = tuple(info.get("gpu_ids", ()))
            found.append(SurvivingReplica(replica_id, info["expert_id"], worker_id, engine))
        return found

    def actor_name(self, replica_id: str) -> str:
        return f"{REPLICA_ACTOR_PREFIX}{self.fleet_tag}{replica_id}"

    def engine_for(self, replica_id: str, expert: ExpertConfig, worker_id: str, num_devices: int = 0) -> Engine:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if self._actor_class is None:
            self._actor_class = ray.remote(ReplicaActor)
        node_id = self.node_of(worker_id)
        options = dict(
            name=self.actor_name(replica_id), namespace=self.settings.namespace, num_cpus=0, num_gpus=num_devices,
            max_restarts=0,
            # Detached: an actor dies with its owner otherwise, and the replicas must outlive a control actor whose
            # node died (the restarted one takes them over). The fleet kills them when it stops them.
            lifetime="detached",
            max_concurrency=1000,  # an async actor: concurrent requests interleave on its event loop
            # No task events (the per-task state records behind `ray list tasks` and the dashboard) for its calls,
            # as Ray Serve does for its replicas: every call would otherwise record its transitions in the caller
            # and here and ship them to the GCS (issue 17; in a bare-call test the GCS spent 13 µs per call
            # without them, 17–43 µs with).
            enable_task_events=False,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        )
        payload = expert.model_dump(mode="json")
        return RayReplicaEngine(replica_id, expert.id, node_id, lambda: self._actor_class.options(**options).remote(payload))

    async def close(self) -> None:
        return None  # the driver connection is the process's; ray.shutdown() is its owner's to call
