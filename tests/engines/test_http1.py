"""The upstream HTTP/1.1 client against real local servers: uvicorn with the mock upstream, and scripted raw
asyncio servers for the edge cases (idle closes, partial answers, stalls). Every test runs on asyncio's loop
and on uvloop (the gateway's loop)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
import pytest
import uvloop

from switchboard.engines import http1
from switchboard.testing.servers import free_port, serve_in_thread
from switchboard.testing.upstream import MockUpstream

JSON = {"content-type": "application/json"}
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture(params=["asyncio", "uvloop"])
def event_loop_policy(request):
    return uvloop.EventLoopPolicy() if request.param == "uvloop" else asyncio.DefaultEventLoopPolicy()


@dataclasses.dataclass
class ServerStats:
    num_accepted: int = 0
    num_open: int = 0
    max_open: int = 0


@contextlib.asynccontextmanager
async def raw_server(handle: Handler) -> AsyncIterator[tuple[int, ServerStats]]:
    """A scripted server on a free port: `handle` runs once per connection. Yields (port, stats)."""
    stats = ServerStats()
    handlers: set[asyncio.Task] = set()

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        stats.num_accepted += 1
        stats.num_open += 1
        stats.max_open = max(stats.max_open, stats.num_open)
        try:
            await handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            stats.num_open -= 1
            writer.close()

    server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], stats
    finally:
        server.close()
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:"))
    return await reader.readexactly(length)


def answer(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def echo_forever(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        writer.write(answer(b"echo:" + await read_request(reader)))


async def post(pool: http1.ConnectionPool, body: bytes = b"{}", path: str = "/x") -> tuple[int, bytes]:
    response = await pool.request(pool.request_head("POST", path, JSON), body)
    try:
        return response.status, await response.read()
    finally:
        response.release()


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0.005)


async def test_keep_alive_reuses_one_connection():
    async with raw_server(echo_forever) as (port, stats):
        pool = http1.ConnectionPool("127.0.0.1", port)
        for i in range(5):
            assert await post(pool, b"%d" % i) == (200, b"echo:%d" % i)
        assert stats.num_accepted == 1 and pool.num_open == 1
        await pool.close()
        await until(lambda: pool.num_open == 0)


@pytest.fixture(scope="module")
def mock_upstream_url():
    with serve_in_thread(MockUpstream(num_chunks=6)) as url:
        yield url


async def test_uvicorn_upstream_content_length_and_chunked_stream(mock_upstream_url):
    port = int(mock_upstream_url.rsplit(":", 1)[1])
    pool = http1.ConnectionPool("127.0.0.1", port)
    body = orjson.dumps({"model": "mock", "messages": [{"role": "user", "content": "hi"}]})
    status, raw = await post(pool, body, "/v1/chat/completions")
    assert status == 200 and orjson.loads(raw)["choices"][0]["message"]["content"] == "mock answer"
    for _ in range(3):  # chunked answers are read to their end, so the connection keeps being reused
        response = await pool.request(pool.request_head("POST", "/v1/chat/completions", JSON),
                                      orjson.dumps({**orjson.loads(body), "stream": True}))
        assert response.content_type == "text/event-stream"
        streamed = b"".join([chunk async for chunk in response.iter_chunks()])
        response.release()
        assert [f"tok{i} ".encode() in streamed for i in range(6)] == [True] * 6 and streamed.endswith(b"data: [DONE]\n\n")
    assert pool.num_open == 1
    await pool.close()


async def test_chunked_content_length_and_close_delimited_bodies():
    async def handle(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        writer.write(b"6\r\n world\r\n0\r\n\r\n")
        await read_request(reader)
        writer.write(answer(b"fixed length"))
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end")
        await writer.drain()

    async with raw_server(handle) as (port, stats):
        pool = http1.ConnectionPool("127.0.0.1", port)
        assert await post(pool) == (200, b"hello world")
        assert await post(pool) == (200, b"fixed length")
        assert await post(pool) == (200, b"until the end")
        assert stats.num_accepted == 1
        await until(lambda: pool.num_open == 0)  # "connection: close" is honoured


async def test_body_chunks_arrive_before_the_server_sends_the_rest():
    may_continue = asyncio.Event()

    async def handle(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        writer.write(b"9\r\ndata: 1\n\n\r\n")
        await writer.drain()
        await may_continue.wait()  # the client must see the first event without the server sending more
        writer.write(b"9\r\ndata: 2\n\n\r\n0\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with raw_server(handle) as (port, _):
        pool = http1.ConnectionPool("127.0.0.1", port, read_timeout_s=30)
        response = await pool.request(pool.request_head("POST", "/", JSON), b"{}")
        assert await response.read_chunk() == b"data: 1\n\n"
        may_continue.set()
        assert await response.read_chunk() == b"data: 2\n\n"
        assert await response.read_chunk() == b""
        response.release()
        await pool.close()


async def test_idle_connection_closed_by_the_server_is_dropped():
    async def one_answer_then_close(reader, writer):
        writer.write(answer(await read_request(reader)))
        await writer.drain()

    async with raw_server(one_answer_then_close) as (port, stats):
        pool = http1.ConnectionPool("127.0.0.1", port)
        assert await post(pool, b"a") == (200, b"a")
        await until(lambda: pool.num_open == 0)
        assert await post(pool, b"b") == (200, b"b")
        assert stats.num_accepted == 2


async def test_reused_connection_closed_as_we_send_is_retried_once_on_a_fresh_one():
    async def answer_once_then_drop_the_next_request(reader, writer):
        writer.write(answer(await read_request(reader)))
        await read_request(reader)  # the server gave up on this connection just as the request arrived

    async with raw_server(answer_once_then_drop_the_next_request) as (port, stats):
        pool = http1.ConnectionPool("127.0.0.1", port)
        assert await post(pool, b"a") == (200, b"a")
        assert await post(pool, b"b") == (200, b"b")  # transparently retried on a second connection
        assert stats.num_accepted == 2
        await pool.close()


async def test_a_fresh_connection_closed_before_answering_is_not_retried():
    async def drop(reader, writer):
        await read_request(reader)

    async with raw_server(drop) as (port, stats):
        pool = http1.ConnectionPool("127.0.0.1", port)
        with pytest.raises(http1.ConnectionClosed):
            await post(pool)
        assert stats.num_accepted == 1


async def test_never_retried_once_response_bytes_arrived():
    async def answer_once_then_half_an_answer(reader, writer):
        writer.write(answer(await read_request(reader)))
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
        await writer.drain()

    async with raw_server(answer_once_then_half_an_answer) as (port, stats):
        pool = http1.ConnectionPool("127.0.0.1", port)
        assert await post(pool, b"a") == (200, b"a")
        with pytest.raises(http1.ConnectionClosed):
            await post(pool, b"b")
        assert stats.num_accepted == 1
        await until(lambda: pool.num_open == 0)


async def test_connect_refused_and_connect_timeout():
    pool = http1.ConnectionPool("127.0.0.1", free_port())
    with pytest.raises(http1.ConnectError):
        await post(pool)
    assert pool.num_open == 0
    # A listener that never accepts, its backlog filled: further SYNs are dropped, so connecting hangs.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        for _ in range(4):
            sock = socket.socket()
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.connect(("127.0.0.1", port))
            fillers.append(sock)
        try:
            pool = http1.ConnectionPool("127.0.0.1", port, connect_timeout_s=0.3)
            with pytest.raises(http1.ConnectTimeout):
                await post(pool)
            assert pool.num_open == 0
        finally:
            for sock in fillers:
                sock.close()


async def test_read_timeout_before_the_head_and_mid_body():
    async def stall_then_stall_mid_body(reader, writer):
        await read_request(reader)
        await reader.read()  # never answers; the client gives up and closes

    async def half_then_stall(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
        await reader.read()

    async with raw_server(stall_then_stall_mid_body) as (port, stats):
        pool = http1.ConnectionPool("127.0.0.1", port, read_timeout_s=0.2)
        with pytest.raises(http1.ReadTimeout):
            await post(pool)
        await until(lambda: stats.num_open == 0)
    async with raw_server(half_then_stall) as (port, stats):
        pool = http1.ConnectionPool("127.0.0.1", port, read_timeout_s=0.2)
        response = await pool.request(pool.request_head("POST", "/", JSON), b"{}")
        with pytest.raises(http1.ReadTimeout):
            await response.read()
        response.release()
        await until(lambda: stats.num_open == 0 and pool.num_open == 0)


def echo_after(release: asyncio.Event):
    """A raw handler that reads each request but answers it (an echo) only once `release` is set."""

    async def slow_echo(reader, writer):
        while True:
            body = await read_request(reader)
            await release.wait()
            writer.write(answer(body))

    return slow_echo


async def test_pool_never_opens_more_than_max_connections():
    release = asyncio.Event()
    slow_echo = echo_after(release)

    async with raw_server(slow_echo) as (port, stats):
        pool = http1.ConnectionPool("127.0.0.1", port, max_connections=3)
        calls = [asyncio.create_task(post(pool, b"%d" % i)) for i in range(10)]
        await until(lambda: stats.num_open == 3)
        await asyncio.sleep(0.05)  # the other seven are waiting, not connecting
        assert stats.num_accepted == 3 and pool.num_open == 3
        release.set()
        assert sorted(await asyncio.gather(*calls)) == sorted((200, b"%d" % i) for i in range(10))
        assert stats.max_open == 3 and stats.num_accepted == 3
        await pool.close()


async def test_a_cancelled_waiter_does_not_lose_the_connection():
    release = asyncio.Event()
    slow_echo = echo_after(release)

    async with raw_server(slow_echo) as (port, stats):
        pool = http1.ConnectionPool("127.0.0.1", port, max_connections=1)
        first = asyncio.create_task(post(pool, b"1"))
        waiting = asyncio.create_task(post(pool, b"2"))
        await until(lambda: stats.num_open == 1)
        await asyncio.sleep(0.01)
        waiting.cancel()
        release.set()
        assert await first == (200, b"1")
        assert await post(pool, b"3") == (200, b"3")
        assert stats.num_accepted == 1
        await pool.close()


async def test_a_response_not_read_to_the_end_closes_its_connection():
    async def big_answers(reader, writer):
        while True:
            await read_request(reader)
            writer.write(answer(b"x" * 1_000_000))

    async with raw_server(big_answers) as (port, stats):
        pool = http1.ConnectionPool("127.0.0.1", port)
        response = await pool.request(pool.request_head("POST", "/", JSON), b"{}")
        assert response.status == 200 and response.header(b"content-length") == "1000000"
        response.release()  # body left unread: its bytes would poison the next exchange
        assert await post(pool) == (200, b"x" * 1_000_000)
        assert await post(pool) == (200, b"x" * 1_000_000)
        assert stats.num_accepted == 2  # one for the abandoned response, one reused for the two read in full
        await until(lambda: pool.num_open == 1)
        await pool.close()


async def test_garbage_is_a_protocol_error_and_pool_close_fails_in_flight_requests():
    async def garbage(reader, writer):
        await read_request(reader)
        writer.write(b"SMTP ready\r\n\r\n")
        await reader.read()

    async with raw_server(garbage) as (port, _):
        pool = http1.ConnectionPool("127.0.0.1", port)
        with pytest.raises(http1.ProtocolError):
            await post(pool)

    async def stall(reader, writer):
        await reader.read()

    async with raw_server(stall) as (port, _):
        pool = http1.ConnectionPool("127.0.0.1", port)
        call = asyncio.create_task(post(pool))
        await until(lambda: pool.num_open == 1)
        await asyncio.sleep(0.01)
        await pool.close()
        with pytest.raises(http1.ConnectionClosed):
            await call
        with pytest.raises(http1.ConnectError):
            await post(pool)


async def test_a_second_answer_to_one_request_is_not_taken_for_the_next():
    async def answers_twice(reader, writer):
        while True:
            body = await read_request(reader)
            writer.write(answer(body) + answer(b"stray"))

    async with raw_server(answers_twice) as (port, stats):
        pool = http1.ConnectionPool("127.0.0.1", port)
        assert await post(pool, b"a") == (200, b"a")
        assert await post(pool, b"b") == (200, b"b")
        assert stats.num_accepted == 2
        await pool.close()
