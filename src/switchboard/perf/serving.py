"""From an engine profile to the fleet model's `ServingEstimate`: what the policies know about serving one expert on
one hardware kind. Shared by the live control plane (switchboard.runtime) and the simulator (switchboard.sim)."""

from __future__ import annotations

from switchboard.fleet.state import ServingEstimate
from switchboard.perf.roofline import EngineProfile
from switchboard.perf.sleep import wake_time_s
from switchboard.types import ExpertId, HardwareKind

TYPICAL_PROMPT_TOKENS = 1024
"""Prompt length behind `ServingEstimate.prefill_tokens_per_s` (the Azure conversation trace median is ~1k)."""


def serving_estimate(expert_id: str, profile: EngineProfile, max_num_seqs: int | None = None) -> ServingEstimate:
    """The fleet model's linear latency summary of an engine profile; its batch is the profile's, or `max_num_seqs`
    when the engine is configured to decode fewer together."""
    full = profile.max_batch_size if max_num_seqs is None else min(max_num_seqs, profile.max_batch_size)
    ctx = TYPICAL_PROMPT_TOKENS + 128
    return ServingEstimate(
        expert_id=ExpertId(expert_id),
        hardware=HardwareKind(profile.hardware.kind),
        memory_gb=profile.num_devices * profile.hardware.memory_bytes / 1e9,
        cold_start_s=profile.cold_start_s,
        prefill_tokens_per_s=TYPICAL_PROMPT_TOKENS / profile.prefill_time_s(TYPICAL_PROMPT_TOKENS),
        decode_step_s_batch_1=profile.decode_step_time_s(1, ctx),
        decode_step_s_full_batch=profile.decode_step_time_s(full, min(full * ctx, profile.kv_capacity_tokens)),
        max_num_seqs=full,
        kv_capacity_tokens=profile.kv_capacity_tokens,
        num_devices=profile.num_devices,
        # A CPU worker wakes by reloading from the page cache, which the live worker measures itself.
        wake_s=None if profile.hardware.kind == "cpu" else wake_time_s(profile),
    )
