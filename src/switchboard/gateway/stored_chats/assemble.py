"""A streamed chat completion (its SSE bytes: the gateway's own chunks or an upstream's, relayed) → the whole
chat completion object it adds up to, as OpenAI stores a streamed answer.

Choices are kept by their `index` (n > 1 streams interleave them); a choice's text, refusal, logprobs and tool
calls (each call by its own `index`: id, name, then arguments piece by piece) are joined in order.
"""

from __future__ import annotations

from typing import Any

import orjson

from switchboard.gateway.responses_api.events import sse_events


class ChatAssembler:
    """Feed it the stream's bytes (`feed`); `completion()` is the whole object once it ended well (`is_complete`).

    `usage` may be set from outside (the gateway knows the answer's usage even when the client did not ask for it
    in the stream); a usage chunk in the stream, which may say more (an upstream's token details), wins over it.
    """

    def __init__(self) -> None:
        self.pending = bytearray()
        self.head: dict[str, Any] = {}
        self.choices: dict[int, dict[str, Any]] = {}
        self.calls: dict[tuple[int, int], dict[str, Any]] = {}  # (choice index, call index) → the call
        self.usage: dict[str, Any] | None = None
        self.streamed_usage: dict[str, Any] | None = None
        self.is_done = False
        self.failed = False

    def feed(self, data: bytes) -> list[dict[str, Any] | bytes | None]:
        """Takes the next bytes of the stream; returns the chunks of the events they completed, in order (None for
        `[DONE]`; an event that is no JSON object, as its bytes: passed on as it came, and nothing is kept). A
        partial event waits for the bytes that complete it."""
        chunks: list[dict[str, Any] | bytes | None] = []
        for payload in sse_events(data, self.pending):
            if payload == b"[DONE]":
                self.is_done = True
                chunks.append(None)
                continue
            try:
                chunk = orjson.loads(payload)
            except orjson.JSONDecodeError:
                chunk = None
            if not isinstance(chunk, dict):  # an upstream's malformed event: the client judges it; nothing to keep
                self.failed = True
                chunks.append(payload)
                continue
            chunks.append(chunk)
            if "error" in chunk:  # the stream failed mid-way: nothing whole to keep
                self.failed = True
                continue
            self._chunk(chunk)
        return chunks

    @property
    def is_complete(self) -> bool:
        """The stream ended with [DONE], every choice finished, and nothing failed."""
        return self.is_done and not self.failed and bool(self.choices) and all(c["finish_reason"] is not None for c in self.choices.values())

    def _chunk(self, chunk: dict[str, Any]) -> None:
        if not self.head:
            self.head = {k: chunk.get(k) for k in ("id", "created", "model", "system_fingerprint")}
            if chunk.get("service_tier") is not None:
                self.head["service_tier"] = chunk["service_tier"]
        if chunk.get("usage"):
            self.streamed_usage = chunk["usage"]
        for piece in chunk.get("choices") or ():
            index = piece.get("index", 0)
            choice = self.choices.setdefault(index, {"index": index, "message": {"role": "assistant", "content": None, "refusal": None},
                                                     "logprobs": None, "finish_reason": None})
            message = choice["message"]
            delta = piece.get("delta") or {}
            for field in ("content", "refusal"):
                if delta.get(field):
                    message[field] = (message[field] or "") + delta[field]
            for call in delta.get("tool_calls") or ():
                self._call(index, message, call)
            if piece.get("logprobs"):
                logprobs = choice["logprobs"] = choice["logprobs"] or {"content": None, "refusal": None}
                for field in ("content", "refusal"):
                    if piece["logprobs"].get(field):
                        logprobs[field] = (logprobs[field] or []) + piece["logprobs"][field]
            if piece.get("finish_reason"):
                choice["finish_reason"] = piece["finish_reason"]

    def _call(self, choice_index: int, message: dict[str, Any], delta: dict[str, Any]) -> None:
        key = (choice_index, delta.get("index", 0))
        call = self.calls.get(key)
        if call is None:
            call = self.calls[key] = {"id": delta.get("id"), "type": delta.get("type") or "function", "function": {"name": "", "arguments": ""}}
            message.setdefault("tool_calls", []).append(call)
        if delta.get("id") and not call["id"]:
            call["id"] = delta["id"]
        function = delta.get("function") or {}
        name = function.get("name")
        if name and name != call["function"]["name"]:  # OpenAI sends it once; some servers repeat it whole in every piece
            call["function"]["name"] += name
        if function.get("arguments"):
            call["function"]["arguments"] += function["arguments"]

    def completion(self) -> dict[str, Any]:
        """The chat completion object the stream adds up to."""
        return {"id": self.head.get("id"), "object": "chat.completion", "created": self.head.get("created"), "model": self.head.get("model"),
                "choices": [self.choices[i] for i in sorted(self.choices)], "usage": self.streamed_usage or self.usage,
                "system_fingerprint": self.head.get("system_fingerprint"),
                **({"service_tier": self.head["service_tier"]} if "service_tier" in self.head else {})}
