"""The Ray cluster adapter: workers are Ray nodes, replicas are Ray actors pinned to the chosen node."""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any

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
    worker's memory, and Ray's own scheduler must not refuse or move a replica the policy placed. Actors are
    never restarted by Ray (`max_restarts=0`): a lost replica is replaced by the control plane, elsewhere if
    need be. `fleet_tag` makes replica actor names unique per fleet (several fleets may share a cluster).
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

    def actor_name(self, replica_id: str) -> str:
        return f"{REPLICA_ACTOR_PREFIX}{self.fleet_tag}{replica_id}"

    def engine_for(self, replica_id: str, expert: ExpertConfig, worker_id: str) -> Engine:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if self._actor_class is None:
            self._actor_class = ray.remote(ReplicaActor)
        node_id = self.node_of(worker_id)
        options = dict(
            name=self.actor_name(replica_id), namespace=self.settings.namespace, num_cpus=0, max_restarts=0,
            max_concurrency=1000,  # an async actor: concurrent requests interleave on its event loop
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        )
        payload = expert.model_dump(mode="json")
        return RayReplicaEngine(replica_id, expert.id, node_id, lambda: self._actor_class.options(**options).remote(payload))

    async def close(self) -> None:
        return None  # the driver connection is the process's; ray.shutdown() is its owner's to call
