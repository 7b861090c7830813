"""What a restarted control actor must not forget, checkpointed outside it (docs/ray.md, "What survives a restart";
issue 17).

The fleet itself is rebuilt from the live replica actors and the gateways' reports; two things are not held
anywhere else: the keep-alive policy's idle-time histograms (what it learned of each expert's traffic) and the
cluster-wide key counts (`ray_limits.KeyCounts`: rpm/tpm windows, USD spend and holds, quota leases lent). The
actor writes them, a few kilobytes, to Ray's GCS key-value store, the store Ray Serve's controller checkpoints
to; a restarted actor reads them back before it serves. The GCS outlives any worker node, and with GCS fault
tolerance (an external Redis) the head too.

Off the request path: a change only marks the state dirty; `Checkpointer` writes from a background task, at
most every `CHECKPOINT_INTERVAL_S`. On the actor's event loop it only takes the state as plain data (lists of
numbers: `UsageMeter.dump`, ~0.1 µs per rpm-window entry); the pickling and the blocking GCS call run in a
thread (`benchmarks/ray_checkpoint_cost.py`: pickling the live objects had held the loop ~2.7 µs per entry,
~150 ms of CPU for 20 keys' full windows at rpm 3000). What the actor counted after its last
write and before it died is made up by the gateways: they tell the restarted actor their recent grants with what
they settled and gave back, and it counts what its checkpoint lacks (`ray_limits_rejoin`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import pickle
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from switchboard.policies.keepalive import IdleHistogram
from switchboard.types import ExpertId

log = logging.getLogger("switchboard.cluster")

CHECKPOINT_INTERVAL_S = 0.05
"""The least time between two writes: a burst of changes costs one write per interval."""
KV_NAMESPACE = "switchboard"
"""The GCS key-value namespace of the checkpoints (apart from Ray's and Serve's own)."""
MAX_CHECKPOINT_BYTES = 16 * 1024 * 1024
"""A checkpoint larger than this is not written (logged): it would slow every write and the GCS."""


class CheckpointStore(Protocol):
    """Where checkpoints live: bytes under a string key. Calls may block (run them off the event loop)."""

    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, value: bytes) -> None: ...

    def delete(self, key: str) -> None: ...


class GcsCheckpointStore:
    """Ray's GCS key-value store. `ray.experimental.internal_kv` is not public API (Ray Serve, Tune and Train
    use it for the same purpose): this class is the one place that calls it."""

    def get(self, key: str) -> bytes | None:
        from ray.experimental import internal_kv

        return internal_kv._internal_kv_get(key, namespace=KV_NAMESPACE)

    def put(self, key: str, value: bytes) -> None:
        from ray.experimental import internal_kv

        internal_kv._internal_kv_put(key, value, overwrite=True, namespace=KV_NAMESPACE)

    def delete(self, key: str) -> None:
        from ray.experimental import internal_kv

        internal_kv._internal_kv_del(key, namespace=KV_NAMESPACE)


class MemoryCheckpointStore:
    """A store in a dict, for tests (and for a control actor body run without Ray)."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}
        self.num_puts = 0

    def get(self, key: str) -> bytes | None:
        return self.values.get(key)

    def put(self, key: str, value: bytes) -> None:
        self.num_puts += 1
        self.values[key] = value

    def delete(self, key: str) -> None:
        self.values.pop(key, None)


def checkpoint_key(namespace: str, control_actor: str, fleet_tag: str) -> str:
    """One fleet's checkpoint: `fleet_tag` is new for every fleet, so a new fleet never reads an old one's."""
    return f"control/{namespace}/{control_actor}/{fleet_tag}"


@dataclasses.dataclass(frozen=True, slots=True)
class ControlCheckpoint:
    """The control actor's state that nothing else holds. `histograms`: expert -> (bin width, counts, idle times
    beyond the range); `keys`: `KeyCounts.checkpoint()`. Plain data shared with nothing live, so `encode` may run
    in another thread."""

    histograms: Mapping[str, tuple[float, tuple[int, ...], int]]
    keys: Any

    def encode(self) -> bytes:
        # pickle: read back only by the same code (a restart of the same job), never across versions.
        return pickle.dumps((self.histograms, self.keys), protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def decode(cls, data: bytes) -> ControlCheckpoint:
        histograms, keys = pickle.loads(data)
        return cls(histograms, keys)


def histograms_state(histograms: Mapping[ExpertId, IdleHistogram]) -> dict[str, tuple[float, tuple[int, ...], int]]:
    return {str(e): (h.bin_width_s, h.counts, h.num_out_of_bounds) for e, h in histograms.items()}


def restored_histograms(state: Mapping[str, tuple[float, tuple[int, ...], int]]) -> dict[ExpertId, IdleHistogram]:
    """The histograms of a checkpoint, for a fleet whose activity starts afresh: none of its idle gaps is
    consumed yet (`IdleHistogram.num_consumed` 0)."""
    return {ExpertId(e): IdleHistogram(width_s, tuple(counts), num_oob) for e, (width_s, counts, num_oob) in state.items()}


class Checkpointer:
    """Writes `take()`'s checkpoint to `store` under `key` whenever `mark()` was called since the last write, at
    most every `interval_s`, from `run()` (a background task). A failed write (the GCS away) is logged and
    retried at the next interval."""

    def __init__(self, store: CheckpointStore, key: str, take: Callable[[], ControlCheckpoint],
                 interval_s: float = CHECKPOINT_INTERVAL_S) -> None:
        self.store = store
        self.key = key
        self.take = take
        self.interval_s = interval_s
        self._dirty = asyncio.Event()
        self._is_writing = False
        self._put_in_thread: asyncio.Future | None = None
        """The last write's thread (it runs on when `run` is cancelled: `delete` waits for it)."""
        self.num_written = 0

    def mark(self) -> None:
        """Something to checkpoint changed (cheap: called on the request path)."""
        self._dirty.set()

    @property
    def is_current(self) -> bool:
        """Whether the last checkpoint written holds every change marked."""
        return not self._dirty.is_set() and not self._is_writing

    async def load(self) -> ControlCheckpoint | None:
        """The last checkpoint written under `key`, None if none (or unreadable: logged)."""
        try:
            data = await asyncio.to_thread(self.store.get, self.key)
            return None if data is None else ControlCheckpoint.decode(data)
        except Exception:  # noqa: BLE001 — a checkpoint that cannot be read costs what it held, not the actor
            log.exception("could not read the control actor's checkpoint %s; starting from empty state", self.key)
            return None

    async def write(self) -> None:
        self._dirty.clear()
        checkpoint = self.take()  # on the loop, between two changes: consistent
        self._is_writing = True
        try:
            self._put_in_thread = asyncio.ensure_future(asyncio.to_thread(self._put, checkpoint))
            is_written = await asyncio.shield(self._put_in_thread)
        except Exception:  # noqa: BLE001 — retried: the state is dirty again
            log.warning("could not write the control actor's checkpoint; retrying", exc_info=True)
            self._dirty.set()
            return
        finally:
            self._is_writing = False
        self.num_written += is_written

    def _put(self, checkpoint: ControlCheckpoint) -> bool:
        """Encodes and writes `checkpoint` (in a thread: pickling a large one would hold the actor's loop);
        False if it was too large to write."""
        data = checkpoint.encode()
        if len(data) > MAX_CHECKPOINT_BYTES:
            log.error("control actor checkpoint of %d bytes not written (over %d)", len(data), MAX_CHECKPOINT_BYTES)
            return False
        self.store.put(self.key, data)
        return True

    async def run(self) -> None:
        while True:
            await self._dirty.wait()
            await self.write()
            await asyncio.sleep(self.interval_s)

    async def delete(self) -> None:
        """Deletes the checkpoint, after any write still running (else that write would bring it back). Stop
        `run` first."""
        if self._put_in_thread is not None:
            await asyncio.gather(self._put_in_thread, return_exceptions=True)
        await asyncio.to_thread(self.store.delete, self.key)
