"""Circuit breakers: a pure, clocked state machine (one per replica and one per expert).

    closed ──(≥ failure_threshold failures within window_s)──▶ open
    open ──(cooldown_s after opening, on the next request)──▶ half-open: that one request is the probe
    half-open ──(probe succeeds)──▶ closed        half-open ──(probe fails)──▶ open again (cool-down restarts)

While the probe is out, other requests are refused as if open. A probe that ends neither in success nor in a
counted failure (the client went away, the request was invalid) frees the probe slot without deciding.

Every function takes the breaker and the current time and returns the new breaker; nothing here reads a clock.
"""

from __future__ import annotations

import dataclasses
import enum

from pydantic import BaseModel, ConfigDict, Field

from switchboard.types import Seconds


class CircuitState(str, enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class BreakerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    failure_threshold: int = Field(5, ge=1, description="Failures within window_s that open the circuit.")
    window_s: float = Field(30.0, gt=0, description="How far back failures count.")
    cooldown_s: float = Field(10.0, gt=0, description="How long an open circuit refuses before letting one probe through.")


@dataclasses.dataclass(frozen=True, slots=True)
class Breaker:
    state: CircuitState = CircuitState.CLOSED
    failures_at: tuple[Seconds, ...] = ()
    """Times of the failures still inside the window (closed state only)."""
    opened_at: Seconds | None = None
    is_probing: bool = False
    num_opened: int = 0

    def retry_after_s(self, now_s: Seconds, settings: BreakerSettings) -> Seconds:
        """Until an open circuit lets a probe through (0 when it would now)."""
        if self.state is CircuitState.CLOSED or self.opened_at is None:
            return 0.0
        return max(0.0, self.opened_at + settings.cooldown_s - now_s)


@dataclasses.dataclass(frozen=True, slots=True)
class Admission:
    """Whether a request may go through, the breaker after deciding, and whether the request is the probe."""

    is_allowed: bool
    breaker: Breaker
    is_probe: bool = False


def would_allow(breaker: Breaker, now_s: Seconds, settings: BreakerSettings) -> bool:
    """`allow(...).is_allowed` without taking the probe slot (for routing, which only looks)."""
    if breaker.state is CircuitState.CLOSED:
        return True
    if breaker.state is CircuitState.OPEN:
        return breaker.retry_after_s(now_s, settings) <= 0
    return not breaker.is_probing


def allow(breaker: Breaker, now_s: Seconds, settings: BreakerSettings) -> Admission:
    """Lets a request through a closed circuit, or through an open one whose cool-down is over as the probe."""
    if breaker.state is CircuitState.CLOSED:
        return Admission(True, breaker)
    if would_allow(breaker, now_s, settings):
        return Admission(True, dataclasses.replace(breaker, state=CircuitState.HALF_OPEN, is_probing=True), is_probe=True)
    return Admission(False, breaker)


def record_success(breaker: Breaker, now_s: Seconds, settings: BreakerSettings) -> Breaker:
    if breaker.state is CircuitState.CLOSED:
        return breaker
    return Breaker(num_opened=breaker.num_opened)


def record_failure(breaker: Breaker, now_s: Seconds, settings: BreakerSettings) -> Breaker:
    if breaker.state is not CircuitState.CLOSED:
        # A failed probe (or a failure of a request let through before the circuit opened) re-opens it.
        return dataclasses.replace(breaker, state=CircuitState.OPEN, opened_at=now_s, is_probing=False,
                                   num_opened=breaker.num_opened + (breaker.state is CircuitState.HALF_OPEN))
    recent = tuple(t for t in breaker.failures_at if t > now_s - settings.window_s) + (now_s,)
    if len(recent) >= settings.failure_threshold:
        return Breaker(CircuitState.OPEN, (), now_s, False, breaker.num_opened + 1)
    return dataclasses.replace(breaker, failures_at=recent)


def record_neutral(breaker: Breaker, now_s: Seconds, settings: BreakerSettings) -> Breaker:
    """An outcome that says nothing about health: frees the probe slot, decides nothing."""
    if breaker.state is CircuitState.HALF_OPEN and breaker.is_probing:
        return dataclasses.replace(breaker, is_probing=False)
    return breaker
