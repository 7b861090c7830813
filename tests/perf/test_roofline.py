"""The roofline contract: monotone in work, in model size and in hardware; fits; prices; calibration."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switchboard.perf import Hardware, calibrate_hardware, engine_profile, get_hardware, hardware_catalog
from switchboard.perf.calibration import Measurement

GPU_KINDS = ["l4", "a10g", "a100-80gb", "h100", "h200"]


def test_catalog_has_exactly_the_documented_kinds():
    assert set(hardware_catalog()) == {"cpu", "l4", "a10g", "a100-80gb", "h100", "h200"}
    for kind, hw in hardware_catalog().items():
        assert hw.kind == kind
        assert hw.peak_flops > 0 and hw.mem_bandwidth_bytes_per_s > 0 and hw.memory_bytes > 0
        assert hw.usd_per_hour > 0


def test_unknown_kind_names_the_known_ones():
    with pytest.raises(KeyError) as info:
        get_hardware("tpu-v5")
    assert "h100" in str(info.value) and "cpu" in str(info.value)
    with pytest.raises(KeyError):
        engine_profile(7, "tpu-v5")


def test_invalid_hardware_is_rejected():
    with pytest.raises(ValueError, match="compute_efficiency"):
        Hardware(kind="x", peak_flops=1, mem_bandwidth_bytes_per_s=1, memory_bytes=1, usd_per_hour=0,
                 compute_efficiency=1.5)


@settings(deadline=None)  # no timing assertions: a loaded CI machine must not fail these
@given(kind=st.sampled_from(GPU_KINDS), params_b=st.sampled_from([1.0, 7.0, 8.0, 13.0]),
       n=st.integers(0, 8000), extra=st.integers(1, 8000))
def test_more_prompt_tokens_never_faster(kind, params_b, n, extra):
    p = engine_profile(params_b, kind)
    assert p.prefill_time_s(n + extra) >= p.prefill_time_s(n)


@settings(deadline=None)  # no timing assertions: a loaded CI machine must not fail these
@given(kind=st.sampled_from(GPU_KINDS), b=st.integers(1, 256), db=st.integers(0, 64),
       ctx=st.integers(0, 100_000), dctx=st.integers(0, 100_000))
def test_bigger_batch_or_context_never_faster_step(kind, b, db, ctx, dctx):
    p = engine_profile(8, kind)
    assert p.decode_step_time_s(b + db, ctx + dctx) >= p.decode_step_time_s(b, ctx)


@pytest.mark.parametrize("kind", GPU_KINDS)
def test_bigger_model_never_faster_on_same_hardware(kind):
    sizes = [0.5, 1, 3, 7, 8]
    profiles = [engine_profile(s, kind, num_devices=1) for s in sizes]
    for small, big in zip(profiles, profiles[1:]):
        assert big.prefill_time_s(512) >= small.prefill_time_s(512)
        assert big.decode_step_time_s(8, 8 * 1024) >= small.decode_step_time_s(8, 8 * 1024)
        assert big.cold_start_s >= small.cold_start_s


def test_h100_faster_than_l4_and_a100_between():
    l4, a100, h100 = (engine_profile(8, k) for k in ("l4", "a100-80gb", "h100"))
    for f in (lambda p: p.prefill_time_s(2048), lambda p: p.decode_step_time_s(16, 16 * 1000)):
        assert f(h100) < f(a100) < f(l4)


def test_decode_is_memory_bound_at_batch_one_and_compute_bound_at_large_prefill():
    p = engine_profile(8, "h100")
    # Batch-1 decode of an 8B BF16 model on H100: ~16 GB / (3.35 TB/s * 0.8) ~ 6 ms + 3 ms overhead.
    assert 0.006 < p.decode_step_time_s(1, 0) < 0.012
    # 8k-token prefill: 2 * 8e9 * 8192 / (989e12 * 0.5) ~ 0.265 s.
    assert 0.2 < p.prefill_time_s(8192) < 0.35


def test_tensor_parallel_degree_and_price():
    assert engine_profile(8, "h100").num_devices == 1
    p70 = engine_profile(70, "h100")
    assert p70.num_devices in (2, 4)
    assert p70.usd_per_hour == pytest.approx(p70.num_devices * get_hardware("h100").usd_per_hour)
    assert engine_profile(70, "h200").num_devices <= p70.num_devices
    with pytest.raises(ValueError, match="does not fit"):
        engine_profile(405, "l4")
    with pytest.raises(ValueError, match="does not fit"):
        engine_profile(70, "cpu")


def test_kv_capacity_comes_from_memory_left_after_weights():
    small, big = engine_profile(7, "a100-80gb"), engine_profile(13, "a100-80gb")
    assert small.kv_capacity_tokens > big.kv_capacity_tokens > 0
    assert engine_profile(8, "h200").kv_capacity_tokens > engine_profile(8, "h100").kv_capacity_tokens
    assert 1 <= small.max_batch_size <= 256


def test_cold_start_is_fixed_start_plus_weight_load():
    p = engine_profile(8, "a10g")
    hw = p.hardware
    assert p.cold_start_s == pytest.approx(hw.process_start_s + 16e9 / hw.load_bandwidth_bytes_per_s)


def test_cpu_placeholder_matches_reported_smollm2_decode_rate():
    p = engine_profile(0.135, "cpu", bytes_per_param=0.625)
    assert 55 < p.decode_tokens_per_s(1) < 75
    assert p.max_batch_size == 1


def test_calibration_reproduces_the_measurement():
    m = Measurement(params_b=0.135, bytes_per_param=0.625, decode_tokens_per_s=80.0, prefill_tokens_per_s=900.0,
                    prefill_num_tokens=256, cold_start_s=1.2)
    hw = calibrate_hardware("cpu", m)
    p = engine_profile(0.135, hw, bytes_per_param=0.625)
    assert p.decode_tokens_per_s(1) == pytest.approx(80.0, rel=1e-6)
    assert 256 / p.prefill_time_s(256) == pytest.approx(900.0, rel=1e-6)
    assert p.cold_start_s == pytest.approx(1.2)
    # A bigger model on the calibrated worker is slower, as it should be.
    assert engine_profile(1.7, hw, bytes_per_param=0.625).decode_tokens_per_s(1) < 80.0


@settings(deadline=None)  # no timing assertions: a loaded CI machine must not fail these
@given(decode=st.floats(1, 2000), prefill=st.floats(10, 1e5))
def test_calibration_always_reproduces_decode(decode, prefill):
    """Decode is matched exactly even when the measurements are inconsistent (decode faster than prefill)."""
    hw = calibrate_hardware("cpu", Measurement(0.135, 0.625, decode, prefill))
    p = engine_profile(0.135, hw, bytes_per_param=0.625)
    assert p.decode_tokens_per_s(1) == pytest.approx(decode, rel=1e-6)


@settings(deadline=None)  # no timing assertions: a loaded CI machine must not fail these
@given(kind=st.sampled_from(GPU_KINDS + ["cpu"]), b=st.integers(1, 300), ctx=st.integers(0, 200_000),
       n=st.integers(0, 400))
def test_decode_steps_time_equals_the_sum_of_steps(kind, b, ctx, n):
    p = engine_profile(0.135 if kind == "cpu" else 8, kind)
    looped = sum(p.decode_step_time_s(b, ctx + i * b) for i in range(n))
    assert p.decode_steps_time_s(b, ctx, n) == pytest.approx(looped, rel=1e-9, abs=1e-12)
