"""Rate limits and budgets as pure functions of (limits, usage snapshot, now_s): `admit` says allow, or which
limit is hit, with the status (429 for rate limits, 402 for budgets) and how long until it clears.

Windows: requests and tokens per minute count the 60 s before `now_s` (a sliding log, not fixed minutes, so a
burst at a minute's edge cannot pass twice the limit). Checks cost O(1); only a refusal walks the window to say
when it clears. Budgets are per UTC calendar day and month, with reservation: each admitted request holds its
estimated cost (prompt plus `max_tokens` at its expert's prices, an upper bound) until it settles at its real
cost, and a request is refused once the spend plus what the requests in flight hold reaches the budget. However
many run at once, a budget is exceeded by less than the last admitted request's estimate (plus, if a real prompt
was longer than estimated, that difference).
"""

from __future__ import annotations

import calendar
import dataclasses
import datetime as dt
import enum
import functools
from collections.abc import Sequence

from switchboard.tenants.keys import KeyLimits

WINDOW_S = 60.0


class Limit(str, enum.Enum):
    RPM = "rpm"
    TPM = "tpm"
    USD_PER_DAY = "usd_per_day"
    USD_PER_MONTH = "usd_per_month"


class WindowEntry:
    """One admitted request in its key's window: when, and its tokens (the admission estimate until the
    answer's real usage replaces it)."""

    __slots__ = ("key_id", "at_s", "num_tokens", "in_window", "usd_held")

    def __init__(self, key_id: str, at_s: float, num_tokens: int, usd_held: float = 0.0) -> None:
        self.key_id = key_id
        self.at_s = at_s
        self.num_tokens = num_tokens
        self.in_window = True
        self.usd_held = usd_held
        """The request's estimated cost, held against the key's budgets until it settles (0 after)."""


@dataclasses.dataclass(frozen=True, slots=True)
class UsageSnapshot:
    """A key's recent use: the requests of the last `WINDOW_S` before `now_s` (count, tokens, and the entries
    oldest first, read only to say when an exceeded limit clears; the producer drops older entries), its
    spend this UTC day and month, and the estimated cost its requests in flight hold."""

    num_requests: int = 0
    num_tokens: int = 0
    usd_today: float = 0.0
    usd_this_month: float = 0.0
    window: Sequence[WindowEntry] = ()
    usd_held: float = 0.0

    @classmethod
    def of(cls, entries: Sequence[tuple[float, int]], usd_today: float = 0.0, usd_this_month: float = 0.0) -> "UsageSnapshot":
        window = [WindowEntry("", at_s, n) for at_s, n in entries]
        return cls(len(window), sum(n for _, n in entries), usd_today, usd_this_month, window)


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


def admit(limits: KeyLimits, usage: UsageSnapshot, now_s: float, num_tokens_estimate: int,
          window_s: float = WINDOW_S) -> Allowed | OverLimit:
    """Budgets first (waiting a minute does not help them), then requests per minute, then tokens per minute.
    `window_s` is the window `usage` counts over (a minute but in tests and demos)."""
    return (_check_budget(limits, usage, now_s) or _check_rpm(limits, usage, now_s, window_s)
            or _check_tpm(limits, usage, now_s, num_tokens_estimate, window_s) or ALLOWED)


def _check_budget(limits: KeyLimits, usage: UsageSnapshot, now_s: float) -> OverLimit | None:
    held = f" + {usage.usd_held:.4f} USD held by requests in flight" if usage.usd_held > 0 else ""
    if limits.usd_per_day is not None and usage.usd_today + usage.usd_held >= limits.usd_per_day:
        return OverLimit(Limit.USD_PER_DAY, 402, seconds_to_next_day(now_s),
                         f"daily budget of {limits.usd_per_day:g} USD is spent ({usage.usd_today:.4f} USD today, UTC{held})")
    if limits.usd_per_month is not None and usage.usd_this_month + usage.usd_held >= limits.usd_per_month:
        return OverLimit(Limit.USD_PER_MONTH, 402, seconds_to_next_month(now_s),
                         f"monthly budget of {limits.usd_per_month:g} USD is spent ({usage.usd_this_month:.4f} USD this month, UTC{held})")
    return None


def _check_rpm(limits: KeyLimits, usage: UsageSnapshot, now_s: float, window_s: float) -> OverLimit | None:
    if limits.rpm is None or usage.num_requests < limits.rpm:
        return None
    # The request that frees a slot is the (n - rpm + 1)-th oldest: once it leaves the window, one more fits.
    index = usage.num_requests - limits.rpm
    freeing_at = usage.window[index].at_s + window_s if limits.rpm > 0 else now_s + window_s
    return OverLimit(Limit.RPM, 429, max(freeing_at - now_s, 0.0),
                     f"rate limit of {limits.rpm} requests per minute reached")


def _check_tpm(limits: KeyLimits, usage: UsageSnapshot, now_s: float, num_tokens: int, window_s: float) -> OverLimit | None:
    if limits.tpm is None or usage.num_tokens + num_tokens <= limits.tpm:
        return None
    if num_tokens > limits.tpm:
        return OverLimit(Limit.TPM, 429, window_s, f"rate limit of {limits.tpm} tokens per minute: this request alone is "
                         f"estimated at {num_tokens} tokens (prompt + max_tokens); lower max_tokens")
    used, retry_after_s = usage.num_tokens, window_s
    for entry in usage.window:  # the oldest requests leave the window first
        used -= entry.num_tokens
        if used + num_tokens <= limits.tpm:
            retry_after_s = entry.at_s + window_s - now_s
            break
    return OverLimit(Limit.TPM, 429, max(retry_after_s, 0.0),
                     f"rate limit of {limits.tpm} tokens per minute reached ({usage.num_tokens} used, "
                     f"this request is estimated at {num_tokens})")


def rate_limit_headers(limits: KeyLimits, usage: UsageSnapshot, now_s: float, window_s: float = WINDOW_S) -> dict[str, str]:
    """OpenAI's `x-ratelimit-*` headers for a key with `rpm` or `tpm`, from its usage with the request at hand
    counted: each limit, what is left of it, and when it is whole again (the newest request in the window leaves
    it: a sliding window's "reset to its initial state"). None of them for a limit the key does not have."""
    headers: dict[str, str] = {}
    reset = duration_text(max(usage.window[-1].at_s + window_s - now_s, 0.0) if usage.window else 0.0)
    if limits.rpm is not None:
        headers.update({"x-ratelimit-limit-requests": str(limits.rpm), "x-ratelimit-remaining-requests": str(max(limits.rpm - usage.num_requests, 0)),
                        "x-ratelimit-reset-requests": reset})
    if limits.tpm is not None:
        headers.update({"x-ratelimit-limit-tokens": str(limits.tpm), "x-ratelimit-remaining-tokens": str(max(limits.tpm - usage.num_tokens, 0)),
                        "x-ratelimit-reset-tokens": reset})
    return headers


def duration_text(seconds: float) -> str:
    """A duration as OpenAI writes it in `x-ratelimit-reset-*`: "20ms", "1.5s", "6m0s"."""
    if seconds < 1.0:
        return f"{round(seconds * 1000)}ms"
    if seconds < 60.0:
        return f"{seconds:.3g}s"
    minutes, rest = divmod(seconds, 60.0)
    return f"{int(minutes)}m{round(rest)}s"


def day_of(now_s: float) -> int:
    """The UTC day as a number (days since 1970-01-01): cheap enough for every request."""
    return int(now_s // 86400.0)


def month_of(now_s: float) -> int:
    """The UTC month as a number (12 * year + month - 1)."""
    return _month_of_day(day_of(now_s))


@functools.lru_cache(maxsize=64)
def _month_of_day(day: int) -> int:
    date = dt.date(1970, 1, 1) + dt.timedelta(days=day)
    return 12 * date.year + date.month - 1


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
