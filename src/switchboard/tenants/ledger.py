"""Where a key's usage is counted (docs/tenants.md): `LocalLedger`, this gateway's own meter (embedded mode),
or `switchboard.cluster.ray_key_ledger.RayKeyLedger`, the Ray fleet's control actor (one count for every gateway).
Both decide with the same pure `limits.admit` over a `UsageMeter`; they differ only in where the meter lives.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from switchboard.tenants import limits as lim
from switchboard.tenants.keys import KeyLimits
from switchboard.tenants.meter import UsageMeter


class KeyLedger(Protocol):
    async def admit(self, key_id: str, limits: KeyLimits, num_tokens: int, usd_estimate: float) -> Any:
        """Checks the key's limits and, if they allow it, counts the request (`num_tokens` estimated) and holds
        `usd_estimate` against its budgets, as one step (no other request is checked in between). Returns the
        `limits.OverLimit` refusal, or the request's hold, to pass to `settle` or `release` once."""

    def settle(self, hold: Any, num_tokens: int | None, usd: float) -> None:
        """The request finished: real tokens (None: unknown, the estimate stays) and cost replace the hold."""

    def release(self, hold: Any) -> None:
        """The request ended without a logged answer: its hold is dropped, it still counts as a request."""

    def seed(self, key_id: str, usd_today: float, usd_this_month: float) -> None:
        """The key's spend so far today and this month (from the request log at start)."""


class LocalLedger:
    """The ledger of one gateway process: its own `UsageMeter`, on its event loop."""

    def __init__(self, meter: UsageMeter, clock: Callable[[], float] = time.time) -> None:
        self.meter = meter
        self.clock = clock

    async def admit(self, key_id: str, limits: KeyLimits, num_tokens: int, usd_estimate: float) -> Any:
        return admit_and_reserve(self.meter, key_id, limits, self.clock(), num_tokens, usd_estimate)

    def settle(self, hold: Any, num_tokens: int | None, usd: float) -> None:
        self.meter.settle(hold, num_tokens, usd, self.clock())

    def release(self, hold: Any) -> None:
        self.meter.release(hold)

    def seed(self, key_id: str, usd_today: float, usd_this_month: float) -> None:
        self.meter.seed(key_id, usd_today, usd_this_month, self.clock())

    def rate_headers(self, key_id: str, limits: KeyLimits) -> dict[str, str]:
        """The key's `x-ratelimit-*` headers as of now (its admitted requests counted). Only this ledger has them:
        a Ray gateway admits from quota leases and does not know the cluster's count per request."""
        now_s = self.clock()
        return lim.rate_limit_headers(limits, self.meter.snapshot(key_id, now_s), now_s, self.meter.window_s)


def admit_and_reserve(meter: UsageMeter, key_id: str, limits: KeyLimits, now_s: float, num_tokens: int,
                      usd_estimate: float) -> Any:
    """`limits.admit` over the meter's usage, then the reservation if allowed (no await: atomic on a loop)."""
    verdict = lim.admit(limits, meter.snapshot(key_id, now_s), now_s, num_tokens, window_s=meter.window_s)
    if isinstance(verdict, lim.OverLimit):
        return verdict
    return meter.reserve(key_id, now_s, num_tokens, usd_estimate)
