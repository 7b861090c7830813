"""`engines.sockets.loopback_listener`: the sockets handed to uvicorn serve their connections with TCP_NODELAY
(without it every two-piece response waited 40 ms for the client's delayed ACK)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from switchboard.engines.sockets import loopback_listener


def test_connections_accepted_on_the_listener_have_nagle_off():
    async def main() -> int:
        accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sock = writer.get_extra_info("socket")
            accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        listener = loopback_listener()
        server = await asyncio.start_server(on_connection, sock=listener)  # as uvicorn serves `sockets=[...]`
        port = listener.getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            return await asyncio.wait_for(accepted, 10)
        finally:
            writer.close()
            server.close()
            await server.wait_closed()

    assert asyncio.run(main()) != 0


def test_a_taken_port_raises_and_leaves_no_socket_open():
    with loopback_listener() as taken:
        taken.listen(1)
        with pytest.raises(OSError):
            loopback_listener(taken.getsockname()[1])
