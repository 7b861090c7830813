"""Accelerators as placement resources: which device indices of a worker each replica holds.

A worker declares its devices (`workers: [{id: gpu-box, hardware: h100, devices: [0, 1, 2, 3]}]`). Placement
(a pure policy over memory) picks the worker; the live fleet then gives the replica `num_devices` of that
worker's free device indices — the tensor-parallel size the perf model gives the expert on that kind
(`perf.roofline.engine_profile(...).num_devices`) — and the engine passes them to its server as
`CUDA_VISIBLE_DEVICES` and `{devices}` / `{num_devices}` in its command. A device is never held by two
replicas: a start that finds too few free devices fails, naming who holds them. An asleep replica holds none
(the sleep tier releases them); it can wake only on the same devices, since its server's CUDA context lives
there. Ray mode does the same with Ray's own GPU resources instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence


class DevicesBusy(Exception):
    """Too few free devices on a worker for a replica; the message says who holds them."""


class DeviceBook:
    """Free and held device indices per worker. Plain bookkeeping, used from one event loop."""

    def __init__(self, devices_by_worker: Mapping[str, Sequence[int]]) -> None:
        self._devices = {w: tuple(d) for w, d in devices_by_worker.items() if d}
        self._held: dict[str, tuple[str, tuple[int, ...]]] = {}  # replica id → (worker, devices)

    def has_devices(self, worker_id: str) -> bool:
        return worker_id in self._devices

    def free(self, worker_id: str) -> tuple[int, ...]:
        taken = {d for w, ds in self._held.values() if w == worker_id for d in ds}
        return tuple(d for d in self._devices.get(worker_id, ()) if d not in taken)

    def assign(self, replica_id: str, worker_id: str, num_devices: int, exactly: Iterable[int] | None = None) -> tuple[int, ...]:
        """Gives `replica_id` `num_devices` free devices of `worker_id` (the lowest indices, or `exactly` these).
        Raises DevicesBusy if they are not free; a worker without declared devices gives ()."""
        if worker_id not in self._devices:
            return ()
        free = self.free(worker_id)
        wanted = tuple(exactly) if exactly is not None else free[:num_devices]
        if len(wanted) < num_devices or any(d not in free for d in wanted):
            holders = ", ".join(f"{r} holds {list(ds)}" for r, (w, ds) in sorted(self._held.items()) if w == worker_id)
            raise DevicesBusy(f"worker {worker_id} has {len(free)} free of devices {list(self._devices[worker_id])}, "
                              f"{replica_id} needs {list(wanted) if exactly is not None else num_devices}"
                              + (f" ({holders})" if holders else ""))
        self._held[replica_id] = (worker_id, wanted)
        return wanted

    def release(self, replica_id: str) -> None:
        self._held.pop(replica_id, None)

    def held(self, replica_id: str) -> tuple[int, ...]:
        return self._held.get(replica_id, ("", ()))[1]

    def declared(self, worker_id: str) -> tuple[int, ...]:
        """The device indices `worker_id` declares, in its config's order; () for a worker without any."""
        return self._devices.get(worker_id, ())

    def holders(self, worker_id: str) -> dict[int, str]:
        """Device index → the replica holding it, for the held devices of `worker_id` (free ones are absent)."""
        return {d: r for r, (w, ds) in self._held.items() if w == worker_id for d in ds}
