"""The `openai` backend: any OpenAI-compatible upstream (vLLM, llama.cpp server, Ollama, TGI, a hosted API).

Plain http:// upstreams go through our own pooled HTTP/1.1 client (`engines/http1.py`): on the proxy path the
client's per-request CPU bounds the gateway's throughput, and it costs far less than aiohttp (numbers in that
module and in benchmarks/gateway_overhead.py). https:// upstreams (hosted APIs) keep a pooled aiohttp session,
since http1 speaks no TLS. Both sit behind one small interface and raise http1's errors, so the mapping to
EngineErrors below is the same for both. Streams are relayed chunk by chunk as they arrive; nothing is
buffered beyond one SSE line.
"""

from __future__ import annotations

import email.utils
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

import orjson

from switchboard.engines import http1
from switchboard.engines.base import (
    Completion,
    EngineBadResponse,
    EngineError,
    EngineRateLimited,
    EngineRejected,
    EngineTimeout,
    EngineUnavailable,
    Finish,
    GenerationRequest,
    RawChunk,
    StreamEvent,
    TextDelta,
    Timing,
    Usage,
)
from switchboard.types import FinishReason

_PATHS = {"chat": "/chat/completions", "completion": "/completions"}

DEFAULT_RATE_LIMIT_PAUSE_S = 1.0
"""How long nothing is sent to an upstream that answered 429 without saying for how long (no Retry-After)."""


class _UpstreamResponse(Protocol):
    status: int
    reason: str
    headers: list[tuple[bytes, bytes]]

    def header(self, name: bytes) -> str | None: ...

    @property
    def content_type(self) -> str: ...

    async def read(self) -> bytes: ...

    async def read_chunk(self) -> bytes: ...

    def release(self) -> None: ...


class _Upstream(Protocol):
    """POSTs a JSON body to the upstream's endpoint for `kind`. Raises http1.HTTPError subclasses only."""

    async def post(self, kind: str, body: bytes) -> _UpstreamResponse: ...

    async def close(self) -> None: ...


class OpenAIUpstreamEngine:
    """Talks to one OpenAI-compatible base URL. Safe for concurrent use from one event loop."""

    def __init__(
        self,
        expert_id: str,
        base_url: str,
        upstream_model: str,
        *,
        api_key: str | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 120.0,
        max_connections: int = 256,
        clock: Callable[[], float] = time.monotonic,
        passthrough: bool = True,
    ) -> None:
        self.expert_id = expert_id
        # Pass-through (every `openai` expert): the client's body goes up unchanged but for `model`, the
        # upstream's answer, chunks and headers come back unchanged but for `model`. Off only for engines that
        # wrap their own OpenAI-like server and want its stream as text events (the llama.cpp worker).
        self.passthrough = passthrough
        self._rewrites: dict[str, tuple[tuple[bytes, bytes], ...]] = {}
        self.base_url = base_url.rstrip("/")
        self.upstream_model = upstream_model
        self._headers = {"content-type": "application/json"}
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._max_connections = max_connections
        self._upstream: _Upstream | None = None
        self._clock = clock
        # Until when (clock time) the upstream asked not to be sent anything (its 429's Retry-After).
        self._rate_limited_until = 0.0

    @classmethod
    def from_config(cls, expert_id: str, backend: Any, environ: dict[str, str] | None = None) -> OpenAIUpstreamEngine:
        environ = os.environ if environ is None else environ
        api_key = environ.get(backend.api_key_env) if backend.api_key_env else None
        return cls(
            expert_id,
            backend.base_url,
            backend.model or expert_id,
            api_key=api_key,
            connect_timeout_s=backend.connect_timeout_s,
            read_timeout_s=backend.read_timeout_s,
            max_connections=backend.max_connections,
        )

    async def start(self) -> None:
        if self._upstream is None:
            if urlsplit(self.base_url).scheme == "http":
                self._upstream = _Http1Upstream(self.base_url, self._headers, self._max_connections,
                                                self._connect_timeout_s, self._read_timeout_s)
            else:
                self._upstream = _AiohttpUpstream(self.base_url, self._headers, self._max_connections,
                                                  self._connect_timeout_s, self._read_timeout_s)

    async def stop(self) -> None:
        if self._upstream is not None:
            upstream, self._upstream = self._upstream, None
            await upstream.close()

    def _payload(self, request: GenerationRequest, stream: bool) -> bytes:
        body = request.body.copy()
        body.pop("routing", None)  # the gateway's own field
        body["model"] = self.upstream_model
        if not self.passthrough:
            body["stream"] = stream
            if stream:
                body["stream_options"] = {"include_usage": True}
            else:
                body.pop("stream_options", None)
        elif stream:
            options = body.get("stream_options")
            if not (isinstance(options, dict) and options.get("include_usage")):
                # Metering needs the upstream's usage: asked for here, and kept from a client that did not ask
                # for it (`_relay`). The one field the client did not send.
                body["stream_options"] = {**options, "include_usage": True} if isinstance(options, dict) else {"include_usage": True}
        return orjson.dumps(body)

    async def _post(self, request: GenerationRequest, stream: bool) -> _UpstreamResponse:
        if self._upstream is None:
            await self.start()
        assert self._upstream is not None
        if self._rate_limited_until:
            wait_s = self._rate_limited_until - self._clock()
            if wait_s > 0:
                raise EngineRateLimited(self.expert_id, f"upstream is rate limiting (429); not asked again for {wait_s:.1f} s more (its Retry-After)",
                                        retry_after_s=wait_s)
            self._rate_limited_until = 0.0
        try:
            response = await self._upstream.post(request.kind, self._payload(request, stream))
        except http1.ConnectTimeout as exc:
            raise EngineTimeout(self.expert_id, f"no connection to {self.base_url} within the connect timeout") from exc
        except http1.ReadTimeout as exc:
            raise EngineTimeout(self.expert_id, f"{self.base_url} sent no answer (read timeout)") from exc
        except (http1.ConnectError, http1.ConnectionClosed) as exc:
            raise EngineUnavailable(self.expert_id, f"cannot connect to {self.base_url}: {exc.__cause__ or exc}") from exc
        except http1.HTTPError as exc:
            raise EngineBadResponse(self.expert_id, f"request to {self.base_url} failed: {exc}") from exc
        if response.status >= 400:
            try:
                raise await self._error_for(response)
            finally:
                response.release()
        return response

    async def _error_for(self, response: _UpstreamResponse) -> EngineError:
        try:
            raw = await response.read()
        except http1.HTTPError:
            raw = b""
        message = upstream_message(raw) or response.reason or "no message"
        status = response.status
        if status in (401, 403):
            return EngineBadResponse(self.expert_id, f"upstream refused our credentials ({status}): {message}")
        if status == 429:
            retry_after_s = _retry_after_s(response, time.time())
            pause_s = DEFAULT_RATE_LIMIT_PAUSE_S if retry_after_s is None else retry_after_s
            self._rate_limited_until = max(self._rate_limited_until, self._clock() + pause_s)
            return EngineRateLimited(self.expert_id, f"upstream is rate limiting (429): {message}", retry_after_s=retry_after_s)
        if 400 <= status < 500:
            return EngineRejected(self.expert_id, f"upstream rejected the request ({status}): {message}")
        if status in (502, 503):
            return EngineUnavailable(self.expert_id, f"upstream unavailable ({status}): {message}")
        if status == 504:
            return EngineTimeout(self.expert_id, f"upstream timed out (504): {message}")
        return EngineBadResponse(self.expert_id, f"upstream failed ({status}): {message}")

    async def complete(self, request: GenerationRequest) -> Completion:
        response = await self._post(request, stream=False)
        try:
            raw = await response.read()
        except http1.ReadTimeout as exc:
            raise EngineTimeout(self.expert_id, "upstream stopped sending its answer (read timeout)") from exc
        except http1.HTTPError as exc:
            raise EngineUnavailable(self.expert_id, f"upstream connection lost: {exc}") from exc
        finally:
            response.release()
        try:
            data = orjson.loads(raw)
            choice = data["choices"][0]
            text = _choice_text(choice, request.kind)
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
            raise EngineBadResponse(self.expert_id, f"upstream answer is not an OpenAI completion: {raw[:200]!r}") from exc
        usage = _usage(data.get("usage"), request, text, data.get("timings"))
        finish = Finish(_finish_reason(choice.get("finish_reason")), usage)
        if not self.passthrough:
            return Completion(text, finish, raw_choice=choice)
        for old, new in self._model_rewrites(data.get("model")):
            raw = raw.replace(old, new, 1)
        return Completion(text, finish, raw_body=raw, raw_headers=_client_headers(response.headers))

    def _model_rewrites(self, upstream_model: Any) -> tuple[tuple[bytes, bytes], ...]:
        """Byte replacements that turn the upstream's `"model": ...` into this expert's id (both JSON spacings;
        none when they are equal). The value is the one the upstream answered with, which may name a dated
        snapshot of the model asked for."""
        if not isinstance(upstream_model, str) or upstream_model == self.expert_id:
            return ()
        rewrites = self._rewrites.get(upstream_model)
        if rewrites is None:
            old, new = orjson.dumps(upstream_model), orjson.dumps(self.expert_id)
            rewrites = ((b'"model":' + old, b'"model":' + new), (b'"model": ' + old, b'"model": ' + new))
            if len(self._rewrites) < 64:
                self._rewrites[upstream_model] = rewrites
        return rewrites

    async def _next_chunk(self, response: _UpstreamResponse) -> bytes:
        try:
            return await response.read_chunk()
        except http1.ReadTimeout as exc:
            raise EngineTimeout(self.expert_id, "upstream stream stalled (read timeout)") from exc
        except http1.HTTPError as exc:
            raise EngineUnavailable(self.expert_id, f"upstream stream broke: {exc}") from exc

    def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        # The relay is itself the stream (no generator wrapping another: each layer costs per event).
        return self._relay(request) if self.passthrough else self._parsed_stream(request)

    async def _open_stream(self, request: GenerationRequest) -> _UpstreamResponse:
        response = await self._post(request, stream=True)
        if not response.content_type.startswith("text/event-stream"):
            try:
                raw = await _first_bytes(response, 200)
            except http1.HTTPError:
                raw = b""
            finally:
                response.release()
            raise EngineBadResponse(
                self.expert_id, f"upstream answer is not an OpenAI event stream ({response.content_type}): {raw!r}"
            )
        return response

    async def _parsed_stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        """The upstream's stream as TextDelta events (engines that present their own server's stream as text)."""
        response = await self._open_stream(request)
        finish_reason: str | None = None
        usage_raw: dict[str, Any] | None = None
        timings_raw: Any = None  # llama.cpp's, beside its usage
        num_deltas = 0
        is_done = False
        rest = b""  # an SSE line not yet ended by its newline
        try:
            while not is_done:
                chunk = await self._next_chunk(response)
                if chunk:
                    lines = (rest + chunk if rest else chunk).split(b"\n")
                    rest = lines.pop()
                elif rest:
                    lines, rest = [rest], b""
                else:
                    raise EngineBadResponse(self.expert_id, "upstream stream ended without [DONE]")
                for line in lines:
                    if not line.startswith(b"data:"):
                        continue  # blank separators, comments, event names
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        is_done = True
                        break
                    try:
                        chunk_obj = orjson.loads(payload)
                    except orjson.JSONDecodeError as exc:
                        raise EngineBadResponse(self.expert_id, f"upstream sent a malformed chunk: {payload[:200]!r}") from exc
                    if not isinstance(chunk_obj, dict):
                        raise EngineBadResponse(self.expert_id, f"upstream sent a malformed chunk: {payload[:200]!r}")
                    if "error" in chunk_obj:
                        raise EngineBadResponse(self.expert_id, f"upstream error mid-stream: {upstream_message(payload)}")
                    if chunk_obj.get("usage"):
                        usage_raw = chunk_obj["usage"]
                        timings_raw = chunk_obj.get("timings")
                    for choice in chunk_obj.get("choices") or ():
                        if choice.get("finish_reason"):
                            finish_reason = choice["finish_reason"]
                        if request.kind == "chat":
                            delta = choice.get("delta") or {}
                            text = delta.get("content") or ""
                            logprobs = choice.get("logprobs")
                            if text or logprobs or len(delta) > (1 if "role" in delta else 0):
                                num_deltas += 1
                                yield TextDelta(text, raw_delta=delta, logprobs=logprobs)
                        else:
                            text = choice.get("text") or ""
                            logprobs = choice.get("logprobs")
                            if text or logprobs:
                                num_deltas += 1
                                yield TextDelta(text, logprobs=logprobs)
        finally:
            response.release()
        if usage_raw is None:
            usage = Usage(request.num_prompt_tokens_estimate, num_deltas)
        else:
            usage = _usage(usage_raw, request, "", timings_raw)
        yield Finish(_finish_reason(finish_reason), usage)


    async def _relay(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        """The upstream's event stream as RawChunks of whole lines, then a relayed Finish.

        Per chunk this only searches bytes (C speed): a line is parsed only when it may hold an error, a
        finish reason or usage, which happens about once a stream. `model` is rewritten by byte replacement.
        A usage chunk the client did not ask for (`_payload` asked for it) is dropped, as are the `"usage":
        null` fields asking for it adds to every chunk.
        """
        response = await self._open_stream(request)
        headers = _client_headers(response.headers)
        options = request.body.get("stream_options")
        drop_usage = not (isinstance(options, dict) and options.get("include_usage"))
        rewrites: tuple[tuple[bytes, bytes], ...] | None = None
        finish_reason: str | None = None
        usage_raw: dict[str, Any] | None = None
        num_chunks = 0
        rest = b""  # an SSE line not yet ended by its newline
        try:
            while True:
                chunk = await self._next_chunk(response)
                if not chunk:
                    if not rest.strip().endswith(b"[DONE]"):
                        raise EngineBadResponse(self.expert_id, "upstream stream ended without [DONE]")
                    chunk, rest = rest + b"\n\n", b""  # a last line the upstream did not end: ended here
                elif rest:
                    chunk = rest + chunk
                cut = chunk.rfind(b"\n") + 1
                if cut < len(chunk):
                    chunk, rest = chunk[:cut], chunk[cut:]
                    if not chunk:
                        continue
                else:
                    rest = b""
                if rewrites is None:
                    rewrites = self._model_rewrites(_first_model(chunk))
                if b'"finish_reason":"' in chunk or b'"finish_reason": "' in chunk or b'"usage":{' in chunk or b'"usage": {' in chunk or b'{"error"' in chunk:
                    chunk, reason, usage = self._look(chunk, drop_usage)
                    finish_reason = reason or finish_reason
                    usage_raw = usage or usage_raw
                if drop_usage:
                    chunk = chunk.replace(b',"usage":null', b"").replace(b', "usage": null', b"")
                for old, new in rewrites:
                    chunk = chunk.replace(old, new)
                is_done = b"data: [DONE]" in chunk or b"data:[DONE]" in chunk
                num_chunks += 1
                if chunk.strip():
                    yield RawChunk(chunk, headers)
                    headers = ()
                if is_done:
                    break
        finally:
            response.release()
        # Metering only (the client got the upstream's own bytes): the upstream's usage, else an estimate.
        usage = _usage(usage_raw, request, "") if usage_raw is not None else Usage(request.num_prompt_tokens_estimate, num_chunks)
        yield Finish(_finish_reason(finish_reason), usage, is_relayed=True)

    def _look(self, chunk: bytes, drop_usage: bool) -> tuple[bytes, str | None, dict[str, Any] | None]:
        """Parses the lines of `chunk` that may hold an error, a finish reason or usage (found by byte search,
        not by walking every line). Returns the chunk (less a usage-only line when `drop_usage`), the last
        finish reason and the usage seen. Raises EngineBadResponse for an upstream error event or a malformed
        line."""
        lines: set[tuple[int, int]] = set()
        for marker in _LOOK_MARKERS:
            at = chunk.find(marker)
            while at >= 0:
                start = chunk.rfind(b"\n", 0, at) + 1
                end = chunk.find(b"\n", at)
                end = len(chunk) if end < 0 else end
                lines.add((start, end))
                at = chunk.find(marker, end)
        finish_reason = None
        usage = None
        cuts: list[tuple[int, int]] = []
        for start, end in sorted(lines):
            line = chunk[start:end]
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            try:
                obj = orjson.loads(payload)
            except orjson.JSONDecodeError as exc:
                raise EngineBadResponse(self.expert_id, f"upstream sent a malformed chunk: {payload[:200]!r}") from exc
            if not isinstance(obj, dict):
                raise EngineBadResponse(self.expert_id, f"upstream sent a malformed chunk: {payload[:200]!r}")
            if "error" in obj:
                raise EngineBadResponse(self.expert_id, f"upstream error mid-stream: {upstream_message(payload)}")
            for choice in obj.get("choices") or ():
                if isinstance(choice, dict) and choice.get("finish_reason"):
                    finish_reason = choice["finish_reason"]
            if isinstance(obj.get("usage"), dict):
                usage = obj["usage"]
                if drop_usage and not obj.get("choices"):
                    cuts.append((start, min(end + 1, len(chunk))))
        for start, end in reversed(cuts):
            chunk = chunk[:start] + chunk[end:]
        return chunk, finish_reason, usage


_LOOK_MARKERS = (b'"finish_reason":"', b'"finish_reason": "', b'"usage":{', b'"usage": {', b'{"error"')
"""What makes a relayed line worth parsing: a finish reason, usage, an error event."""

_NOT_FOR_THE_CLIENT = frozenset({
    b"content-length", b"transfer-encoding", b"connection", b"keep-alive", b"date", b"server", b"content-type",
    b"content-encoding", b"cache-control", b"set-cookie",
})


def _client_headers(headers: list[tuple[bytes, bytes]]) -> tuple[tuple[bytes, bytes], ...]:
    """The upstream's response headers that are the client's to see (its rate-limit and processing headers,
    ...): not framing or hop-by-hop ones, not cookies, not another gateway's `x-switchboard-*`. Its
    `x-request-id` comes back as `x-switchboard-upstream-request-id` (ours is the request log's key)."""
    return tuple((_RENAMED.get(name, name), value) for name, value in ((n.lower(), v) for n, v in headers)
                 if name not in _NOT_FOR_THE_CLIENT and not name.startswith(b"x-switchboard-"))


_RENAMED = {b"x-request-id": b"x-switchboard-upstream-request-id"}


def _first_model(chunk: bytes) -> Any:
    """The `model` of the first data line in `chunk` (None if there is none to read)."""
    start = chunk.find(b"data:")
    if start < 0:
        return None
    end = chunk.find(b"\n", start)
    try:
        obj = orjson.loads(chunk[start + 5:end if end >= 0 else None].strip())
    except orjson.JSONDecodeError:
        return None
    return obj.get("model") if isinstance(obj, dict) else None


class _Http1Upstream:
    """Plain http: http1's pool, with each endpoint's request head built once."""

    def __init__(self, base_url: str, headers: dict[str, str], max_connections: int,
                 connect_timeout_s: float, read_timeout_s: float) -> None:
        url = urlsplit(base_url)
        self._pool = http1.ConnectionPool(
            url.hostname or "localhost", url.port or 80, max_connections=max_connections,
            connect_timeout_s=connect_timeout_s, read_timeout_s=read_timeout_s,
        )
        self._heads = {kind: self._pool.request_head("POST", url.path + path, headers) for kind, path in _PATHS.items()}

    async def post(self, kind: str, body: bytes) -> http1.Response:
        return await self._pool.request(self._heads[kind], body)

    async def close(self) -> None:
        await self._pool.close()


class _AiohttpUpstream:
    """https (hosted APIs): a pooled aiohttp session, its errors translated to http1's."""

    def __init__(self, base_url: str, headers: dict[str, str], max_connections: int,
                 connect_timeout_s: float, read_timeout_s: float) -> None:
        import aiohttp  # only https upstreams pay for importing it

        self._aiohttp = aiohttp
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s)
        connector = aiohttp.TCPConnector(limit=max_connections, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers)
        self._urls = {kind: base_url + path for kind, path in _PATHS.items()}

    async def post(self, kind: str, body: bytes) -> _AiohttpResponse:
        aiohttp = self._aiohttp
        try:
            return _AiohttpResponse(await self._session.post(self._urls[kind], data=body), aiohttp)
        except aiohttp.ConnectionTimeoutError as exc:
            raise http1.ConnectTimeout(str(exc) or "connect timeout") from exc
        except TimeoutError as exc:
            raise http1.ReadTimeout("no response within the read timeout") from exc
        except aiohttp.ClientConnectionError as exc:
            raise http1.ConnectError(str(exc)) from exc
        except aiohttp.ClientError as exc:
            raise http1.ProtocolError(str(exc)) from exc

    async def close(self) -> None:
        await self._session.close()


class _AiohttpResponse:
    def __init__(self, response: Any, aiohttp: Any) -> None:
        self._response = response
        self._errors = (aiohttp.ClientError, TimeoutError)
        self.status: int = response.status
        self.reason: str = response.reason or ""
        self.headers: list[tuple[bytes, bytes]] = list(response.raw_headers)

    def header(self, name: bytes) -> str | None:
        return self._response.headers.get(name.decode("latin-1"))

    @property
    def content_type(self) -> str:
        return self._response.content_type

    async def read(self) -> bytes:
        return await self._translated(self._response.read())

    async def read_chunk(self) -> bytes:
        return await self._translated(self._response.content.readany())

    def release(self) -> None:
        self._response.release()

    async def _translated(self, awaitable: Any) -> bytes:
        try:
            return await awaitable
        except TimeoutError as exc:
            raise http1.ReadTimeout("no response bytes within the read timeout") from exc
        except self._errors as exc:
            raise http1.ConnectionClosed(str(exc)) from exc


async def _first_bytes(response: _UpstreamResponse, limit: int) -> bytes:
    data = b""
    while len(data) < limit and (chunk := await response.read_chunk()):
        data += chunk
    return data[:limit]


def _choice_text(choice: dict[str, Any], kind: str) -> str:
    if kind == "chat":
        return choice["message"].get("content") or ""
    return choice["text"]


_FINISH_REASONS = {reason.value: reason for reason in FinishReason}


def _finish_reason(raw: Any) -> FinishReason:
    """The engine's own finish reason (stop, length, tool_calls, content_filter, function_call); stop for
    none or one we do not know."""
    return _FINISH_REASONS.get(raw, FinishReason.STOP) if isinstance(raw, str) else FinishReason.STOP


def _usage(raw: Any, request: GenerationRequest, text: str, timings: Any = None) -> Usage:
    if isinstance(raw, dict) and isinstance(raw.get("prompt_tokens"), int):
        details = raw.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
        return Usage(raw["prompt_tokens"], int(raw.get("completion_tokens") or 0),
                     cached if isinstance(cached, int) and cached >= 0 else None,
                     Timing.parse(timings) if timings is not None else None, raw)
    # Upstreams that report no usage still get an honest estimate rather than zeros.
    return Usage(request.num_prompt_tokens_estimate, max(1, len(text) // 4) if text else 0)


def _retry_after_s(response: _UpstreamResponse, now_epoch_s: float) -> float | None:
    """The upstream's wait, in seconds, from `retry-after-ms` (OpenAI's) or `Retry-After` (seconds or an
    HTTP date); None when it sent neither or nothing readable."""
    millis = response.header(b"retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = response.header(b"retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - now_epoch_s)
    except (TypeError, ValueError, IndexError):
        return None


def upstream_message(raw: bytes, *, bare_json_chars: int = 200) -> str:
    """The message in an upstream's error body: `error.message` of a JSON object (or the `error` value, or the
    object), at most 500 characters; a JSON body that is not an object, at most `bare_json_chars`; a body that is
    not JSON, its first 200 bytes as text."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw[:200].decode("utf-8", "replace").strip()
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            return str(err.get("message") or err)[:500]
        return str(err)[:500]
    return str(data)[:bare_json_chars]
