"""Log-probabilities of the tokens a llama.cpp worker samples, in OpenAI's chat and legacy completions shapes.

Computed from the logits of the one position being sampled (`llama_get_logits_ith(ctx, -1)`, which llama.cpp
always keeps), as the worker's generation loop yields each token — not from llama-cpp-python's `logits_all`
path, which keeps n_ctx × vocabulary floats for every request (about 200 MB for SmolLM2 at n_ctx 1024) and
runs the output layer over every prompt token. A logprob is the log-softmax of the model's raw logits, before
penalties, logit bias, grammar or temperature, as llama.cpp's own logprobs are.

The worker emits text in pieces that need not match tokens (llama-cpp-python holds back a possible stop
sequence or a partial UTF-8 character). `Aligner` hands out each token's logprobs with the piece of text that
completes it, by byte offsets, so the streamed chunks' logprobs concatenate to the answer's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

@dataclasses.dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One token: its bytes, its logprob, and the `num_top` most likely tokens at its position (most likely first)
    as (bytes, logprob). A prompt's first token has neither (`logprob` None: nothing comes before it)."""

    token_bytes: bytes
    logprob: float | None
    top: tuple[tuple[bytes, float], ...]


@dataclasses.dataclass(frozen=True, slots=True)
class AlignedToken:
    """A token as the answer holds it: `text_offset` is where it starts, in characters of the answer."""

    token: TokenLogprob
    text_offset: int


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """float32 log-softmax, the same arithmetic as `llama_cpp.Llama.logits_to_logprobs` (so the values match
    llama.cpp's own logprobs bit for bit on the same logits)."""
    import numpy as np  # here, not at import: the worker imports this module before it times its own imports

    peak = np.amax(logits)
    if not np.isfinite(peak):
        peak = 0
    shifted = np.subtract(logits, peak, dtype=np.single)
    with np.errstate(divide="ignore"):
        return shifted - np.log(np.sum(np.exp(shifted)))


_TOP_WINDOW_NATS = -12.0


def token_logprob(logits: np.ndarray, token: int, num_top: int, piece: Callable[[int], bytes]) -> TokenLogprob:
    """`token`'s logprob under `logits` (one row, the vocabulary's length) and the `num_top` most likely tokens;
    `piece(id)` is a token's bytes."""
    import numpy as np

    logprobs = log_softmax(logits)
    top: tuple[tuple[bytes, float], ...] = ()
    if num_top > 0:
        # The top few lie within a few nats of the peak: select among those (typically tens of tokens, a
        # fraction of a partition over the whole vocabulary); a flat distribution falls back to all of it.
        ids = np.flatnonzero(logprobs >= _TOP_WINDOW_NATS)
        if len(ids) < num_top:
            ids = np.argpartition(logprobs, -num_top)[-num_top:]
        elif len(ids) > num_top:
            ids = ids[np.argpartition(logprobs[ids], -num_top)[-num_top:]]
        # Most likely first; equal logprobs by token id, so the order is reproducible.
        ids = sorted(ids.tolist(), key=lambda i: (-float(logprobs[i]), i))
        top = tuple((piece(i), float(logprobs[i])) for i in ids)
    return TokenLogprob(piece(token), float(logprobs[token]), top)


class Aligner:
    """Pairs the text a generation emits with the tokens that made it. `tokens` is the list the generation
    appends to as it samples (read, never written, here)."""

    def __init__(self, tokens: Sequence[TokenLogprob], start_chars: int = 0) -> None:
        """`start_chars`: where the answer's text begins in the choice's text (after an echoed prompt)."""
        self.tokens = tokens
        self.emitted = bytearray()  # the answer so far, as bytes
        self.num_taken = 0
        self.token_end = 0  # byte offset where the next token to hand out starts
        self.token_end_chars = start_chars  # the same, in characters of the choice's text

    def take(self, text: str) -> list[AlignedToken]:
        """Notes that `text` was emitted; returns the tokens it completes (their bytes end within the answer)."""
        self.emitted += text.encode("utf-8")
        return self._take(lambda start, end: end <= len(self.emitted))

    def rest(self) -> list[AlignedToken]:
        """At the end of the answer: the tokens not handed out that still begin inside it (one cut by a stop
        sequence). Tokens after the answer's end — a stop sequence's, the end-of-generation one — are dropped,
        as OpenAI's answers hold no logprobs for them."""
        return self._take(lambda start, end: start < len(self.emitted))

    def _take(self, fits: Callable[[int, int], bool]) -> list[AlignedToken]:
        taken: list[AlignedToken] = []
        while self.num_taken < len(self.tokens):
            token = self.tokens[self.num_taken]
            start = self.token_end
            end = start + len(token.token_bytes)
            if not fits(start, end):
                break
            taken.append(AlignedToken(token, self.token_end_chars))
            self.num_taken += 1
            self.token_end = end
            self.token_end_chars += _num_chars(token.token_bytes)
        return taken


def prompt_aligned(tokens: Sequence[TokenLogprob]) -> list[AlignedToken]:
    """An echoed prompt's tokens with their offsets in the choice's text, which begins with the prompt."""
    out, offset = [], 0
    for token in tokens:
        out.append(AlignedToken(token, offset))
        offset += _num_chars(token.token_bytes)
    return out


def _num_chars(utf8: bytes) -> int:
    """Characters that start in `utf8`: every byte but UTF-8 continuation bytes (0b10xxxxxx)."""
    return sum(1 for b in utf8 if b & 0xC0 != 0x80)


def _text(token_bytes: bytes) -> str:
    # A token may hold part of a UTF-8 character: its text shows U+FFFD there, its `bytes` are exact.
    return token_bytes.decode("utf-8", errors="replace")


def chat_logprobs(tokens: Sequence[AlignedToken]) -> dict[str, Any]:
    """A chat choice's `logprobs`: `{"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}],
    "refusal": None}`."""
    return {"content": [{"token": _text(a.token.token_bytes), "logprob": a.token.logprob, "bytes": list(a.token.token_bytes),
                         "top_logprobs": [{"token": _text(b), "logprob": lp, "bytes": list(b)} for b, lp in a.token.top]}
                        for a in tokens],
            "refusal": None}


def completion_logprobs(tokens: Sequence[AlignedToken]) -> dict[str, Any]:
    """A legacy completion choice's `logprobs`: parallel lists of tokens, their logprobs, the top alternatives
    (a token → logprob map holding the sampled token too, as OpenAI's) and character offsets."""
    return {"tokens": [_text(a.token.token_bytes) for a in tokens],
            "token_logprobs": [a.token.logprob for a in tokens],
            "top_logprobs": [None if a.token.logprob is None else {**{_text(b): lp for b, lp in a.token.top}, _text(a.token.token_bytes): a.token.logprob}
                             for a in tokens],
            "text_offset": [a.text_offset for a in tokens]}


def num_top_asked(kind: str, body: dict[str, Any]) -> int | None:
    """How many alternatives per token the request asks for, or None when it asks for no logprobs: chat's
    `logprobs: true` with `top_logprobs` (default 0), the legacy completions' `logprobs: N`."""
    if kind == "chat":
        return int(body.get("top_logprobs") or 0) if body.get("logprobs") is True else None
    asked = body.get("logprobs")
    return None if asked is None or asked is False else int(asked)
