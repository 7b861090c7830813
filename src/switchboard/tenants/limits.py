"""Rate limits and budgets as pure functions of (limits, usage snapshot, now_s): `admit` says allow, or which
limit is hit, with the status (429 for rate limits, 402 for budgets) and how long until it clears.

Windows: requests and tokens per minute count the 60 s before `now_s` (a sliding log, not fixed minutes, so a
burst at a minute's edge cannot pass twice the limit). Budgets are per UTC calendar day and month; they are
soft by one request: a request is refused once the spend *already* reached the budget, so the request that
crosses it is still served (its cost is only known after it ran).
"""

from __future__ import annotations

import calendar
import dataclasses
import datetime as dt
import enum

from switchboard.tenants.keys import KeyLimits

WINDOW_S = 60.0


class Limit(str, enum.Enum):
    RPM = "rpm"
    TPM = "tpm"
    USD_PER_DAY = "usd_per_day"
    USD_PER_MONTH = "usd_per_month"


@dataclasses.dataclass(frozen=True, slots=True)
class UsageSnapshot:
    """A key's recent use. `window` is ((at_s, num_tokens), ...) for the requests of the last `WINDOW_S`,
    oldest first (tokens are the admission estimate until the answer's real usage replaces it)."""

    window: tuple[tuple[float, int], ...] = ()
    usd_today: float = 0.0
    usd_this_month: float = 0.0


@dataclasses.dataclass(frozen=True, slots=True)
class Allowed:
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class OverLimit:
    limit: Limit
    status: int  # 429 (rate) or 402 (budget)
    retry_after_s: float
    message: str


ALLOWED = Allowed()


def admit(limits: KeyLimits, usage: UsageSnapshot, now_s: float, num_tokens_estimate: int) -> Allowed | OverLimit:
    """Budgets first (waiting a minute does not help them), then requests per minute, then tokens per minute."""
    return (_check_budget(limits, usage, now_s) or _check_rpm(limits, usage, now_s)
            or _check_tpm(limits, usage, now_s, num_tokens_estimate) or ALLOWED)


def _check_budget(limits: KeyLimits, usage: UsageSnapshot, now_s: float) -> OverLimit | None:
    if limits.usd_per_day is not None and usage.usd_today >= limits.usd_per_day:
        return OverLimit(Limit.USD_PER_DAY, 402, seconds_to_next_day(now_s),
                         f"daily budget of {limits.usd_per_day:g} USD is spent ({usage.usd_today:.4f} USD today, UTC)")
    if limits.usd_per_month is not None and usage.usd_this_month >= limits.usd_per_month:
        return OverLimit(Limit.USD_PER_MONTH, 402, seconds_to_next_month(now_s),
                         f"monthly budget of {limits.usd_per_month:g} USD is spent ({usage.usd_this_month:.4f} USD this month, UTC)")
    return None


def _recent(usage: UsageSnapshot, now_s: float) -> list[tuple[float, int]]:
    return [(at, n) for at, n in usage.window if at > now_s - WINDOW_S]


def _check_rpm(limits: KeyLimits, usage: UsageSnapshot, now_s: float) -> OverLimit | None:
    if limits.rpm is None:
        return None
    recent = _recent(usage, now_s)
    if len(recent) < limits.rpm:
        return None
    # The request that frees a slot is the (len - rpm + 1)-th oldest: once it leaves the window, one more fits.
    freeing_at = recent[len(recent) - limits.rpm][0] + WINDOW_S if limits.rpm > 0 else now_s + WINDOW_S
    return OverLimit(Limit.RPM, 429, max(freeing_at - now_s, 0.0),
                     f"rate limit of {limits.rpm} requests per minute reached")


def _check_tpm(limits: KeyLimits, usage: UsageSnapshot, now_s: float, num_tokens: int) -> OverLimit | None:
    if limits.tpm is None:
        return None
    recent = _recent(usage, now_s)
    used = sum(n for _, n in recent)
    if used + num_tokens <= limits.tpm:
        return None
    if num_tokens > limits.tpm:
        return OverLimit(Limit.TPM, 429, WINDOW_S, f"rate limit of {limits.tpm} tokens per minute: this request alone is "
                         f"estimated at {num_tokens} tokens (prompt + max_tokens); lower max_tokens")
    retry_after_s = WINDOW_S
    for at, n in recent:  # the oldest requests leave the window first
        used -= n
        if used + num_tokens <= limits.tpm:
            retry_after_s = at + WINDOW_S - now_s
            break
    return OverLimit(Limit.TPM, 429, max(retry_after_s, 0.0),
                     f"rate limit of {limits.tpm} tokens per minute reached ({sum(n for _, n in recent)} used, "
                     f"this request is estimated at {num_tokens})")


def day_of(now_s: float) -> str:
    return dt.datetime.fromtimestamp(now_s, dt.timezone.utc).strftime("%Y-%m-%d")


def month_of(now_s: float) -> str:
    return dt.datetime.fromtimestamp(now_s, dt.timezone.utc).strftime("%Y-%m")


def day_start_s(now_s: float) -> float:
    return now_s - now_s % 86400.0


def month_start_s(now_s: float) -> float:
    now = dt.datetime.fromtimestamp(now_s, dt.timezone.utc)
    return dt.datetime(now.year, now.month, 1, tzinfo=dt.timezone.utc).timestamp()


def seconds_to_next_day(now_s: float) -> float:
    return day_start_s(now_s) + 86400.0 - now_s


def seconds_to_next_month(now_s: float) -> float:
    now = dt.datetime.fromtimestamp(now_s, dt.timezone.utc)
    return month_start_s(now_s) + calendar.monthrange(now.year, now.month)[1] * 86400.0 - now_s
