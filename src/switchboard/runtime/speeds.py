"""Measured engine speeds: what the answers themselves say about how fast a replica prefills and decodes.

The roofline (`perf/roofline.py`) guesses an engine's speed from the hardware catalogue before anything ran; a
llama.cpp worker times every answer itself (`engines.base.Timing`, llama.cpp's `timings`). The live fleet
replaces the guess with these measurements, smoothed, for the engines whose speed does not depend on the batch
(one sequence at a time: the llama.cpp worker), so admission's predicted TTFT and its Retry-After are what this
machine does. Until 2026-12-07 they were the guess: for SmolLM2 on this CPU, 25 decoded tokens a second where
the worker makes ~100.
"""

from __future__ import annotations

import dataclasses

from switchboard.engines.base import Timing

MIN_PREFILLED_TOKENS = 16
"""A shorter prefill is mostly fixed cost (sampling, the HTTP round trip): not a rate."""
MIN_DECODED_TOKENS = 4
SMOOTHING = 0.2
"""Weight of each new measurement in the running mean of seconds per token (about the last ten answers)."""


@dataclasses.dataclass(frozen=True, slots=True)
class MeasuredSpeed:
    """Smoothed seconds per token, None until measured."""

    prefill_s_per_token: float | None = None
    decode_s_per_token: float | None = None
    num_answers: int = 0


def updated(speed: MeasuredSpeed, timing: Timing, smoothing: float = SMOOTHING) -> MeasuredSpeed:
    """`speed` after one more answer's `timing` (pure). Prefills under `MIN_PREFILLED_TOKENS` tokens (a prompt
    served from the KV cache) and decodes under `MIN_DECODED_TOKENS` leave their rate alone."""
    prefill, decode = speed.prefill_s_per_token, speed.decode_s_per_token
    if timing.num_prefilled >= MIN_PREFILLED_TOKENS and timing.prefill_s > 0:
        prefill = _smoothed(prefill, timing.prefill_s / timing.num_prefilled, smoothing)
    if timing.num_decoded >= MIN_DECODED_TOKENS and timing.decode_s > 0:
        decode = _smoothed(decode, timing.decode_s / timing.num_decoded, smoothing)
    return MeasuredSpeed(prefill, decode, speed.num_answers + 1)


def _smoothed(previous: float | None, sample: float, smoothing: float) -> float:
    return sample if previous is None else (1 - smoothing) * previous + smoothing * sample
