"""What every embedding engine speaks: a validated request in, an OpenAI embeddings answer out.

Inputs arrive normalised to a list (`texts` for strings, `token_ids` for pre-tokenised input, as the
OpenAI API allows). Engines raise `switchboard.engines.base.EngineError`s, as generation engines do, so the
gateway maps failures to statuses the same way.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

from switchboard.engines.base import EngineError


@dataclasses.dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    """One `/v1/embeddings` call. `body` is the client's body as sent (after validation); exactly one of
    `texts` and `token_ids` is set."""

    request_id: str
    body: dict[str, Any]
    texts: list[str] | None
    token_ids: list[list[int]] | None

    @property
    def num_inputs(self) -> int:
        return len(self.texts if self.texts is not None else self.token_ids or ())


@dataclasses.dataclass(frozen=True, slots=True)
class EmbeddingAnswer:
    """OpenAI's response object (`object: list`, `data`, `usage`; `model` is set by the gateway) and the
    input tokens the engine counted."""

    body: dict[str, Any]
    num_prompt_tokens: int


class UpstreamRateLimited(EngineError):
    """The upstream answered 429: not the expert's failure. Relayed as a 429 with the upstream's Retry-After."""

    status = 429
    code = "upstream_rate_limited"

    def __init__(self, expert_id: str, message: str, retry_after_s: float | None) -> None:
        super().__init__(expert_id, message)
        self.retry_after_s = retry_after_s


class EmbeddingEngine(Protocol):
    """One embedding expert. Safe to call concurrently from one event loop."""

    async def start(self) -> None:
        """Gets ready to serve (loads a model, opens a pool). Idempotent."""

    async def stop(self) -> None:
        """Releases what start() took. Idempotent."""

    def count_tokens(self, request: EmbeddingRequest) -> int:
        """The request's input tokens as this expert counts them (exact for local models, an estimate for an
        upstream whose tokenizer is unknown). Raises EngineError (a 4xx) for input the expert cannot take."""

    async def embed(self, request: EmbeddingRequest) -> EmbeddingAnswer:
        """The vectors. Raises EngineError."""
