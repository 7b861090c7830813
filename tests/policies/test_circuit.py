"""The circuit breaker state machine, driven by explicit times."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from switchboard.policies.circuit import (
    Breaker,
    BreakerSettings,
    CircuitState,
    allow,
    record_failure,
    record_neutral,
    record_success,
    would_allow,
)

SETTINGS = BreakerSettings(failure_threshold=3, window_s=10.0, cooldown_s=5.0)


def _fail_times(times: list[float], breaker: Breaker | None = None) -> Breaker:
    breaker = breaker or Breaker()
    for t in times:
        breaker = record_failure(breaker, t, SETTINGS)
    return breaker


def test_opens_at_the_threshold_within_the_window_only():
    assert _fail_times([0.0, 1.0]).state is CircuitState.CLOSED
    assert _fail_times([0.0, 1.0, 2.0]).state is CircuitState.OPEN
    spread = _fail_times([0.0, 6.0, 12.0])  # the first failure left the window before the third
    assert spread.state is CircuitState.CLOSED and len(spread.failures_at) == 2


def test_open_refuses_until_the_cooldown_then_lets_exactly_one_probe_through():
    breaker = _fail_times([0.0, 1.0, 2.0])
    assert not allow(breaker, 6.9, SETTINGS).is_allowed
    assert breaker.retry_after_s(6.0, SETTINGS) == 1.0
    probe = allow(breaker, 7.0, SETTINGS)
    assert probe.is_allowed and probe.is_probe and probe.breaker.state is CircuitState.HALF_OPEN
    assert not allow(probe.breaker, 7.1, SETTINGS).is_allowed  # one probe at a time
    assert not would_allow(probe.breaker, 7.1, SETTINGS)


def test_the_probe_decides():
    probe = allow(_fail_times([0.0, 1.0, 2.0]), 7.0, SETTINGS).breaker
    closed = record_success(probe, 7.5, SETTINGS)
    assert closed.state is CircuitState.CLOSED and closed.failures_at == () and closed.num_opened == 1
    reopened = record_failure(probe, 7.5, SETTINGS)
    assert reopened.state is CircuitState.OPEN and reopened.opened_at == 7.5 and reopened.num_opened == 2
    freed = record_neutral(probe, 7.5, SETTINGS)  # e.g. the client went away: a new probe may go
    assert freed.state is CircuitState.HALF_OPEN and allow(freed, 7.6, SETTINGS).is_probe


@given(st.lists(st.tuples(st.sampled_from(["allow", "ok", "fail", "neutral"]), st.floats(0, 5)), max_size=60))
def test_never_lets_two_probes_out_and_never_refuses_when_closed(steps):
    breaker, now = Breaker(), 0.0
    probes_out = 0
    for op, dt in steps:
        now += dt
        if op == "allow":
            admission = allow(breaker, now, SETTINGS)
            assert admission.is_allowed or breaker.state is not CircuitState.CLOSED
            probes_out += admission.is_probe
            breaker = admission.breaker
        else:
            step = {"ok": record_success, "fail": record_failure, "neutral": record_neutral}[op]
            if breaker.is_probing:
                probes_out -= 1
            breaker = step(breaker, now, SETTINGS)
        assert probes_out <= 1
        assert breaker.state is CircuitState.HALF_OPEN or not breaker.is_probing
