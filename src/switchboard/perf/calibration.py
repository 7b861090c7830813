"""Fit a catalog entry's efficiency factors to measurements of a real engine (the local llama.cpp worker).

Given measured batch-1 decode tokens/s (and optionally prefill tokens/s and a cold-start time) of one model,
`calibrate_hardware` returns a copy of the hardware whose roofline reproduces those numbers exactly for that
model (see `switchboard.perf.roofline` for the formulas), so every other model size on the same worker is
extrapolated from measured efficiencies rather than guessed ones.
"""

from __future__ import annotations

import dataclasses

from switchboard.perf.hardware import Hardware, get_hardware


@dataclasses.dataclass(frozen=True, slots=True)
class Measurement:
    """What was measured on the real engine for one model (all optional but decode)."""

    params_b: float
    bytes_per_param: float
    decode_tokens_per_s: float
    """Batch-1 decode rate at a short context."""
    prefill_tokens_per_s: float | None = None
    prefill_num_tokens: int = 256
    """Prompt length at which prefill_tokens_per_s was measured."""
    cold_start_s: float | None = None
    """Process spawn + model load until ready (the first token's own time excluded)."""
    step_overhead_s: float | None = None
    """Per-iteration fixed cost, if known; otherwise the hardware's current value is kept."""


def calibrate_hardware(hardware: Hardware | str, measurement: Measurement) -> Hardware:
    """A copy of `hardware` whose roofline reproduces `measurement` for its model.

    Fitting order: prefill fixes the achieved FLOP/s (compute_efficiency), decode then fixes the achieved bandwidth
    (bandwidth_efficiency), cold start fixes process_start_s. When a measured rate exceeds the catalog peak
    (quantised int8 dot products can beat the FP32 peak the CPU entry quotes), the peak is raised to the measured
    rate and the efficiency set to 1 rather than failing. If batch-1 decode is compute-bound at the fitted
    FLOP/s, the step overhead is lowered so the total still matches. Decode is always reproduced exactly;
    prefill too unless the measurements contradict each other (a decoded token faster than a prefilled one).

    Raises ValueError for non-positive rates.
    """
    hw = get_hardware(hardware) if isinstance(hardware, str) else hardware
    m = measurement
    if m.decode_tokens_per_s <= 0 or (m.prefill_tokens_per_s is not None and m.prefill_tokens_per_s <= 0):
        raise ValueError("measured tokens/s must be > 0")
    flops_per_token = 2.0 * m.params_b * 1e9
    weights_bytes = m.params_b * 1e9 * m.bytes_per_param
    overhead_s = hw.step_overhead_s if m.step_overhead_s is None else m.step_overhead_s
    changes: dict[str, float] = {}

    achieved_flops = hw.peak_flops * hw.compute_efficiency
    if m.prefill_tokens_per_s is not None:
        prefill_s = m.prefill_num_tokens / m.prefill_tokens_per_s
        compute_s = max(prefill_s - overhead_s, prefill_s * 0.5)
        achieved_flops = flops_per_token * m.prefill_num_tokens / compute_s
        changes.update(_split(achieved_flops, hw.peak_flops, "peak_flops", "compute_efficiency"))

    step_s = 1.0 / m.decode_tokens_per_s
    if flops_per_token / achieved_flops > step_s:
        # Inconsistent: one decoded token was faster than one prefilled token. Decode wins (it dominates
        # end-to-end time); prefill is then modelled faster than measured.
        achieved_flops = flops_per_token / step_s
        changes.update(_split(achieved_flops, hw.peak_flops, "peak_flops", "compute_efficiency"))
    compute_step_s = flops_per_token / achieved_flops
    memory_step_s = step_s - overhead_s
    if memory_step_s <= compute_step_s:
        # Decode is compute-bound here: the overhead is what is left after compute; memory must not dominate.
        overhead_s = max(0.0, step_s - compute_step_s)
        memory_step_s = max(compute_step_s, 1e-9)
    changes.update(_split(weights_bytes / memory_step_s, hw.mem_bandwidth_bytes_per_s, "mem_bandwidth_bytes_per_s",
                          "bandwidth_efficiency"))
    changes["step_overhead_s"] = overhead_s
    # The KV cache keeps its rate relative to the weights' (equal on the CPU worker).
    kv_ratio = hw.kv_bandwidth_efficiency / hw.bandwidth_efficiency
    new_bandwidth_efficiency = changes.get("bandwidth_efficiency", hw.bandwidth_efficiency)
    changes["kv_bandwidth_efficiency"] = min(1.0, kv_ratio * new_bandwidth_efficiency)

    if m.cold_start_s is not None:
        changes["process_start_s"] = max(0.0, m.cold_start_s - weights_bytes / hw.load_bandwidth_bytes_per_s)
    return dataclasses.replace(hw, **changes)


def _split(achieved: float, peak: float, peak_field: str, efficiency_field: str) -> dict[str, float]:
    if achieved <= peak:
        return {efficiency_field: achieved / peak}
    return {peak_field: achieved, efficiency_field: 1.0}
