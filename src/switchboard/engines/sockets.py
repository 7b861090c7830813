"""Listening sockets made here and handed to uvicorn (`Server.run(sockets=[...])`).

A socket bound before its server starts keeps its port from being taken meanwhile. But asyncio turns Nagle's
algorithm off (TCP_NODELAY) only on connections whose socket says it is TCP (`proto == IPPROTO_TCP`), which
`socket.socket(AF_INET, SOCK_STREAM)` does not (its proto is 0), and accepted connections inherit the
listener's proto. Without TCP_NODELAY a response written in two pieces (uvicorn writes the headers, then the
body) waits for the client's delayed ACK: 40 ms per request on Linux, measured through the gateway
(`benchmarks/router_latency.py`: 44 ms per request against 0.6 ms).
"""

from __future__ import annotations

import socket


def loopback_listener(port: int = 0) -> socket.socket:
    """A TCP socket bound to 127.0.0.1:`port` (0: one the OS picks), not yet listening, whose accepted
    connections asyncio serves with TCP_NODELAY. Raises OSError if the port is taken."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    return sock
