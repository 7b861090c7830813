"""Where the next attempt goes (`plan_next`) and how failures are classified: pure functions, no server."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from switchboard.config.schema import FailoverConfig
from switchboard.engines.base import (
    EngineBadResponse,
    EngineRejected,
    EngineTimeout,
    EngineUnavailable,
)
from switchboard.gateway.failover import (
    FailedAttempt,
    FailureKind,
    backoff_s,
    classify,
    plan_next,
)
from switchboard.runtime.lease import AdmissionRejected, CircuitOpen

SETTINGS = FailoverConfig(max_attempts=4, retries_per_expert=1, backoff_base_s=0.1, backoff_max_s=0.3, deadline_s=10)


def _failed(expert_id: str, kind: FailureKind = FailureKind.RETRY) -> FailedAttempt:
    return FailedAttempt(expert_id, "", kind, "x", "")


def _plan(failures, ranking=("a", "b", "c"), elapsed_s=0.0, available=lambda e: True, settings=SETTINGS):
    return plan_next(ranking, failures, settings, elapsed_s, available, random.Random(0))


def test_classification():
    assert classify(EngineUnavailable("a", "connection refused")) is FailureKind.RETRY
    assert classify(EngineBadResponse("a", "garbage")) is FailureKind.RETRY
    assert classify(StopAsyncIteration()) is FailureKind.RETRY
    assert classify(EngineTimeout("a", "stalled")) is FailureKind.FALLBACK
    assert classify(AdmissionRejected("a", 429, 1.0, "busy")) is FailureKind.FALLBACK
    assert classify(CircuitOpen("a", 1.0)) is FailureKind.FALLBACK
    assert classify(EngineRejected("a", "too long")) is FailureKind.FATAL
    assert classify(ValueError("a bug")) is FailureKind.FATAL


def test_retry_same_expert_with_backoff_then_fall_back_in_ranking_order():
    assert _plan([]).expert_id == "a"
    retry = _plan([_failed("a")])
    assert retry.expert_id == "a" and retry.step == "retry" and 0 <= retry.delay_s <= 0.1
    fallback = _plan([_failed("a"), _failed("a")])
    assert fallback.expert_id == "b" and fallback.step == "fallback" and fallback.delay_s == 0
    assert _plan([_failed("a", FailureKind.FALLBACK)]).expert_id == "b"  # a stall or refusal moves on at once


def test_gives_up_on_fatal_failures_attempts_deadline_or_no_fallback():
    assert _plan([_failed("a", FailureKind.FATAL)]).expert_id is None
    assert _plan([_failed("a"), _failed("a"), _failed("b"), _failed("b")]).expert_id is None  # max_attempts
    assert "deadline" in _plan([_failed("a")], elapsed_s=10.0).reason
    assert _plan([_failed("a", FailureKind.FALLBACK)], ranking=("a",)).expert_id is None
    assert _plan([_failed("a", FailureKind.FALLBACK)], available=lambda e: e != "b").expert_id == "c"  # b's circuit is open
    assert _plan([_failed("a")], available=lambda e: e != "a").expert_id == "b"  # a's circuit just opened: no retry there
    assert _plan([_failed("a")], settings=FailoverConfig(enabled=False)).expert_id is None


@given(st.integers(0, 20), st.integers(0, 2**32))
def test_backoff_is_bounded_and_grows_its_ceiling(num_retries_done, seed):
    delay = backoff_s(num_retries_done, SETTINGS, random.Random(seed))
    assert 0 <= delay <= min(SETTINGS.backoff_max_s, SETTINGS.backoff_base_s * 2 ** num_retries_done)


@given(st.lists(st.tuples(st.sampled_from("abc"), st.sampled_from(list(FailureKind))), max_size=12))
def test_attempts_are_bounded_and_never_repeat_a_fallen_back_expert(history):
    failures: list[FailedAttempt] = []
    for expert_id, kind in history:
        plan = _plan(failures)
        if plan.expert_id is None:
            break
        assert len(failures) < SETTINGS.max_attempts
        if plan.step == "fallback":
            assert plan.expert_id not in {f.expert_id for f in failures}
        failures.append(_failed(plan.expert_id, kind))
