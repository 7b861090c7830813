"""The live fleet's sleep tier: engines put to sleep instead of stopped, and woken instead of started.

When keep-alive unloads a replica with code `sleep` (or for a predicted gap) and its engine can sleep
(`can_sleep`: the llama.cpp worker, a `process` backend that declares its sleep and wake calls), the engine's
own sleep call runs and the engine is kept, outside the fleet model, for `asleep_keepalive_s`; a start of the
same expert on the same worker wakes it (no new process, no model load from storage). An expert whose engines
cannot sleep is not unloaded early: its `sleep` drains are skipped, and keep-alive's window ends as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from switchboard.fleet.sleep import Asleep, AsleepReplicas
from switchboard.policies.actions import DrainReplica
from switchboard.policies.keepalive import KeepAliveReasonCode
from switchboard.types import ExpertId

log = logging.getLogger("switchboard.fleet")


class LiveSleepTier:
    def __init__(self, asleep_keepalive_s: float) -> None:
        self.asleep = AsleepReplicas(asleep_keepalive_s)
        self._sleeping: dict[str, asyncio.Task] = {}  # replica id → its sleep call under way

    @staticmethod
    def can_sleep(engine: Any) -> bool:
        return bool(getattr(engine, "can_sleep", False))

    def skips(self, action: Any, engine: Any) -> bool:
        """True for a keep-alive `sleep` drain of a replica whose engine cannot sleep: it stays warm."""
        return (isinstance(action, DrainReplica) and action.reason.code is KeepAliveReasonCode.SLEEP
                and not self.can_sleep(engine))

    def note_drain(self, replica_id: str, reason_code: Any, engine: Any, *, frees_accelerator: bool = True) -> None:
        self.asleep.note_drain(replica_id, reason_code if self.can_sleep(engine) else None,
                               frees_accelerator=frees_accelerator)

    def note_reactivate(self, replica_id: str) -> None:
        self.asleep.note_reactivate(replica_id)

    def stop_or_sleep(self, replica_id: str, expert_id: str, worker_id: str, hardware: str, engine: Any,
                      wake_s: float, now_s: float, num_devices: int = 0, stop_code: Any = None) -> bool:
        """Puts a stopping replica's engine to sleep if it was marked to (and `stop_code` allows it,
        `AsleepReplicas.should_sleep`), keeping its `num_devices` devices; False if the caller must stop it."""
        if not self.asleep.should_sleep(replica_id, stop_code) or not self.can_sleep(engine):
            return False
        task = asyncio.ensure_future(self._sleep(engine))
        self.asleep.put(replica_id, ExpertId(expert_id), worker_id, hardware, wake_s, now_s, handle=(engine, task),
                        num_devices=num_devices)
        return True

    @staticmethod
    async def _sleep(engine: Any) -> bool:
        try:
            await engine.sleep()
            return True
        except Exception as exc:  # noqa: BLE001 — a failed sleep means a stop: the engine is not trusted asleep
            log.warning("%s could not sleep (%s); stopping it", getattr(engine, "expert_id", "?"), exc)
            await engine.stop()
            return False

    def take(self, expert_id: str, worker_id: str, now_s: float) -> Asleep | None:
        """A replica of `expert_id` asleep on `worker_id` (its `handle`: the engine and its sleep task), or None."""
        return self.asleep.take(ExpertId(expert_id), worker_id, now_s)

    @staticmethod
    async def wake(engine: Any, sleep_task: asyncio.Task, clock: Callable[[], float] = time.perf_counter) -> float:
        """Wakes a taken engine (after its sleep call has finished); returns the seconds the wake took on `clock`
        (the fleet's, so an injected clock measures its own time). Raises what the wake raises; an engine whose
        sleep failed was stopped, so it is started afresh."""
        t0 = clock()
        if await sleep_task:
            await engine.wake()
        else:
            await engine.start()
        return clock() - t0

    def expire(self, now_s: float) -> list[Asleep]:
        """Stops the engines asleep past their time (in the background); returns them."""
        expired = self.asleep.expired(now_s)
        for asleep in expired:
            asyncio.ensure_future(stop_after_sleep(*asleep.handle))
        return expired

    async def close(self) -> None:
        everything = self.asleep.expired(float("inf"))
        await asyncio.gather(*(stop_after_sleep(*a.handle) for a in everything), return_exceptions=True)

    def describe(self) -> list[dict[str, Any]]:
        return [{"replica": a.replica_id, "expert": a.expert_id, "worker": a.worker_id, "asleep_at": a.asleep_at_s,
                 "until": a.until_s, "devices": list(getattr(a.handle[0], "devices", ()))} for a in self.asleep.all()]


async def stop_after_sleep(engine: Any, sleep_task: asyncio.Task) -> None:
    """Stops an engine once its sleep call (successful or not) is over."""
    with contextlib.suppress(Exception):
        await sleep_task
    await engine.stop()


__all__ = ["LiveSleepTier", "stop_after_sleep"]
