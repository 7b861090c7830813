"""What the live control plane assumes about an expert (runtime/estimates.py): a llama.cpp one's weights are the GGUF's
bytes, so the roofline's decode and memory follow the file that is served, quantised or not; a simulated one's
batch is its engine's."""

from __future__ import annotations

from switchboard.config import parse_config
from switchboard.engines.llamacpp.paths import default_model_path
from switchboard.perf.hardware import GB
from switchboard.perf.roofline import engine_profile
from switchboard.runtime.estimates import live_workers, serving_estimates


def _estimate(model_path: str | None, params_b: float = 0.135):
    path = f", model_path: {model_path}" if model_path else ""
    config = parse_config(f"experts:\n  - id: smol\n    params_b: {params_b}\n    backend: {{kind: llamacpp, hardware: cpu{path}}}\n")
    (estimate,) = serving_estimates(config.experts[0], live_workers(config))
    return estimate


def test_the_default_experts_weights_are_its_quantised_files_bytes():
    size = default_model_path().stat().st_size  # SmolLM2-135M Q4_1: ~98 MB, 0.73 bytes a parameter
    estimate = _estimate(None)
    expected = engine_profile(0.135, "cpu", bytes_per_param=size / 0.135e9)
    assert abs(estimate.decode_step_s_batch_1 - expected.decode_step_time_s(1, 1024 + 128)) < 1e-12
    fp16 = engine_profile(0.135, "cpu")  # what it assumed before: 2 bytes a parameter, decode ~2x slower
    assert estimate.decode_step_s_batch_1 < 0.6 * fp16.decode_step_time_s(1, 1024 + 128)
    assert estimate.memory_gb < (0.135e9 * 2 + estimate.kv_capacity_tokens * fp16.kv_bytes_per_token) / GB + 0.3


def test_the_size_comes_from_the_configured_file_whatever_params_b_says(tmp_path):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"\0" * 3_000_000)
    for params_b in (7.0, 0.001):
        estimate = _estimate(str(gguf), params_b=params_b)
        kv_gb = estimate.kv_capacity_tokens * engine_profile(params_b, "cpu").kv_bytes_per_token / GB  # its context's KV
        assert abs(estimate.memory_gb - kv_gb - 0.3 - 3_000_000 / GB) < 1e-9


def test_a_missing_file_keeps_the_fp16_guess():
    missing = _estimate("/nonexistent/model.gguf")
    assert missing.decode_step_s_batch_1 == engine_profile(0.135, "cpu").decode_step_time_s(1, 1024 + 128)


def test_a_simulated_expert_decodes_at_most_its_max_concurrency_together():
    # The engine holds sequences past `max_concurrency` for a slot, so the control plane's batch is no larger; by
    # default both are the roofline's (the simulator's) batch.
    from switchboard.engines.simulated import SimulatedEngine

    def estimate(extra: str):
        config = parse_config(f"experts:\n  - id: sim\n    params_b: 7\n    backend: {{kind: simulated{extra}}}\n")
        (one,) = serving_estimates(config.experts[0], live_workers(config))
        return one

    roofline = estimate("")
    assert roofline.max_num_seqs == engine_profile(7, "a10g").max_batch_size > 2
    assert estimate(", max_concurrency: 2").max_num_seqs == 2
    assert estimate(", max_concurrency: 100000").max_num_seqs == roofline.max_num_seqs
    assert estimate(", max_concurrency: 2").decode_step_s_full_batch < roofline.decode_step_s_full_batch
    assert SimulatedEngine("sim", params_b=7, hardware="a10g").max_concurrency == roofline.max_num_seqs
