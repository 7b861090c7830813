"""The event queue: a heap ordered by the explicit key (time_s, priority, seq).

Ties at equal time are broken first by `Priority` (lower first), then by insertion order (`seq`), so a run is
deterministic and independent of how payloads compare (they are never compared). The priorities encode what must
happen first when things coincide: a replica becoming warm and a batch step finishing free capacity before the
arrivals at that instant are placed; the control step sees the state after all of them.
"""

from __future__ import annotations

import dataclasses
import enum
import heapq
from collections.abc import Callable, Iterable
from typing import Any

from switchboard.frozen import fast_init


class Priority(enum.IntEnum):
    """Same-time ordering: lower values are processed first."""

    REPLICA_READY = 0
    ENGINE_STEP = 1
    ARRIVAL = 2
    CONTROL = 3
    END = 9


@fast_init
@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """Something that happens at `time_s`. `kind` is the handler's name; `payload` its argument."""

    time_s: float
    priority: Priority
    kind: str
    payload: Any = None


class EventQueue:
    """A min-heap of events keyed by (time_s, priority, seq). `seq` is the push counter (FIFO among equals)."""

    __slots__ = ("_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, int, Event]] = []
        self._seq = 0

    def push(self, event: Event) -> None:
        heapq.heappush(self._heap, (event.time_s, int(event.priority), self._seq, event))
        self._seq += 1

    def extend(self, events) -> None:
        # `push` written out: the simulator extends the queue once per event it handles.
        heap, seq = self._heap, self._seq
        for event in events:
            heapq.heappush(heap, (event.time_s, int(event.priority), seq, event))
            seq += 1
        self._seq = seq

    def drain(self, handle: Callable[[Event], Iterable[Event]]) -> None:
        """Pop every event in order, pushing the events `handle(event)` returns, until none are left (`pop` and
        `extend` in one loop: the simulator's main loop, once per event)."""
        heap, heappop = self._heap, heapq.heappop
        while heap:
            caused = handle(heappop(heap)[3])
            if caused:
                self.extend(caused)

    def pop(self) -> Event:
        """The event with the smallest key; raises IndexError when empty."""
        return heapq.heappop(self._heap)[3]

    def peek_time_s(self) -> float:
        return self._heap[0][0] if self._heap else float("inf")

    def __len__(self) -> int:
        return len(self._heap)

    def __bool__(self) -> bool:
        return bool(self._heap)
