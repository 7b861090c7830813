"""Devices as a placement resource: whether a new replica's whole devices are free on a worker, and which asleep
replicas a start there must evict for them. Pure functions of the snapshot, shared by placement and by the wake
predictions of admission and routing (`predict.wake_option`), so they agree on where a replica can go.

A worker that declares devices (`Worker.num_devices` > 0) has them held by its live replicas (each its
estimate's `num_devices`, the tensor-parallel size) and by the replicas asleep on it (`Worker.asleep`). A start
of an expert with a replica asleep there wakes it on its own devices; any other start takes free devices and, if
too few are free, those of asleep replicas — the ones asleep longest first, the nearest to being stopped anyway —
which it must then evict (`EvictAsleep`) before it starts. A worker without declared devices is checked for
memory only.
"""

from __future__ import annotations

import dataclasses
import enum

from switchboard.fleet.state import FleetSnapshot, ServingEstimate, Worker
from switchboard.types import ReplicaId


class DeviceReasonCode(str, enum.Enum):
    EVICTED_ASLEEP = "evicted-asleep-for-devices"


@dataclasses.dataclass(frozen=True, slots=True)
class DeviceRoom:
    fits: bool
    evicts: tuple[ReplicaId, ...] = ()
    """Asleep replicas to stop first (only when `fits`)."""


ROOM = DeviceRoom(True)
NO_ROOM = DeviceRoom(False)


def device_room(snapshot: FleetSnapshot, worker: Worker, estimate: ServingEstimate) -> DeviceRoom:
    """Whether a replica of `estimate`'s expert fits the devices of `worker` now, and what it evicts for them."""
    if not worker.num_devices or not estimate.num_devices:
        return ROOM
    free = snapshot.devices_free(worker.worker_id)
    need = estimate.num_devices
    if free >= need:
        return ROOM
    waking = next((h for h in reversed(worker.asleep) if h.wakes_for(estimate.expert_id, snapshot.now_s)), None)
    if waking is not None:  # the start wakes it, on its own devices
        free += waking.num_devices
        if free >= need:
            return ROOM
    evicts = []
    for holder in worker.asleep:
        if holder is waking or not holder.num_devices:
            continue
        evicts.append(holder.replica_id)
        free += holder.num_devices
        if free >= need:
            return DeviceRoom(True, tuple(evicts))
    return NO_ROOM


def devices_reachable(snapshot: FleetSnapshot, worker: Worker, estimate: ServingEstimate, reclaimable: int = 0) -> bool:
    """Whether `device_room` fits, or would once `reclaimable` more devices were freed (idle replicas evicted)."""
    if not worker.num_devices or not estimate.num_devices:
        return True
    asleep = sum(h.num_devices for h in worker.asleep)
    return snapshot.devices_free(worker.worker_id) + asleep + reclaimable >= estimate.num_devices
