"""The worker inventory of a Ray cluster: which Ray nodes host Switchboard replicas, of which hardware kind, at
what price. A pure function of `ray.nodes()`'s answer, so it is tested without Ray.

An operator declares a node's hardware when starting it (docs/ray.md):

    ray start --address HEAD:6379 --resources '{"switchboard/hw:l4": 1}'       # one L4
    ray start --address HEAD:6379 --labels switchboard/hw=cpu                   # same, as a label (1 device)

A node that also declares GPUs to Ray (`ray start --num-gpus 4`) is a worker with that many devices
(`Worker.num_devices`): placement books them whole per replica and Ray gives them to the replica's actor. A node
without Ray GPUs has none declared (memory only, as a CPU node).

Optional numeric resources override the hardware catalog's numbers for that node:
`switchboard/memory_gb` (memory replicas may use) and `switchboard/usd_per_hour` (the node's price); the label
`switchboard/worker-id` names the worker (default `ray-<first 12 hex digits of the node id>`). Nodes that
declare no hardware kind (e.g. a head node kept for the gateway) host no replicas.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from switchboard.fleet.state import Worker
from switchboard.perf.hardware import GB, get_hardware
from switchboard.types import HardwareKind, WorkerId

log = logging.getLogger("switchboard.cluster")

HW_RESOURCE_PREFIX = "switchboard/hw:"
HW_LABEL = "switchboard/hw"
WORKER_ID_LABEL = "switchboard/worker-id"
MEMORY_RESOURCE = "switchboard/memory_gb"
PRICE_RESOURCE = "switchboard/usd_per_hour"
GPU_RESOURCE = "GPU"


@dataclasses.dataclass(frozen=True, slots=True)
class RayWorker:
    """A Switchboard worker and the Ray node it is."""

    worker: Worker
    node_id: str


def hardware_declared(resources: Mapping[str, float], labels: Mapping[str, str]) -> tuple[str, float] | None:
    """(kind, number of devices) a node declares, or None. Raises ValueError if it declares several kinds."""
    kinds = {key[len(HW_RESOURCE_PREFIX):]: float(count) for key, count in resources.items() if key.startswith(HW_RESOURCE_PREFIX)}
    if HW_LABEL in labels:
        kinds.setdefault(labels[HW_LABEL], 1.0)
    if len(kinds) > 1:
        raise ValueError(f"the node declares several hardware kinds ({', '.join(sorted(kinds))}); one node is one worker of one kind")
    return next(iter(kinds.items()), None)


def workers_from_nodes(nodes: Iterable[Mapping[str, Any]]) -> list[RayWorker]:
    """The live nodes that declare a known hardware kind, as workers, in node-id order (stable placement ties).

    Memory and price are the catalog's per device times the number of devices, unless the node overrides them.
    Nodes with an unknown kind or several kinds are skipped with a warning (a typo must not host replicas).
    """
    found = []
    for node in nodes:
        if not node.get("Alive", False):
            continue
        node_id = str(node["NodeID"])
        resources = node.get("Resources") or {}
        labels = node.get("Labels") or {}
        try:
            declared = hardware_declared(resources, labels)
            if declared is None:
                continue
            kind, num_devices = declared
            hw = get_hardware(kind)
        except (KeyError, ValueError) as exc:
            log.warning("Ray node %s hosts no replicas: %s", node_id[:12], exc)
            continue
        worker = Worker(
            worker_id=WorkerId(labels.get(WORKER_ID_LABEL) or f"ray-{node_id[:12]}"),
            hardware=HardwareKind(hw.kind),
            memory_gb=float(resources.get(MEMORY_RESOURCE, num_devices * hw.memory_bytes / GB)),
            usd_per_hour=float(resources.get(PRICE_RESOURCE, num_devices * hw.usd_per_hour)),
            location=str(node.get("NodeManagerAddress") or "ray"),
            num_devices=int(resources.get(GPU_RESOURCE, 0)),
        )
        found.append(RayWorker(worker, node_id))
    return sorted(found, key=lambda w: w.node_id)
