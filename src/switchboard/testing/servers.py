"""Running an ASGI app on a real uvicorn server on a free loopback port, in a thread or a subprocess."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve_in_thread(app: Any, *, port: int | None = None, startup_timeout_s: float = 60.0) -> Iterator[str]:
    """Serves `app` on 127.0.0.1 (lifespan on) until the block ends; yields its base URL.

    Raises RuntimeError if the server does not start within `startup_timeout_s`.
    """
    port = port or free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, loop="asyncio", http="httptools", log_level="warning",
                            access_log=False, lifespan="on", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"uvicorn on port {port} did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
