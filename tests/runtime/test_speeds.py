"""Measured engine speeds (runtime/speeds.py) and the estimate they replace (runtime/estimates.py)."""

from __future__ import annotations

import dataclasses

import pytest

from switchboard.config import parse_config
from switchboard.engines.base import Timing
from switchboard.runtime.estimates import live_workers, serving_estimates, with_measured_speed
from switchboard.runtime.speeds import MeasuredSpeed, updated


def test_the_first_answer_sets_the_rates_and_later_ones_move_them_by_a_fifth():
    first = updated(MeasuredSpeed(), Timing(num_prefilled=100, prefill_s=0.5, num_decoded=50, decode_s=0.5))
    assert first == MeasuredSpeed(0.005, 0.01, 1)
    second = updated(first, Timing(num_prefilled=100, prefill_s=1.0, num_decoded=50, decode_s=1.0))
    assert second.prefill_s_per_token == pytest.approx(0.8 * 0.005 + 0.2 * 0.01)
    assert second.decode_s_per_token == pytest.approx(0.8 * 0.01 + 0.2 * 0.02) and second.num_answers == 2


def test_a_cached_prompt_and_a_one_token_answer_leave_the_rates_alone():
    speed = MeasuredSpeed(0.005, 0.01, 3)
    assert updated(speed, Timing(num_prefilled=2, prefill_s=0.05, num_decoded=1, decode_s=0.01)) == MeasuredSpeed(0.005, 0.01, 4)


@pytest.mark.parametrize("raw", [None, {}, {"prompt_n": "x", "prompt_ms": 1, "predicted_n": 1, "predicted_ms": 1},
                                 {"prompt_n": -1, "prompt_ms": 1, "predicted_n": 1, "predicted_ms": 1}])
def test_malformed_timings_are_ignored(raw):
    assert Timing.parse(raw) is None


def test_llama_cpps_timings_are_read_in_seconds():
    assert Timing.parse({"prompt_n": 10, "prompt_ms": 50.0, "predicted_n": 4, "predicted_ms": 40.0, "extra": 1}) == Timing(10, 0.05, 4, 0.04)


def _estimate(backend: str):
    config = parse_config(f"experts:\n  - id: e\n    params_b: 0.135\n    backend: {{kind: {backend}}}\n")
    return serving_estimates(config.experts[0], live_workers(config))[0]


def test_a_one_sequence_engines_estimate_takes_the_measured_rates():
    estimate = _estimate("llamacpp")
    measured = with_measured_speed(estimate, MeasuredSpeed(prefill_s_per_token=0.004, decode_s_per_token=0.01))
    assert measured.prefill_tokens_per_s == pytest.approx(250)
    assert measured.decode_step_s_batch_1 == measured.decode_step_s_full_batch == 0.01
    assert measured.capacity.tokens_per_s == pytest.approx(100)
    assert dataclasses.replace(measured, prefill_tokens_per_s=estimate.prefill_tokens_per_s, decode_step_s_batch_1=estimate.decode_step_s_batch_1,
                               decode_step_s_full_batch=estimate.decode_step_s_full_batch) == estimate  # nothing else moved
    assert with_measured_speed(estimate, MeasuredSpeed()) is estimate


def test_a_batching_engine_keeps_the_roofline():
    estimate = _estimate("simulated")
    assert estimate.max_num_seqs > 1
    assert with_measured_speed(estimate, MeasuredSpeed(0.004, 0.01)) is estimate
