"""The internal engine interface every backend speaks (openai upstream, llama.cpp process, simulated).

A request goes in as a `GenerationRequest`; an answer comes back either whole (`Completion`) or as an async
stream of `TextDelta` events closed by exactly one `Finish`. Failures are raised as `EngineError`s that name
the expert and say which side failed, so the gateway can answer with the right status.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any, Literal, Protocol, runtime_checkable

from switchboard.types import FinishReason

RequestKind = Literal["chat", "completion"]


@dataclasses.dataclass(frozen=True, slots=True)
class GenerationRequest:
    """A validated request, ready for any engine.

    `body` is the client's OpenAI request body after validation and defaulting (model, messages or prompt,
    max_tokens, sampling fields, ...); pass-through engines forward it with `model` replaced, other engines
    read the fields they understand.
    """

    request_id: str
    kind: RequestKind
    body: dict[str, Any]
    max_tokens: int
    num_prompt_tokens_estimate: int

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.body.get("messages") or []

    @property
    def prompt(self) -> str:
        prompt = self.body.get("prompt", "")
        return prompt if isinstance(prompt, str) else "".join(prompt)


@dataclasses.dataclass(frozen=True, slots=True)
class Timing:
    """An engine's own timing of one answer (llama.cpp's `timings`): `num_prefilled` prompt tokens evaluated
    in `prefill_s` (until the first token was sampled), then `num_decoded` more tokens in `decode_s`."""

    num_prefilled: int
    prefill_s: float
    num_decoded: int
    decode_s: float

    @classmethod
    def parse(cls, raw: Any) -> "Timing | None":
        """From llama.cpp's `timings` object (its server's, and the Switchboard worker's); None if absent or
        malformed."""
        try:
            timing = cls(int(raw["prompt_n"]), float(raw["prompt_ms"]) / 1000, int(raw["predicted_n"]), float(raw["predicted_ms"]) / 1000)
        except (TypeError, KeyError, ValueError):
            return None
        is_sane = min(timing.num_prefilled, timing.num_decoded) >= 0 and min(timing.prefill_s, timing.decode_s) >= 0
        return timing if is_sane else None


@dataclasses.dataclass(frozen=True, slots=True)
class Usage:
    """Tokens of one answer. `cached_prompt_tokens` is how many prompt tokens the engine reused from its KV
    cache (prefix caching) instead of computing; None when the engine does not say. `timing`: the engine's own
    timing of it, when it reports one (the llama.cpp worker does; the control plane measures speeds by it).
    `reported`: an upstream's own usage object, as it sent it (its token details), when it sent one."""

    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int | None = None
    timing: Timing | None = dataclasses.field(default=None, compare=False)
    reported: dict[str, Any] | None = dataclasses.field(default=None, compare=False)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, Any]:
        """OpenAI's `usage` object: an upstream's own as it sent it, else built (`prompt_tokens_details.cached_tokens`
        only when the engine said)."""
        if self.reported is not None:
            return dict(self.reported)
        usage: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }
        if self.cached_prompt_tokens is not None:
            usage["prompt_tokens_details"] = {"cached_tokens": self.cached_prompt_tokens}
        return usage


@dataclasses.dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the answer. `raw_delta` is an upstream's own choice delta (tool calls, ...), passed through
    unchanged by the gateway when present; `logprobs` is the choice's `logprobs` for this piece, in OpenAI's
    shape for the request's kind (chat's `{"content": [...]}`, the legacy completions' parallel lists)."""

    text: str
    raw_delta: dict[str, Any] | None = None
    index: int = 0  # the choice it belongs to (n > 1)
    logprobs: dict[str, Any] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class RawChunk:
    """Bytes of an upstream's event stream already in the client's wire format (whole SSE lines, `model`
    rewritten), relayed verbatim by the gateway: pass-through engines parse nothing per chunk. The first
    RawChunk of a stream carries the upstream's response headers that are the client's to see."""

    data: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Finish:
    """The end of an answer. `is_relayed` means its closing bytes (finish chunk, usage chunk, `[DONE]`) already
    went to the client in RawChunks; `usage` is then what the upstream reported (for metering and logs)."""

    reason: FinishReason
    usage: Usage
    is_relayed: bool = False
    index: int = 0  # the choice it ends; with n > 1 only the last choice's Finish ends the stream


StreamEvent = TextDelta | RawChunk | Finish


@dataclasses.dataclass(frozen=True, slots=True)
class Completion:
    """A whole answer. `raw_choice` is an upstream's own first choice when present: a chat one (tool calls,
    logprobs, ...) is passed through by the gateway, of a legacy completion it takes the `logprobs`. `raw_body`,
    when set, is the upstream's whole answer with only `model` rewritten, sent to the client byte for byte with
    `raw_headers` (pass-through engines)."""

    text: str
    finish: Finish
    raw_choice: dict[str, Any] | None = None
    raw_body: bytes | None = None
    raw_headers: tuple[tuple[bytes, bytes], ...] = ()
    more_choices: tuple[Completion, ...] = ()  # choices 1..n-1 when n > 1 (`finish.usage` covers them all)


class EngineError(Exception):
    """A failure to answer. `status` is the HTTP status the gateway should answer with.

    4xx statuses mean the upstream rejected the request itself (e.g. a prompt over its context window) and are
    relayed to the client; 5xx statuses mean the expert failed.
    """

    status: int = 502
    code: str = "upstream_error"

    def __init__(self, expert_id: str, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(f"expert '{expert_id}': {message}")
        self.expert_id = expert_id
        self.detail = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code


class EngineUnavailable(EngineError):
    """The engine cannot be reached or is not running (connection refused, process gone)."""

    status = 503
    code = "expert_unavailable"


class ReplicaLost(EngineUnavailable):
    """The replica itself is gone (its process, actor or node died). A request that got no answer from it yet
    may be retried on another replica."""

    code = "replica_lost"


class EngineTimeout(EngineError):
    status = 504
    code = "expert_timeout"


class EngineBadResponse(EngineError):
    """The upstream answered, but not with something we can parse or trust."""

    status = 502
    code = "bad_upstream_response"


class EngineRateLimited(EngineError):
    """The upstream is rate limiting us (its 429). Not the expert's failure: it trips no circuit breaker and
    moves the request to the next expert of the ranking (gateway/failover.py). `retry_after_s` is the
    upstream's `Retry-After` (None when it gave none); the engine sends it nothing until that has passed."""

    status = 429
    code = "upstream_rate_limited"

    def __init__(self, expert_id: str, message: str, *, retry_after_s: float | None = None, status: int | None = None,
                 code: str | None = None) -> None:
        super().__init__(expert_id, message, status=status, code=code)
        self.retry_after_s = retry_after_s


class EngineRejected(EngineError):
    """The upstream refused the request itself (its 4xx), relayed to the client."""

    status = 400
    code = "upstream_rejected_request"


@runtime_checkable
class Engine(Protocol):
    """What a replica's engine does. Implementations must be safe to call concurrently from one event loop."""

    async def start(self) -> None:
        """Brings the engine up (spawn a process, open a pool). Returns when it can serve. Idempotent."""

    async def stop(self) -> None:
        """Releases everything start() acquired. Idempotent; in-flight calls fail with EngineUnavailable."""

    async def complete(self, request: GenerationRequest) -> Completion:
        """The whole answer. Raises EngineError."""

    def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        """TextDelta events then exactly one Finish. Raises EngineError, possibly after some deltas."""


async def collect(events: AsyncIterator[StreamEvent]) -> Completion:
    """Drains a stream into a Completion (for engines whose whole answer is their stream)."""
    parts: list[str] = []
    async for event in events:
        if isinstance(event, TextDelta):
            parts.append(event.text)
        elif isinstance(event, Finish):
            return Completion("".join(parts), event)
    raise RuntimeError("engine stream ended without a Finish event")
