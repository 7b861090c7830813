"""A lean pooled HTTP/1.1 client for the gateway's upstream calls (plain http only).

Why hand-written: on the proxy path the gateway's per-request CPU is its throughput limit on a 2-core machine,
and a profile at concurrency 64 put aiohttp's client (request objects, payloads, connector, response parsing)
at ~35% of the gateway's CPU per request, the largest single item. httpx was measured too and is far slower
(~66 rps at c=64 vs aiohttp ~2,400 in benchmarks/gateway_overhead.py's client comparison). This client does
only what the proxy needs: a request head built once per endpoint, one `transport.write` per request,
httptools' C parser for the response, one future per wait.

Measured 2026-11-22 on the shared 2-core machine (load average 6-9, so absolute numbers are low; compare
within a run):
- benchmarks/gateway_overhead.py client comparison, same mock upstream, one process: at c=64 this client
  4,800-6,400 rps vs aiohttp 1,600-1,900 vs httpx 32-40; at c=1 p50 0.24-0.29 ms vs 0.42-0.47 ms vs 1.5-5.7 ms;
- the gateway process's CPU per proxied request (psutil, before/after alternated against one upstream):
  non-streaming c=64 ~720 -> ~460 us, streaming 16 chunks c=64 ~2,200 -> ~1,500 us; added p50 at c=1
  1.0-1.1 ms -> 0.46-0.51 ms and c=64 throughput 460-515 -> 730-1,070 rps in the same benchmark.

https is not handled here: `OpenAIUpstreamEngine` keeps aiohttp for https:// base URLs (hosted APIs).

Contract:
- one `ConnectionPool` per (host, port) (an OpenAIUpstreamEngine owns one for its base URL); at most
  `max_connections` sockets open (connecting or connected); further requests wait in FIFO order for a
  connection to come back or a slot to free;
- keep-alive: a connection is reused only if its response was read completely and the server allowed it;
  a response released before it was fully read closes its connection; connections idle for longer than
  `idle_timeout_s` are closed rather than reused;
- a reused connection that the server closed while it sat idle (before any response byte arrived) is retried
  once, transparently, on a fresh connection (as aiohttp does); nothing is ever retried once response bytes
  have arrived;
- `connect_timeout_s` bounds opening a connection; `read_timeout_s` bounds each wait for response bytes
  (inactivity, not the whole response);
- bodies: Content-Length, chunked, or until the server closes; `Response.iter_chunks()` and `read_chunk()`
  give the bytes as they arrive, `Response.read()` the whole body;
- failures raise `HTTPError` subclasses: `ConnectError`, `ConnectTimeout`, `ReadTimeout`, `ConnectionClosed`,
  `ProtocolError`.
"""

from __future__ import annotations

import asyncio
import collections

import httptools

_PAUSE_AT_BYTES = 256 * 1024  # unread body buffered per connection before we stop reading the socket


class HTTPError(Exception):
    """Base of every failure this client raises."""


class ConnectError(HTTPError):
    """No connection could be opened (refused, unreachable, name not resolved) or the pool is closed."""


class ConnectTimeout(HTTPError):
    """No connection within the connect timeout."""


class ReadTimeout(HTTPError):
    """The server sent nothing for `read_timeout_s` while we waited for its response."""


class ConnectionClosed(HTTPError):
    """The server closed the connection before the response was complete."""


class ProtocolError(HTTPError):
    """The server's bytes are not a valid HTTP/1.1 response."""


class _StaleConnection(ConnectionClosed):
    """Closed before any response byte arrived: safe to retry on a fresh connection if the socket was reused."""


class Response:
    """One response. Release it (`release()`) when done; reading it to the end lets its connection be reused."""

    __slots__ = (
        "_chunks",
        "_conn",
        "_error",
        "_is_complete",
        "_is_head_done",
        "_is_keep_alive",
        "_is_released",
        "_num_buffered",
        "_num_received",
        "headers",
        "reason",
        "status",
    )

    def __init__(self, conn: _Connection) -> None:
        self.status = 0
        self.reason = ""
        self.headers: list[tuple[bytes, bytes]] = []
        self._conn = conn
        self._chunks: list[bytes] = []
        self._num_buffered = 0
        self._num_received = 0
        self._is_head_done = False
        self._is_complete = False
        self._is_keep_alive = False
        self._error: HTTPError | None = None
        self._is_released = False

    def header(self, name: bytes) -> str | None:
        """The first value of header `name` (lower-case bytes), or None."""
        for key, value in self.headers:
            if key.lower() == name:
                return value.decode("latin-1")
        return None

    @property
    def content_type(self) -> str:
        return (self.header(b"content-type") or "").lower()

    async def read(self) -> bytes:
        """The whole body. Raises ReadTimeout, ConnectionClosed or ProtocolError."""
        if self._is_complete:
            return self._take()
        parts: list[bytes] = []
        while chunk := await self.read_chunk():
            parts.append(chunk)
        return b"".join(parts)

    async def read_chunk(self) -> bytes:
        """The body bytes buffered now, waiting for some if there are none; b"" once the body is complete.

        Raises as `read()`.
        """
        while True:
            if self._chunks:
                return self._take()
            if self._is_complete:
                return b""
            if self._error is not None:
                raise self._error
            await self._conn.wait()

    def iter_chunks(self) -> Response:
        """Body bytes as they arrive (`async for chunk in response.iter_chunks()`). Raises as `read()`."""
        return self

    def __aiter__(self) -> Response:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self.read_chunk()
        if not chunk:
            raise StopAsyncIteration
        return chunk

    def release(self) -> None:
        """Returns the connection to its pool if the response was read to the end, else closes it. Idempotent."""
        if self._is_released:
            return
        self._is_released = True
        conn = self._conn
        if self._is_complete and self._is_keep_alive and not self._chunks and conn.is_usable:
            conn.response = None
            conn.pool._put_back(conn)
        else:
            conn.close()

    def _take(self) -> bytes:
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._num_buffered = 0
        self._conn.resume_reading()
        return data


class _Connection(asyncio.Protocol):
    """One socket: the transport, httptools' parser (also its callback target) and the response in flight."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.response: Response | None = None
        self.is_closed = False
        self.idle_since = 0.0
        self._loop = pool._loop
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[None] | None = None
        self._wait_since = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._is_paused = False

    @property
    def is_usable(self) -> bool:
        return not self.is_closed and self.transport is not None and not self.transport.is_closing()

    # -- asyncio.Protocol --------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None or response._is_complete:
            self._fail(ProtocolError(f"unexpected {len(data)} bytes from the server outside a response"))
            return
        response._num_received += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ProtocolError(f"malformed response from the server: {exc}"))

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.is_closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        response = self.response
        if response is not None and not response._is_complete and response._error is None:
            if response._is_head_done and _is_close_delimited(response):
                response._is_complete = True
            elif response._num_received == 0:
                response._error = _StaleConnection(f"the server closed the connection before answering ({exc or 'EOF'})")
            else:
                response._error = ConnectionClosed(f"the server closed the connection mid-response ({exc or 'EOF'})")
        self._wake()
        self.pool._on_closed(self)

    # -- httptools callbacks ---------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.response._is_complete:  # type: ignore[union-attr]
            raise ProtocolError("a second response to one request")  # stops the parser; data_received closes

    def on_status(self, reason: bytes) -> None:
        self.response.reason += reason.decode("latin-1")  # type: ignore[union-attr]

    def on_header(self, name: bytes, value: bytes) -> None:
        self.response.headers.append((name, value))  # type: ignore[union-attr]

    def on_headers_complete(self) -> None:
        response = self.response
        response.status = self._parser.get_status_code()  # type: ignore[union-attr]
        response._is_head_done = True  # type: ignore[union-attr]
        self._wake()

    def on_body(self, body: bytes) -> None:
        response = self.response
        response._chunks.append(body)  # type: ignore[union-attr]
        response._num_buffered += len(body)  # type: ignore[union-attr]
        if response._num_buffered > _PAUSE_AT_BYTES and not self._is_paused:  # type: ignore[union-attr]
            self._is_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]
        self._wake()

    def on_message_complete(self) -> None:
        response = self.response
        response._is_complete = True  # type: ignore[union-attr]
        response._is_keep_alive = self._parser.should_keep_alive()  # type: ignore[union-attr]
        self._wake()

    # -- used by Response and ConnectionPool ---------------------------------------------------------------

    async def exchange(self, data: bytes) -> Response:
        """Sends one request and waits for the response head."""
        if not self.is_usable:
            raise _StaleConnection("the connection closed while idle")
        response = self.response = Response(self)
        self.transport.write(data)  # type: ignore[union-attr]
        while not response._is_head_done:
            if response._error is not None:
                raise response._error
            await self.wait()
        return response

    async def wait(self) -> None:
        """Waits for the parser to make progress, at most `read_timeout_s`.

        One timer per connection rather than one per wait: it is re-armed only when it fires while a wait is
        still young (under uvloop a timer costs more than the rest of a wait, and a stream waits a few times).
        """
        loop = self._loop
        waiter = self._waiter = loop.create_future()
        self._wait_since = loop.time()
        if self._timer is None:
            self._timer = loop.call_at(self._wait_since + self.pool.read_timeout_s, self._on_timer)
        try:
            await waiter
        finally:
            self._waiter = None

    def _on_timer(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done() or self.is_closed:
            return  # idle or done: the next wait arms a new timer
        expires_at = self._wait_since + self.pool.read_timeout_s
        now = self._loop.time()
        if now >= expires_at:
            _expire(waiter)
        else:
            self._timer = self._loop.call_at(max(expires_at, now + 0.001), self._on_timer)

    def resume_reading(self) -> None:
        if self._is_paused and not self.is_closed:
            self._is_paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None and not self.is_closed:
            self.transport.abort()

    def _fail(self, error: HTTPError) -> None:
        response = self.response
        if response is not None and not response._is_complete and response._error is None:
            response._error = error
        self._wake()
        self.close()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(ReadTimeout("no response bytes within the read timeout"))


def _is_close_delimited(response: Response) -> bool:
    """A body that ends when the server closes: no Content-Length, not chunked (RFC 9112 §6.3)."""
    return response.header(b"content-length") is None and response.header(b"transfer-encoding") is None


class ConnectionPool:
    """Keep-alive connections to one (host, port). Use from one event loop; create it inside that loop."""

    def __init__(self, host: str, port: int, *, max_connections: int = 256, connect_timeout_s: float = 5.0,
                 read_timeout_s: float = 120.0, idle_timeout_s: float = 15.0) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        self.host, self.port = host, port
        self.max_connections = max_connections
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.num_open = 0  # connecting + connected, never above max_connections
        self._loop = asyncio.get_running_loop()
        self._idle: list[_Connection] = []  # LIFO: the warmest connection first
        self._all: set[_Connection] = set()
        self._waiters: collections.deque[asyncio.Future[_Connection | None]] = collections.deque()
        self._is_closed = False
        self._all_closed: asyncio.Future[None] | None = None  # set by close() while it waits for the sockets

    def request_head(self, method: str, path: str, headers: dict[str, str]) -> bytes:
        """A request head up to (not including) its Content-Length value, for `request()`. Build it once."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        lines = [f"{method} {path} HTTP/1.1", f"host: {host}:{self.port}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        return ("\r\n".join(lines) + "\r\ncontent-length: ").encode("latin-1")

    async def request(self, head: bytes, body: bytes) -> Response:
        """Sends `head` (from `request_head`) and `body`; returns once the response head has arrived.

        Raises ConnectError, ConnectTimeout, ReadTimeout, ConnectionClosed or ProtocolError.
        """
        data = b"%s%d\r\n\r\n%s" % (head, len(body), body)
        conn, is_reused = await self._acquire(fresh=False)
        try:
            return await conn.exchange(data)
        except _StaleConnection:
            conn.close()
            if not is_reused:
                raise
        except BaseException:
            conn.close()
            raise
        conn, _ = await self._acquire(fresh=True)
        try:
            return await conn.exchange(data)
        except BaseException:
            conn.close()
            raise

    async def close(self) -> None:
        """Closes every connection and returns once their sockets are closed. In-flight responses fail with
        ConnectionClosed; waiting and later requests with ConnectError."""
        self._is_closed = True
        self._idle.clear()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectError("the connection pool is closed"))
        if self._all:
            self._all_closed = self._loop.create_future()
            for conn in list(self._all):
                conn.abort()
            await self._all_closed

    async def _acquire(self, *, fresh: bool) -> tuple[_Connection, bool]:
        while True:
            if self._is_closed:
                raise ConnectError("the connection pool is closed")
            if not fresh:
                conn = self._pop_idle()
                if conn is not None:
                    return conn, True
            if self.num_open < self.max_connections:
                return await self._connect(), False
            waiter = self._loop.create_future()
            self._waiters.append(waiter)
            try:
                conn = await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    handed = waiter.result()
                    if handed is not None:
                        self._put_back(handed)
                    else:
                        self._wake_one()
                else:
                    self._waiters.remove(waiter)
                raise
            if conn is not None:
                return conn, True

    def _pop_idle(self) -> _Connection | None:
        now = self._loop.time()
        while self._idle:
            conn = self._idle.pop()
            if conn.is_usable and now - conn.idle_since < self.idle_timeout_s:
                return conn
            conn.close()
        return None

    async def _connect(self) -> _Connection:
        self.num_open += 1
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await self._loop.create_connection(lambda: _Connection(self), self.host, self.port)
        except TimeoutError as exc:  # before OSError: TimeoutError is one
            self._slot_freed()
            raise ConnectTimeout(f"no connection to {self.host}:{self.port} within {self.connect_timeout_s:g} s") from exc
        except OSError as exc:
            self._slot_freed()
            raise ConnectError(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        except BaseException:
            self._slot_freed()
            raise
        self._all.add(conn)
        if self._is_closed:
            conn.close()
            raise ConnectError("the connection pool is closed")
        return conn

    def _put_back(self, conn: _Connection) -> None:
        if self._is_closed:
            conn.close()
            return
        conn.resume_reading()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        conn.idle_since = self._loop.time()
        self._idle.append(conn)

    def _on_closed(self, conn: _Connection) -> None:
        if conn in self._all:
            self._all.discard(conn)
            if conn in self._idle:
                self._idle.remove(conn)
            self._slot_freed()
            if not self._all and self._all_closed is not None and not self._all_closed.done():
                self._all_closed.set_result(None)

    def _slot_freed(self) -> None:
        self.num_open -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
