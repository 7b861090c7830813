"""A scripted, recording OpenAI-compatible upstream (embeddings and conformance tests): it keeps every request exactly as received and
answers with what the test queued (status, headers, a JSON body or a list of SSE chunks), so a test can
check field by field that what a client sent reached the upstream and what the upstream sent reached the
client. With nothing queued it answers embeddings with small deterministic vectors and chat with a short
text, each carrying an extra field no gateway knows (`x_upstream`), to catch a gateway that drops fields.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import struct
import time
from typing import Any

import orjson

UNKNOWN_RESPONSE_FIELD = {"x_upstream": {"served_by": "recording-upstream"}}


@dataclasses.dataclass(frozen=True, slots=True)
class Recorded:
    path: str
    headers: dict[str, str]
    body: Any  # the parsed JSON body (None if it was not JSON)
    raw: bytes
    received_at: float  # time.monotonic()
    answer: "Canned"  # what the upstream answered it


@dataclasses.dataclass(frozen=True, slots=True)
class Canned:
    """One answer: `json` (a whole body) or `sse` (chunks, each a dict sent as `data: {...}`, then [DONE])."""

    status: int = 200
    json: Any = None
    sse: list[Any] | None = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


async def _body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


class RecordingUpstream:
    """The ASGI app. `queue(path_suffix, canned)` sets the next answer for paths ending in `path_suffix`
    (`/embeddings`, `/chat/completions`, `/completions`); `requests` lists what arrived, oldest first."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self._queued: dict[str, collections.deque[Canned]] = collections.defaultdict(collections.deque)

    def queue(self, path_suffix: str, canned: Canned) -> None:
        self._queued[path_suffix].append(canned)

    def clear(self) -> None:
        self.requests.clear()
        self._queued.clear()

    @property
    def last(self) -> Recorded:
        return self.requests[-1]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].rsplit(".", 1)[-1]
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        raw = await _body(receive)
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        path = scope["path"]
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        suffix = next((s for s in sorted(self._queued, key=len, reverse=True) if path.endswith(s) and self._queued[s]), None)
        canned = self._queued[suffix].popleft() if suffix is not None else self._default(path, body)
        self.requests.append(Recorded(path, headers, body, raw, time.monotonic(), canned))
        extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in canned.headers.items()]
        if canned.sse is not None:
            await send({"type": "http.response.start", "status": canned.status, "headers": [(b"content-type", b"text/event-stream"), *extra]})
            payload = b"".join(b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in canned.sse) + b"data: [DONE]\n\n"
            await send({"type": "http.response.body", "body": payload})
            return
        await send({"type": "http.response.start", "status": canned.status, "headers": [(b"content-type", b"application/json"), *extra]})
        await send({"type": "http.response.body", "body": orjson.dumps(canned.json)})

    @staticmethod
    def _default(path: str, body: Any) -> Canned:
        body = body if isinstance(body, dict) else {}
        model = body.get("model", "upstream-model")
        if path.endswith("/embeddings"):
            inputs = body.get("input")
            items = [inputs] if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and isinstance(inputs[0], int)) else inputs or []
            vectors = [[float(i), 0.5, -0.25] for i in range(len(items))]
            if body.get("encoding_format") == "base64":  # float32 little-endian bytes, as OpenAI sends them
                vectors = [base64.b64encode(struct.pack("<3f", *v)).decode("ascii") for v in vectors]  # type: ignore[misc]
            data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
            return Canned(json={"object": "list", "data": data, "model": model,
                                "usage": {"prompt_tokens": 3 * len(items), "total_tokens": 3 * len(items)}, **UNKNOWN_RESPONSE_FIELD})
        choice = {"index": 0, "message": {"role": "assistant", "content": "recorded", "refusal": None}, "logprobs": None, "finish_reason": "stop"}
        return Canned(json={"id": "chatcmpl-rec", "object": "chat.completion", "created": 1, "model": model, "choices": [choice],
                            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}, **UNKNOWN_RESPONSE_FIELD})
