"""Devices as a placement resource: whether a new replica's whole devices are free on a worker, and which asleep
replicas a start there must evict for them. Pure functions of the snapshot, shared by placement and by the wake
predictions of admission and routing (`predict.wake_option`), so they agree on where a replica can go.

A worker that declares devices (`Worker.num_devices` > 0) has them held by its live replicas (each its
estimate's `num_devices`, the tensor-parallel size) and by the replicas asleep on it (`Worker.asleep`). A start
of an expert with a replica asleep there wakes it on its own devices; any other start takes free devices and, if
too few are free, those of asleep replicas — the ones asleep longest first, the nearest to being stopped anyway —
which it must then evict (`EvictAsleep`) before it starts. A worker without declared devices is checked for
memory only.

*Soon free*: a replica draining with no work left (`soon_free`) is stopped at the end of this control step, or
put to sleep there (keep-alive's sleep codes), where its devices become evictable; its memory and devices are as
good as an asleep replica's now. A start of another expert may take them, after every asleep replica's (the one
that fell asleep last goes last), by stopping it at once (`StopReplica` with code `evicted-draining-for-devices`,
which never sleeps). Before, a scale-up decided in the step that put a replica to sleep found its devices taken
and went to a slower kind for good (docs/simulator.md, "The sleep tier").
"""

from __future__ import annotations

import dataclasses
import enum

from switchboard.fleet.state import FleetSnapshot, Replica, ServingEstimate, Worker
from switchboard.types import ExpertId, ReplicaId, ReplicaState, WorkerId


class DeviceReasonCode(str, enum.Enum):
    EVICTED_ASLEEP = "evicted-asleep-for-devices"
    EVICTED_DRAINING = "evicted-draining-for-devices"
    """A replica draining with no work left, stopped at once for another start (`soon_free`): never sleeps."""


@dataclasses.dataclass(frozen=True, slots=True)
class DeviceRoom:
    fits: bool
    evicts: tuple[ReplicaId, ...] = ()
    """Asleep replicas, then soon-free ones (`soon_free`), to stop first (only when `fits`)."""


ROOM = DeviceRoom(True)
NO_ROOM = DeviceRoom(False)


def device_room(snapshot: FleetSnapshot, worker: Worker, estimate: ServingEstimate, *,
                takes_soon_free: bool = True) -> DeviceRoom:
    """Whether a replica of `estimate`'s expert fits the memory and devices of `worker` now, and what it evicts
    for them: asleep replicas for devices (they hold no accelerator memory), then, with `takes_soon_free`,
    soon-free ones (`soon_free`) for memory and devices."""
    takes_devices = bool(worker.num_devices and estimate.num_devices)
    need = estimate.num_devices if takes_devices else 0
    free = snapshot.devices_free(worker.worker_id) if takes_devices else 0
    short_gb = estimate.memory_gb - snapshot.memory_free_gb(worker.worker_id)
    if free >= need and short_gb <= 1e-9:
        return ROOM
    evicts: list[ReplicaId] = []
    if free < need:
        waking = next((h for h in reversed(worker.asleep) if h.wakes_for(estimate.expert_id, snapshot.now_s)), None)
        if waking is not None:  # the start wakes it, on its own devices
            free += waking.num_devices
        for holder in worker.asleep:
            if free >= need:
                break
            if holder is waking or not holder.num_devices:
                continue
            evicts.append(holder.replica_id)
            free += holder.num_devices
        if free >= need and short_gb <= 1e-9:
            return DeviceRoom(True, tuple(evicts))
    for replica in soon_free(snapshot, worker.worker_id, estimate.expert_id) if takes_soon_free else ():
        evicts.append(replica.replica_id)
        free += replica.num_devices if takes_devices else 0
        short_gb -= replica.memory_gb
        if free >= need and short_gb <= 1e-9:
            return DeviceRoom(True, tuple(evicts))
    return NO_ROOM


def soon_free(snapshot: FleetSnapshot, worker_id: WorkerId, expert_id: ExpertId) -> tuple[Replica, ...]:
    """Replicas of experts other than `expert_id` on `worker_id` draining with no work left, in id order: the
    control step stops them (or puts them to sleep) at its end anyway. (Those of `expert_id` itself are
    reactivated rather than replaced, `ControlPlane._apply_scale`.)"""
    memo = snapshot.layout_memo()
    draining = memo.get(_DRAINING_KEY)
    if draining is None:
        found: dict[WorkerId, list[ReplicaId]] = {}
        for replica_id in sorted(snapshot.replicas):
            replica = snapshot.replicas[replica_id]
            if replica.state is ReplicaState.DRAINING:
                found.setdefault(replica.worker_id, []).append(replica_id)
        draining = memo[_DRAINING_KEY] = {w: tuple(ids) for w, ids in found.items()}
    replicas = snapshot.replicas
    return tuple(r for replica_id in draining.get(worker_id, ())
                 if (r := replicas[replica_id]).expert_id != expert_id and r.load.num_outstanding_requests == 0)


_DRAINING_KEY = "devices.draining"


def devices_reachable(snapshot: FleetSnapshot, worker: Worker, estimate: ServingEstimate, reclaimable: int = 0) -> bool:
    """Whether `device_room` fits, or would once `reclaimable` more devices were freed (idle replicas evicted)."""
    if not worker.num_devices or not estimate.num_devices:
        return True
    asleep = sum(h.num_devices for h in worker.asleep)
    return snapshot.devices_free(worker.worker_id) + asleep + reclaimable >= estimate.num_devices
