"""The executor's side of the sleep tier (warm → asleep → cold; policies/keepalive.py decides).

An asleep replica is outside the fleet model's replicas: it holds host RAM on its worker, no accelerator memory,
and keeps its devices (its engine's process and accelerator context stay there). The snapshot lists it on its
worker (`Worker.asleep`), so placement counts its devices as taken: a start of its expert there wakes it on
them, and any other start may take them only by evicting it first (`EvictAsleep`, which the executor carries out
by stopping it). `AsleepReplicas` keeps track of them for an executor (the live fleet and the simulator alike):

- a replica that keep-alive drains with code `sleep` or `unloaded-until-prewarm` is marked (`note_drain`); when
  it stops, the executor puts it to sleep instead (`put`), until `asleep_keepalive_s` later;
- a start of the same expert on the same worker while one sleeps there wakes it (`take`) instead of a cold
  start, and the executor tells the policies so by pricing that expert's start at the wake time
  (`cold_start_overrides`);
- an asleep replica past its time is stopped (`expired`), or sooner if placement evicts it (`evict`).

`reflect_asleep` puts them in a snapshot: that pricing (`price_wakes`) and each worker's `asleep` list, one
function for both executors: the simulator and the live fleet call it whenever the set of asleep replicas
changes, so their policies see the same estimates and the same devices.

Pure bookkeeping with the time passed in; the executor does the sleeping, waking and stopping.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from switchboard.fleet.state import AsleepHolder, FleetSnapshot, ServingEstimate
from switchboard.policies.devices import DeviceReasonCode
from switchboard.policies.keepalive import SLEEP_CODES
from switchboard.types import ExpertId, HardwareKind, ReplicaId, Seconds, WorkerId


@dataclasses.dataclass(frozen=True, slots=True)
class Asleep:
    replica_id: str
    expert_id: ExpertId
    worker_id: str
    hardware: str
    asleep_at_s: Seconds
    until_s: Seconds
    wake_s: Seconds
    """Expected time to wake (the policies' price of starting this expert here while it sleeps)."""
    handle: Any = None
    """The executor's own object (the live fleet: the sleeping engine)."""
    num_devices: int = 0
    """Devices it keeps on its worker (those it held awake; 0 on a worker that declares none)."""


class AsleepReplicas:
    """The replicas asleep now, and those marked to sleep when they stop."""

    def __init__(self, asleep_keepalive_s: Seconds) -> None:
        self.asleep_keepalive_s = asleep_keepalive_s
        self._asleep: list[Asleep] = []
        self._to_sleep: set[str] = set()
        self.num_slept = 0
        self.num_woken = 0
        self.num_expired = 0
        self.num_evicted = 0

    def note_drain(self, replica_id: str, reason_code: Any, *, frees_accelerator: bool = True) -> None:
        """Marks a replica drained with one of keep-alive's sleep codes to sleep when it stops — only where that
        frees an accelerator (`frees_accelerator`: `placement.sleep_frees_accelerator` of its worker). Keep-alive
        gives code `sleep` only there, but `unloaded-until-prewarm` anywhere: on a worker without declared
        devices (the embedded CPU worker) that unload stops the replica, as without the tier."""
        if reason_code in SLEEP_CODES and frees_accelerator:
            self._to_sleep.add(replica_id)
        else:
            self._to_sleep.discard(replica_id)

    def note_reactivate(self, replica_id: str) -> None:
        self._to_sleep.discard(replica_id)

    def should_sleep(self, replica_id: str, stop_code: Any = None) -> bool:
        """Whether this stopping replica goes to sleep (forgets the mark either way): marked, and not stopped for
        another start's room (`stop_code` `evicted-draining-for-devices`, `policies/devices.py`)."""
        if stop_code is DeviceReasonCode.EVICTED_DRAINING:
            self._to_sleep.discard(replica_id)
            return False
        if replica_id in self._to_sleep:
            self._to_sleep.discard(replica_id)
            return True
        return False

    def put(self, replica_id: str, expert_id: ExpertId, worker_id: str, hardware: str, wake_s: Seconds, now_s: Seconds,
            handle: Any = None, num_devices: int = 0) -> Asleep:
        asleep = Asleep(replica_id, expert_id, worker_id, hardware, now_s, now_s + self.asleep_keepalive_s, wake_s, handle,
                        num_devices)
        self._asleep.append(asleep)
        self.num_slept += 1
        return asleep

    def take(self, expert_id: ExpertId, worker_id: str, now_s: Seconds) -> Asleep | None:
        """The replica of `expert_id` asleep on `worker_id` that slept last (taken out), or None (the one a
        `StartReplica` there consumes in the fleet model, `ops.wake_asleep`)."""
        for i in range(len(self._asleep) - 1, -1, -1):
            a = self._asleep[i]
            if a.expert_id == expert_id and a.worker_id == worker_id and now_s < a.until_s:
                del self._asleep[i]
                self.num_woken += 1
                return a
        return None

    def evict(self, replica_id: str) -> Asleep:
        """Takes out the asleep replica `replica_id` (placement evicts it for its devices): the executor stops it.
        Raises KeyError if it is not asleep."""
        for i, a in enumerate(self._asleep):
            if a.replica_id == replica_id:
                del self._asleep[i]
                self.num_evicted += 1
                return a
        raise KeyError(f"{replica_id} is not asleep")

    def expired(self, now_s: Seconds) -> list[Asleep]:
        """The asleep replicas whose time is up (taken out): the executor stops them."""
        done = [a for a in self._asleep if now_s >= a.until_s]
        if done:
            self._asleep = [a for a in self._asleep if now_s < a.until_s]
            self.num_expired += len(done)
        return done

    def cold_start_overrides(self) -> dict[tuple[ExpertId, str], Seconds]:
        """(expert, hardware kind) → wake time, for every expert with a replica asleep on that kind."""
        out: dict[tuple[ExpertId, str], Seconds] = {}
        for a in self._asleep:
            key = (a.expert_id, a.hardware)
            out[key] = min(out.get(key, a.wake_s), a.wake_s)
        return out

    def workers(self) -> dict[tuple[ExpertId, str], tuple[str, ...]]:
        """(expert, hardware kind) → the workers where a replica of it sleeps, sorted (one per replica)."""
        out: dict[tuple[ExpertId, str], list[str]] = {}
        for a in self._asleep:
            out.setdefault((a.expert_id, a.hardware), []).append(a.worker_id)
        return {key: tuple(sorted(ids)) for key, ids in out.items()}

    def all(self) -> list[Asleep]:
        return list(self._asleep)


def reflect_asleep(snapshot: FleetSnapshot, asleep: AsleepReplicas | None) -> FleetSnapshot:
    """`snapshot` with the asleep replicas in it: starts priced at their wakes (`price_wakes`) and each worker's
    `asleep` list (in the order they fell asleep). Idempotent."""
    holders: dict[WorkerId, list[AsleepHolder]] = {}
    for a in asleep.all() if asleep is not None else ():
        holder = AsleepHolder(ReplicaId(a.replica_id), a.expert_id, a.num_devices, a.until_s)
        holders.setdefault(WorkerId(a.worker_id), []).append(holder)
    workers = {w: dataclasses.replace(worker, asleep=tuple(holders.get(w, ())))
               if worker.asleep or w in holders else worker for w, worker in snapshot.workers.items()}
    changes: dict = {"estimates": price_wakes(snapshot.estimates, asleep)}
    if any(workers[w] is not worker for w, worker in snapshot.workers.items()):
        changes["workers"] = workers
    return snapshot.evolve(**changes)


def price_wakes(estimates: Mapping[tuple[ExpertId, HardwareKind], ServingEstimate],
                asleep: AsleepReplicas | None) -> dict[tuple[ExpertId, HardwareKind], ServingEstimate]:
    """`estimates` with each start priced at the wake where a replica of the expert sleeps on that hardware kind
    (`cold_start_s` the shortest wake there, `asleep_worker_ids` where, `cold_start_elsewhere_s` the cold start on
    the kind's other workers), and at the cold start where none does. Idempotent: it starts from each estimate's
    `unpriced()` form, so the caller need not keep the estimates as they were before."""
    overrides = asleep.cold_start_overrides() if asleep is not None else {}
    workers = asleep.workers() if asleep is not None else {}
    out = {}
    for key, estimate in estimates.items():
        base = estimate.unpriced()
        wake_s = overrides.get(key)
        if wake_s is not None:
            base = dataclasses.replace(base, cold_start_s=wake_s, cold_start_elsewhere_s=base.cold_start_s,
                                       asleep_worker_ids=tuple(WorkerId(w) for w in workers[key]))
        out[key] = base
    return out
