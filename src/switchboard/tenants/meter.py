"""`UsageMeter`: each key's recent requests and its spend, in memory, fed by the gateway and seeded at start
from the request log (spend survives a restart; the one-minute windows start empty).

Not thread-safe: used from the gateway's one event loop. Each gateway process meters on its own (several
processes behind a balancer each enforce the full rate limit; budgets are rebuilt from the shared log at start).
"""

from __future__ import annotations

from collections import deque

from switchboard.tenants.limits import WINDOW_S, UsageSnapshot, day_of, month_of


class Reservation:
    """One admitted request's entry in its key's window: the token estimate, replaced by real usage later."""

    __slots__ = ("key_id", "at_s", "num_tokens")

    def __init__(self, key_id: str, at_s: float, num_tokens: int) -> None:
        self.key_id = key_id
        self.at_s = at_s
        self.num_tokens = num_tokens


class _KeyUsage:
    __slots__ = ("window", "day", "usd_day", "month", "usd_month")

    def __init__(self) -> None:
        self.window: deque[Reservation] = deque()
        self.day = ""
        self.usd_day = 0.0
        self.month = ""
        self.usd_month = 0.0


class UsageMeter:
    def __init__(self) -> None:
        self._keys: dict[str, _KeyUsage] = {}

    def _usage(self, key_id: str) -> _KeyUsage:
        usage = self._keys.get(key_id)
        if usage is None:
            usage = self._keys[key_id] = _KeyUsage()
        return usage

    def snapshot(self, key_id: str, now_s: float) -> UsageSnapshot:
        usage = self._keys.get(key_id)
        if usage is None:
            return UsageSnapshot()
        while usage.window and usage.window[0].at_s <= now_s - WINDOW_S:
            usage.window.popleft()
        return UsageSnapshot(
            tuple((r.at_s, r.num_tokens) for r in usage.window),
            usage.usd_day if usage.day == day_of(now_s) else 0.0,
            usage.usd_month if usage.month == month_of(now_s) else 0.0,
        )

    def reserve(self, key_id: str, now_s: float, num_tokens_estimate: int) -> Reservation:
        """Counts an admitted request (and its estimated tokens) in its key's window."""
        reservation = Reservation(key_id, now_s, num_tokens_estimate)
        self._usage(key_id).window.append(reservation)
        return reservation

    def settle(self, reservation: Reservation, num_tokens: int | None, usd: float, now_s: float) -> None:
        """The request finished: its real token count replaces the estimate (None keeps the estimate: a failed
        request's size is unknown) and its cost is added to today's and this month's spend."""
        if num_tokens is not None:
            reservation.num_tokens = num_tokens
        self.add_spend(reservation.key_id, usd, now_s)

    def add_spend(self, key_id: str, usd: float, now_s: float) -> None:
        usage = self._usage(key_id)
        day, month = day_of(now_s), month_of(now_s)
        if usage.day != day:
            usage.day, usage.usd_day = day, 0.0
        if usage.month != month:
            usage.month, usage.usd_month = month, 0.0
        usage.usd_day += usd
        usage.usd_month += usd

    def seed(self, key_id: str, usd_today: float, usd_this_month: float, now_s: float) -> None:
        """Sets a key's spend so far (from the request log at start)."""
        usage = self._usage(key_id)
        usage.day, usage.usd_day = day_of(now_s), usd_today
        usage.month, usage.usd_month = month_of(now_s), usd_this_month
