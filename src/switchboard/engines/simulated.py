"""The `simulated` backend: a timing model of a GPU engine, answering with clearly marked placeholder text.

Timing comes from the roofline model in `switchboard.perf.roofline` for the expert's size on the configured
hardware kind: one prefill of the prompt, then one decode iteration per output token whose duration depends on
how many sequences are being decoded together (continuous batching, up to `max_concurrency`; more wait).
The text is always `[simulated <expert>: N tokens]` so it can never be mistaken for a real answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from switchboard.engines.base import Completion, Finish, GenerationRequest, StreamEvent, TextDelta, Usage, collect
from switchboard.types import FinishReason


def placeholder_text(expert_id: str, num_tokens: int) -> str:
    return f"[simulated {expert_id}: {num_tokens} tokens]"


def split_into(text: str, num_parts: int) -> list[str]:
    """Splits text into `num_parts` consecutive slices (some empty when there are more parts than characters)."""
    size, extra = divmod(len(text), num_parts)
    parts, start = [], 0
    for i in range(num_parts):
        end = start + size + (1 if i < extra else 0)
        parts.append(text[start:end])
        start = end
    return parts


class SimulatedEngine:
    """One simulated replica. Concurrency beyond `max_concurrency` (default: the roofline's batch size, as in the
    simulator) waits for a free batch slot."""

    def __init__(
        self,
        expert_id: str,
        *,
        params_b: float,
        hardware: str,
        time_scale: float = 1.0,
        default_output_tokens: int = 64,
        max_concurrency: int | None = None,
    ) -> None:
        from switchboard.perf.roofline import engine_profile

        self.expert_id = expert_id
        self.profile = engine_profile(params_b, hardware)
        self.time_scale = time_scale
        self.default_output_tokens = default_output_tokens
        self.max_concurrency = max_concurrency or self.profile.max_batch_size
        self._slots = asyncio.Semaphore(self.max_concurrency)
        self._num_active = 0
        self._context_tokens_active = 0
        # Whole devices of a worker that declares them, given by the live fleet as to a real GPU server: a modelled
        # replica holds the devices its size needs, so placement books them as it would for the real engine.
        self.devices: tuple[int, ...] = ()

    @classmethod
    def from_config(cls, expert_id: str, params_b: float, backend: Any) -> "SimulatedEngine":
        return cls(
            expert_id,
            params_b=params_b,
            hardware=backend.hardware,
            time_scale=backend.time_scale,
            default_output_tokens=backend.default_output_tokens,
            max_concurrency=backend.max_concurrency,
        )

    async def start(self) -> None:
        """Waits out the modelled cold start (weights load + process start), scaled by `time_scale`."""
        if self.time_scale > 0:
            await asyncio.sleep(self.profile.cold_start_s * self.time_scale)

    async def stop(self) -> None:
        return None

    def _num_output_tokens(self, request: GenerationRequest) -> tuple[int, FinishReason]:
        asked = request.body.get("max_completion_tokens") or request.body.get("max_tokens")
        if asked:
            return int(asked), FinishReason.LENGTH
        return min(self.default_output_tokens, request.max_tokens), FinishReason.STOP

    async def complete(self, request: GenerationRequest) -> Completion:
        return await collect(self.stream(request))

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        num_tokens, reason = self._num_output_tokens(request)
        num_prompt = request.num_prompt_tokens_estimate
        pieces = split_into(placeholder_text(self.expert_id, num_tokens), num_tokens)
        async with self._slots:
            self._num_active += 1
            self._context_tokens_active += num_prompt
            num_generated = 0
            try:
                if self.time_scale > 0:
                    await asyncio.sleep(self.profile.prefill_time_s(num_prompt) * self.time_scale)
                for piece in pieces:
                    if self.time_scale > 0:
                        step_s = self.profile.decode_step_time_s(self._num_active, self._context_tokens_active)
                        await asyncio.sleep(step_s * self.time_scale)
                    self._context_tokens_active += 1
                    num_generated += 1
                    yield TextDelta(piece)
            finally:
                self._num_active -= 1
                self._context_tokens_active -= num_prompt + num_generated
        yield Finish(reason, Usage(num_prompt, num_tokens))
