"""Rate limits and budgets as pure functions, and the usage meter that feeds them."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switchboard.tenants.keys import KeyLimits
from switchboard.tenants.limits import ALLOWED, Limit, OverLimit, UsageSnapshot, admit, seconds_to_next_day, seconds_to_next_month
from switchboard.tenants.meter import UsageMeter

NOON = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.timezone.utc).timestamp()


def test_unlimited_key_is_always_admitted():
    assert admit(KeyLimits(), UsageSnapshot.of(((NOON - 1, 10**9),) * 1000, 1e9, 1e9), NOON, 10**9) is ALLOWED


def test_rpm_names_the_limit_and_when_a_slot_frees():
    usage = UsageSnapshot.of(((NOON - 50, 1), (NOON - 30, 1), (NOON - 10, 1)))
    verdict = admit(KeyLimits(rpm=3), usage, NOON, 1)
    assert isinstance(verdict, OverLimit) and (verdict.limit, verdict.status) == (Limit.RPM, 429)
    assert verdict.retry_after_s == pytest.approx(10.0)  # the request at -50 s leaves the window in 10 s
    assert admit(KeyLimits(rpm=3), UsageSnapshot.of(((NOON - 30, 1), (NOON - 10, 1))), NOON + 10.001, 1) is ALLOWED
    assert admit(KeyLimits(rpm=4), usage, NOON, 1) is ALLOWED


def test_tpm_counts_the_estimate_and_says_when_it_fits():
    usage = UsageSnapshot.of(((NOON - 40, 500), (NOON - 20, 400)))
    verdict = admit(KeyLimits(tpm=1000), usage, NOON, 200)
    assert isinstance(verdict, OverLimit) and verdict.limit is Limit.TPM and verdict.retry_after_s == pytest.approx(20.0)
    assert admit(KeyLimits(tpm=1000), usage, NOON, 100) is ALLOWED
    alone = admit(KeyLimits(tpm=1000), UsageSnapshot(), NOON, 1001)
    assert isinstance(alone, OverLimit) and "this request alone" in alone.message


def test_budgets_are_402_until_the_next_utc_day_or_month():
    day = admit(KeyLimits(usd_per_day=1.0, rpm=0), UsageSnapshot(usd_today=1.0), NOON, 1)
    assert isinstance(day, OverLimit) and (day.limit, day.status) == (Limit.USD_PER_DAY, 402)  # budget before rate
    assert day.retry_after_s == pytest.approx(12 * 3600)
    month = admit(KeyLimits(usd_per_month=5.0), UsageSnapshot(usd_today=0.1, usd_this_month=5.2), NOON, 1)
    assert isinstance(month, OverLimit) and month.limit is Limit.USD_PER_MONTH
    assert month.retry_after_s == pytest.approx(8.5 * 86400)  # 22 Nov noon to 1 Dec
    assert admit(KeyLimits(usd_per_day=1.0), UsageSnapshot(usd_today=0.99), NOON, 1) is ALLOWED


def test_calendar_edges():
    assert seconds_to_next_day(NOON - 12 * 3600) == 86400.0
    last = dt.datetime(2028, 2, 29, 23, 59, 59, tzinfo=dt.timezone.utc).timestamp()  # a leap year's February
    assert seconds_to_next_month(last) == pytest.approx(1.0)


@settings(max_examples=200, deadline=None)
@given(rpm=st.integers(1, 5), tpm=st.integers(50, 400), gaps=st.lists(st.floats(0, 30), min_size=1, max_size=60),
       sizes=st.lists(st.integers(1, 120), min_size=60, max_size=60))
def test_admitted_requests_never_exceed_the_limits_in_any_minute(rpm, tpm, gaps, sizes):
    """Whatever arrives, what the meter admits fits every 60 s window (tokens as estimated and kept)."""
    meter, limits, now = UsageMeter(), KeyLimits(rpm=rpm, tpm=tpm), NOON
    admitted: list[tuple[float, int]] = []
    for gap, size in zip(gaps, sizes):
        now += gap
        if admit(limits, summary_ok(meter.snapshot("k", now)), now, size) is ALLOWED:
            meter.reserve("k", now, size)
            admitted.append((now, size))
    for at, _ in admitted:
        in_window = [(t, n) for t, n in admitted if at - 60 < t <= at]
        assert len(in_window) <= rpm and sum(n for _, n in in_window) <= tpm


def test_meter_replaces_the_estimate_with_real_usage_and_rolls_spend_over_at_midnight():
    meter = UsageMeter()
    reservation = meter.reserve("k", NOON, 300)
    assert summary(meter.snapshot("k", NOON)) == (1, 300, 0.0, 0.0)
    meter.settle(reservation, 40, 0.5, NOON + 1)
    assert summary(meter.snapshot("k", NOON + 2)) == (1, 40, 0.5, 0.5)
    failed = meter.reserve("k", NOON + 3, 100)
    meter.settle(failed, None, 0.0, NOON + 4)  # no usage known: the estimate stays
    assert summary(meter.snapshot("k", NOON + 5)) == (2, 140, 0.5, 0.5)
    assert summary(meter.snapshot("k", NOON + 61)) == (1, 100, 0.5, 0.5)  # the first left the window
    meter.settle(reservation, 1000, 0.0, NOON + 62)  # settled after it left the window: counts nowhere
    assert summary(meter.snapshot("k", NOON + 62)) == (1, 100, 0.5, 0.5)
    assert summary(meter.snapshot("k", NOON + 86400)) == (0, 0, 0.0, 0.5)  # next day, same month
    meter.seed("other", 2.0, 7.0, NOON)
    assert summary(meter.snapshot("other", NOON)) == (0, 0, 2.0, 7.0)


def summary(usage: UsageSnapshot) -> tuple:
    assert usage.num_requests == len(usage.window) and usage.num_tokens == sum(e.num_tokens for e in usage.window)
    return usage.num_requests, usage.num_tokens, usage.usd_today, usage.usd_this_month


def summary_ok(usage: UsageSnapshot) -> UsageSnapshot:
    summary(usage)
    return usage


def test_a_budget_counts_what_requests_in_flight_hold_and_settling_frees_it():
    meter, limits = UsageMeter(), KeyLimits(usd_per_day=1.0)
    first = meter.reserve("k", NOON, 10, usd_estimate=0.6)
    assert meter.snapshot("k", NOON).usd_held == pytest.approx(0.6)
    assert admit(limits, meter.snapshot("k", NOON), NOON, 10) is ALLOWED  # 0.6 held < 1.0
    second = meter.reserve("k", NOON, 10, usd_estimate=0.6)
    refused = admit(limits, meter.snapshot("k", NOON), NOON, 10)  # 1.2 held: nothing more until one settles
    assert isinstance(refused, OverLimit) and refused.limit is Limit.USD_PER_DAY and "held by requests in flight" in refused.message
    meter.settle(first, 8, 0.1, NOON + 1)  # real cost below the estimate: the difference is free again
    assert meter.snapshot("k", NOON + 1).usd_held == pytest.approx(0.6) and meter.snapshot("k", NOON + 1).usd_today == pytest.approx(0.1)
    assert admit(limits, meter.snapshot("k", NOON + 1), NOON + 1, 10) is ALLOWED
    meter.release(second)  # refused downstream or failed before it was logged: no spend
    meter.release(second)  # idempotent
    usage = meter.snapshot("k", NOON + 2)
    assert (usage.usd_held, usage.usd_today, usage.num_requests) == (0.0, pytest.approx(0.1), 2)


@settings(max_examples=200, deadline=None)
@given(budget=st.floats(0.01, 5.0), costs=st.lists(st.tuples(st.floats(0.001, 1.0), st.floats(0, 1)), min_size=1, max_size=64),
       finish_order=st.randoms(use_true_random=False))
def test_concurrent_requests_overshoot_a_budget_by_less_than_one_estimate(budget, costs, finish_order):
    """All requests arrive before any finishes (the worst case for concurrency); each costs at most its
    estimate. Whatever the order they finish in, the spend ends below the budget plus the largest estimate."""
    meter, limits = UsageMeter(), KeyLimits(usd_per_day=budget)
    admitted = []
    for estimate, fraction in costs:
        if admit(limits, meter.snapshot("k", NOON), NOON, 1) is ALLOWED:
            admitted.append((meter.reserve("k", NOON, 1, usd_estimate=estimate), estimate * fraction))
    finish_order.shuffle(admitted)
    for reservation, usd in admitted:
        meter.settle(reservation, 1, usd, NOON + 1)
    assert meter.snapshot("k", NOON + 1).usd_today < budget + max(e for e, _ in costs)
    assert meter.snapshot("k", NOON + 1).usd_held == 0.0


def test_rate_limit_headers_say_each_limit_what_is_left_and_when_it_is_whole_again():
    from switchboard.tenants.limits import duration_text, rate_limit_headers

    usage = UsageSnapshot.of([(100.0, 300), (130.0, 200)])
    headers = rate_limit_headers(KeyLimits(rpm=5, tpm=1000), usage, now_s=140.0, window_s=60.0)
    assert headers == {"x-ratelimit-limit-requests": "5", "x-ratelimit-remaining-requests": "3", "x-ratelimit-reset-requests": "50s",
                       "x-ratelimit-limit-tokens": "1000", "x-ratelimit-remaining-tokens": "500", "x-ratelimit-reset-tokens": "50s"}
    over = rate_limit_headers(KeyLimits(rpm=1), usage, now_s=140.0, window_s=60.0)
    assert over == {"x-ratelimit-limit-requests": "1", "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "50s"}
    assert rate_limit_headers(KeyLimits(), usage, now_s=140.0) == {}
    assert rate_limit_headers(KeyLimits(tpm=10), UsageSnapshot(), now_s=0.0)["x-ratelimit-reset-tokens"] == "0ms"
    assert [duration_text(s) for s in (0.0204, 1.5, 59.9, 360.0, 3599.0)] == ["20ms", "1.5s", "59.9s", "6m0s", "59m59s"]
