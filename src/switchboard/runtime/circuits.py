"""The live fleet's circuit breakers: the pure state machine of `switchboard.policies.circuit`, one breaker per
key (an expert id or a replica id), driven by the clock passed in."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from switchboard.engines.base import EngineError
from switchboard.policies import circuit
from switchboard.policies.circuit import Breaker, BreakerSettings, CircuitState


def counts_against_health(exc: BaseException | type[BaseException] | None) -> bool | None:
    """True for a failure that says the expert or replica is unhealthy (its 5xx, garbage, a stall, a stream that
    ended unfinished), False for success (no exception), None for outcomes that say nothing about its health
    (the client went away, the upstream rejected the request itself with a 4xx)."""
    if exc is None:
        return False
    if isinstance(exc, type):  # only the class is known (a context manager exited with the type alone)
        return True if issubclass(exc, (TimeoutError, StopAsyncIteration)) else None
    if isinstance(exc, EngineError):
        return exc.status >= 500 or None
    if isinstance(exc, (TimeoutError, StopAsyncIteration)):
        return True
    return None


class CircuitBoard:
    """Breakers by key. Used from one event loop; every call is O(1) apart from `describe`."""

    def __init__(self, settings: BreakerSettings, clock: Callable[[], float]) -> None:
        self.settings = settings
        self.clock = clock
        self._breakers: dict[str, Breaker] = {}
        self.num_opened = 0

    def get(self, key: str) -> Breaker:
        return self._breakers.get(key) or Breaker()

    def would_allow(self, key: str) -> bool:
        breaker = self._breakers.get(key)
        return breaker is None or circuit.would_allow(breaker, self.clock(), self.settings)

    def allow(self, key: str) -> circuit.Admission:
        breaker = self._breakers.get(key)
        if breaker is None:
            return circuit.Admission(True, Breaker())
        admission = circuit.allow(breaker, self.clock(), self.settings)
        self._breakers[key] = admission.breaker
        return admission

    def retry_after_s(self, key: str) -> float:
        return self.get(key).retry_after_s(self.clock(), self.settings)

    def record(self, key: str, exc: BaseException | type[BaseException] | None) -> CircuitState:
        """Records how a request that `allow` let through ended; returns the circuit's new state."""
        failed = counts_against_health(exc)
        breaker = self._breakers.get(key)
        if breaker is None:
            if not failed:
                return CircuitState.CLOSED  # the common case: a healthy key keeps no breaker at all
            breaker = Breaker()
        now = self.clock()
        if failed is None:
            new = circuit.record_neutral(breaker, now, self.settings)
        elif failed:
            new = circuit.record_failure(breaker, now, self.settings)
        else:
            new = circuit.record_success(breaker, now, self.settings)
        if new.state is CircuitState.OPEN and breaker.state is not CircuitState.OPEN:
            self.num_opened += 1
        if new.state is CircuitState.CLOSED and not new.failures_at and not new.num_opened:
            self._breakers.pop(key, None)
        else:
            self._breakers[key] = new
        return new.state

    def forget(self, key: str) -> None:
        """Drops a key that no longer exists (a stopped replica), so the board does not grow."""
        self._breakers.pop(key, None)

    def describe(self, key: str) -> dict[str, Any]:
        breaker = self.get(key)
        now = self.clock()
        return {"state": breaker.state.value, "recent_failures": sum(1 for t in breaker.failures_at if t > now - self.settings.window_s),
                "retry_after_s": round(breaker.retry_after_s(now, self.settings), 3), "times_opened": breaker.num_opened}
