"""A streamed answer's deadline: one timer for the whole stream, bounding only its waits for the engine.

Why not `asyncio.timeout_at` around each wait: a stream waits a few times (its first event, then each read),
and under uvloop each scope's timer costs more than the wait it guards (benchmarks/gateway_overhead.py
`--relay-cell`). A scope cannot span the stream either, since the stream's generator yields to the sender in
between, and a deadline firing while the sender writes must not cancel the write.

Contract: `wait(awaitable)` returns the awaitable's result, or raises TimeoutError if the deadline passes while
it waits (the awaitable is cancelled) or had passed before it began. A deadline that passes between waits
cancels nothing; the next wait raises. Cancellation from elsewhere (the client went away) propagates as
CancelledError. `when()`/`reschedule()` match asyncio.Timeout's, so a drain can pull every deadline in.
`close()` releases the timer; call it when the stream ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


class StreamDeadline:
    __slots__ = ("_loop", "_when", "_task", "_handle", "_is_waiting", "_has_fired", "_has_cancelled")

    def __init__(self, when: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._when = when
        self._task = asyncio.current_task()
        self._handle: asyncio.TimerHandle | None = None
        self._is_waiting = False
        self._has_fired = False
        self._has_cancelled = False  # the deadline cancelled the task while it waited

    def when(self) -> float:
        return self._when

    def reschedule(self, when: float) -> None:
        self._when = when
        if self._handle is not None:
            self._handle.cancel()
            self._handle = self._loop.call_at(when, self._fire)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        if self._loop.time() < self._when:  # rescheduled later in the meantime
            self._handle = self._loop.call_at(self._when, self._fire)
            return
        self._has_fired = True
        if self._is_waiting and self._task is not None:
            self._has_cancelled = True
            self._task.cancel()

    async def wait(self, awaitable: Awaitable[T]) -> T:
        if self._has_fired or self._loop.time() >= self._when:
            self._has_fired = True
            if asyncio.iscoroutine(awaitable):
                awaitable.close()
            raise TimeoutError
        if self._handle is None:
            self._handle = self._loop.call_at(self._when, self._fire)
        self._is_waiting = True
        try:
            return await awaitable
        except asyncio.CancelledError:
            if self._has_cancelled:
                self._has_cancelled = False
                if self._task is not None and self._task.uncancel() == 0:
                    raise TimeoutError from None
            raise
        finally:
            self._is_waiting = False
