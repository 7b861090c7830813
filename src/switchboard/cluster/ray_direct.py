"""A direct connection from a gateway to a replica actor for the request path (docs/ray.md, "Direct
connections"; issue 17).

One Ray actor call costs 1.4–2.0 ms on the 2-core test machine (`benchmarks/ray_overhead.py`'s bare-call floor):
the whole 2 ms a request may add over embedded at concurrency 1. So a gateway opens one TCP connection to each
replica actor it sends requests to and makes the calls of `ray_streams`' protocol (`open_many`, `stream_take`,
`stream_cancel`) over it, answered by the same `OpenStreams` as the Ray calls are. Ray still creates, pins,
watches and kills the actor; the connection's address and token are asked once, by a Ray call
(`ReplicaActor.direct_address`). Like Ray Serve's proxies, which keep Ray only for the control path and talk
to replicas over their own channel once a request is assigned, but without Serve's gRPC: these are a handful of
frames on one socket.

Frames: a 4-byte big-endian length, then msgpack (what `ray_wire` packs is plain lists, strings and numbers;
a value it leaves as an object, such as a `RawChunk` or a `RemoteEngineError`, travels pickled as a msgpack
extension, from the replica to the gateway only). The gateway's first frame is the replica's token; then
["open", call id, packed requests, wait_s], ["take", call id], ["cancel", stream id]; the replica answers a call
with [call id, result] or [call id, None, error text]. A connection is one channel of `OpenStreams` (its own
id, chosen by the replica): when it closes, the replica cancels the streams still open on it.

Trust: the replica accepts nothing before the token (random, per actor) and never unpickles; the gateway
unpickles the replica's objects as it would Ray's own pickles. Ray's control plane is no better guarded: the
network between nodes must be trusted either way (docs/ray.md).

Failure: a connection that ends (EOF, a reset) fails each call in flight with `DirectConnectionLost`, and the
replica engine asks Ray whether the actor is alive (`ReplicaLost` if not, a 502 naming the lost connection if
it is). A host that vanishes without closing the socket is caught by Ray: each connection keeps one
`ReplicaActor.wait_stopped` call pending, whose failure (or return: the engine stopped) closes the connection.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import pickle
import secrets
import struct
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack

from switchboard.cluster.ray_streams import ActorCalls

log = logging.getLogger("switchboard.cluster")

_HEADER = struct.Struct(">I")
MAX_FRAME_BYTES = 256 * 2**20
"""A frame longer than this ends the connection (a whole answer of a long context is a few MB at most)."""
_PICKLED = 1
"""msgpack extension code of a pickled object (replica to gateway only)."""
CONNECT_TIMEOUT_S = 5.0
"""How long a gateway waits for a replica's socket before it falls back to Ray calls for that replica."""
WRITE_BUFFER_DRAIN_BYTES = 2**20
"""A writer waits for its socket to drain only once this much is buffered (small frames go at once)."""


class DirectConnectionLost(ConnectionError):
    """The connection to the replica ended with calls in flight (the replica may or may not be alive)."""


class DirectCallFailed(RuntimeError):
    """The replica could not answer a call (a bug on its side, named in the text): not an engine error."""


def _pickle_unknown(value: Any) -> msgpack.ExtType:
    return msgpack.ExtType(_PICKLED, pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))


def _unpickle(code: int, data: bytes) -> Any:
    if code != _PICKLED:
        raise ValueError(f"unknown msgpack extension {code}")
    return pickle.loads(data)  # noqa: S301 — from the replica this gateway placed (module docstring: "Trust")


def _refuse_extension(code: int, data: bytes) -> Any:
    raise ValueError("a replica accepts no msgpack extensions")


def frame(value: Any, *, allow_pickle: bool = False) -> bytes:
    """`value` as one frame; with `allow_pickle`, what msgpack cannot hold is pickled (never otherwise)."""
    body = msgpack.packb(value, use_bin_type=True, default=_pickle_unknown if allow_pickle else None)
    return _HEADER.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader, *, allow_pickle: bool = False) -> Any:
    """The next frame's value. Raises `asyncio.IncompleteReadError` at EOF, ValueError on a bad frame."""
    (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    if size > MAX_FRAME_BYTES:
        raise ValueError(f"frame of {size} bytes (at most {MAX_FRAME_BYTES})")
    body = await reader.readexactly(size)
    return msgpack.unpackb(body, raw=False, strict_map_key=False,
                           ext_hook=_unpickle if allow_pickle else _refuse_extension)


async def _write(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    if writer.transport.get_write_buffer_size() > WRITE_BUFFER_DRAIN_BYTES:
        await writer.drain()


class DirectServer:
    """A replica actor's side: serves `open(requests, channel id, wait_s)`, `take(channel id)` and
    `cancel(channel id, stream id)` (the actor's own `open_many`, `stream_take`, `stream_cancel`) to connections
    that present `token`; `close_channel(channel id)` is called when a connection ends."""

    def __init__(self, open_many: Callable[..., Awaitable[Any]], take: Callable[[str], Awaitable[Any]],
                 cancel: Callable[[str, int], None], close_channel: Callable[[str], None]) -> None:
        self._open_many = open_many
        self._take = take
        self._cancel = cancel
        self._close_channel = close_channel
        self.token = secrets.token_hex(16)
        self.address: list[Any] | None = None
        """[host, port, token] once listening."""
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.num_connections = 0
        """Connections that presented the token, in all."""
        self.num_calls = 0
        """`open` and `take` calls answered over them (what `benchmarks/ray_cpu.py` tells from actor calls)."""

    async def start(self, host: str) -> list[Any]:
        """Listens on `host` (the node's address), on a port the OS picks; returns [host, port, token]."""
        if self.address is None:
            self._server = await asyncio.start_server(self._serve, host, 0)
            port = self._server.sockets[0].getsockname()[1]
            self.address = [host, port, self.token]
        return self.address

    def close(self) -> None:
        """Stops listening and ends every connection (their gateways' calls in flight fail as lost)."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        channel_id = uuid.uuid4().hex
        calls: set[asyncio.Task] = set()
        try:
            if await asyncio.wait_for(read_frame(reader), CONNECT_TIMEOUT_S) != self.token:
                return
            self.num_connections += 1
            self._writers.add(writer)
            while True:
                message = await read_frame(reader)
                kind = message[0]
                if kind == "cancel":
                    self._cancel(channel_id, message[1])
                    continue
                if kind == "open":
                    answer = self._open_many(message[2], channel_id, message[3])
                elif kind == "take":
                    answer = self._take(channel_id)
                else:
                    raise ValueError(f"unknown call {kind!r}")
                self.num_calls += 1
                task = asyncio.create_task(self._answer(writer, message[1], answer))
                calls.add(task)
                task.add_done_callback(calls.discard)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.TimeoutError):
            pass  # the gateway went away (or never said its token)
        except Exception as exc:  # noqa: BLE001 — a malformed frame ends this connection, not the replica
            log.warning("direct connection to the replica closed: %s: %s", type(exc).__name__, exc)
        finally:
            for task in calls:
                task.cancel()
            self._close_channel(channel_id)
            self._writers.discard(writer)
            writer.close()

    async def _answer(self, writer: asyncio.StreamWriter, call_id: int, answer: Awaitable[Any]) -> None:
        try:
            result = await answer
        except Exception as exc:  # noqa: BLE001 — named to the gateway, which answers its client a 502
            message = [call_id, None, f"{type(exc).__name__}: {exc}"]
        else:
            message = [call_id, result]
        try:
            await _write(writer, frame(message, allow_pickle=True))
        except ConnectionError:
            pass  # the gateway went away: `_serve` cleans up


class DirectConnection:
    """A gateway's connection to one replica actor, with the calls `StreamChannel` makes (`open_many`,
    `stream_take`, `stream_cancel`; the channel id they are given is ignored: the connection is its channel).
    Closed for good once lost (`is_closed`): the channel opens a new one for its next requests."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self.lost: BaseException | None = None
        self._reading = asyncio.create_task(self._read())
        self._watch: Any = None
        self._cancel_watch: Callable[[], None] | None = None

    @classmethod
    async def open(cls, actor: Any) -> "DirectConnection":
        """Connects to `actor` (a `ReplicaActor` handle) at the address it gives. Raises a Ray error if the actor is
        gone, OSError or asyncio.TimeoutError if its socket cannot be reached."""
        host, port, token = await actor.direct_address.remote()
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT_S)
        writer.write(frame(token))
        connection = cls(reader, writer)
        stopped = actor.wait_stopped.remote()
        connection.watch(stopped, cancel=lambda: _cancel_ray_call(stopped))
        return connection

    def watch(self, stopped: Any, cancel: Callable[[], None] | None = None) -> None:
        """Closes the connection when `stopped` (an awaitable: the replica's `wait_stopped` call) ends, either way;
        `cancel()` is called if the connection closes first (so the replica does not keep the call)."""
        self._watch = asyncio.ensure_future(stopped)
        self._cancel_watch = cancel
        self._watch.add_done_callback(lambda done: self.close(DirectConnectionLost(
            "the replica actor stopped or is gone" if done.cancelled() or done.exception() is None
            else f"Ray reports the replica actor lost: {type(done.exception()).__name__}")))

    @property
    def is_closed(self) -> bool:
        return self.lost is not None

    def close(self, why: BaseException | None = None) -> None:
        """Ends the connection; every call in flight fails with `why` (a `DirectConnectionLost`)."""
        if self.lost is not None:
            return
        self.lost = why or DirectConnectionLost("the connection to the replica was closed")
        for future in self._pending.values():
            if not future.done():
                future.set_exception(self.lost)
        self._pending.clear()
        self._reading.cancel()
        if self._watch is not None and not self._watch.done():
            self._watch.cancel()
            if self._cancel_watch is not None:
                self._cancel_watch()
        self._writer.close()

    async def _read(self) -> None:
        try:
            while True:
                message = await read_frame(self._reader, allow_pickle=True)
                future = self._pending.pop(message[0], None)
                if future is None or future.done():
                    continue
                if len(message) == 2:
                    future.set_result(message[1])
                else:
                    future.set_exception(DirectCallFailed(message[2]))
        except asyncio.CancelledError:
            raise
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            self.close(DirectConnectionLost(f"the replica closed the connection ({type(exc).__name__})"))
        except Exception as exc:  # noqa: BLE001 — a frame this side cannot read ends the connection
            self.close(DirectConnectionLost(f"unreadable frame from the replica: {type(exc).__name__}: {exc}"))

    async def _call(self, message: list[Any]) -> Any:
        if self.lost is not None:
            raise self.lost
        data = frame(message)
        future = asyncio.get_running_loop().create_future()
        self._pending[message[1]] = future
        try:
            await _write(self._writer, data)
        except ConnectionError as exc:
            self.close(DirectConnectionLost(f"could not write to the replica: {exc}"))
        return await future

    async def open_many(self, requests: list[list[Any]], channel_id: str, wait_s: float | None) -> list[list[Any]]:
        return await self._call(["open", next(self._ids), requests, wait_s])

    async def stream_take(self, channel_id: str) -> list[list[Any]]:
        return await self._call(["take", next(self._ids)])

    def stream_cancel(self, channel_id: str, stream_id: int) -> None:
        if self.lost is None:
            try:
                self._writer.write(frame(["cancel", stream_id]))
            except ConnectionError:
                pass  # lost: the replica cancels the connection's streams itself


def _cancel_ray_call(ref: Any) -> None:
    import ray

    if not (isinstance(ref, ray.ObjectRef) and ray.is_initialized()):
        return  # not a Ray call (in-process tests): nothing to cancel, and no Ray to start
    try:
        ray.cancel(ref)
    except Exception:  # noqa: BLE001 — the actor is gone, or the call already ended: nothing kept
        pass


async def connect_direct(actor: Any) -> DirectConnection | ActorCalls:
    """A direct connection to `actor`, or its Ray calls if its socket cannot be reached (logged: every request to
    it then pays an actor call). A Ray error (the actor is gone) is raised."""
    try:
        return await DirectConnection.open(actor)
    except (OSError, asyncio.TimeoutError) as exc:
        log.warning("no direct connection to a replica actor (%s: %s): its requests go by Ray calls",
                    type(exc).__name__, exc)
        return ActorCalls(actor)
