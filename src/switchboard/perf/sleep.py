"""How long an asleep replica takes to wake: its weights copied back from pinned host memory, then its decode
graph re-captured (vLLM's level-1 sleep mode; the sleep tier of issue 15).

Measured on one H200 for this project (/work/shared/data/perf/h200_mixed_steps_sleep.json, 2026-12-04): waking
16.06 GB of an 8B model's weights from pinned host memory took 0.31 s (51.7 GB/s end to end, allocation
included; 54.9 GB/s for the copy alone), and re-capturing the decode CUDA graph 0.087 s. From pageable memory
the same wake took 1.9 s; a reload from safetensors in the page cache ran at 4.5-6.6 GB/s.

Each device of a tensor-parallel replica copies its own shard over its own host link, in parallel. Only the
H200's (PCIe Gen5 x16) link was measured; the Gen4 x16 kinds (A100, L4, A10G) are taken at half its bandwidth,
the ratio of the two links' nominal rates — an assumption until measured. CPU "devices" wake by reloading
from the page cache, which the llama.cpp worker measures itself.
"""

from __future__ import annotations

from switchboard.perf.roofline import EngineProfile

MEASURED_WAKE_BYTES_PER_S = 51.7e9
"""H200, pinned host memory → device, end to end (allocation + copy), h200_mixed_steps_sleep.json."""

MEASURED_RECAPTURE_S = 0.087
"""Decode CUDA graph re-capture after wake (3 eager warm-up steps included), same file."""

PCIE_GEN4_FRACTION = 0.5

_GEN5_KINDS = {"h100", "h200"}


def wake_bytes_per_s(hardware_kind: str) -> float:
    """Host → device bandwidth of one device of `hardware_kind` for a wake (see the module docstring)."""
    return MEASURED_WAKE_BYTES_PER_S * (1.0 if hardware_kind in _GEN5_KINDS else PCIE_GEN4_FRACTION)


def wake_time_s(profile: EngineProfile) -> float:
    """Seconds from a wake call to a replica that can serve: each device's shard of the weights over its own
    link, then one graph re-capture. The process, its CUDA context and its allocator never went away."""
    shard_bytes = profile.weights_bytes / max(1, profile.num_devices)
    return shard_bytes / wake_bytes_per_s(profile.hardware.kind) + MEASURED_RECAPTURE_S
