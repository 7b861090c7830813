"""Running an ASGI app on a real uvicorn server on a free loopback port, in a thread or a subprocess."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from switchboard.engines.sockets import loopback_listener


_NUM_PORT_TRIES = 3


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve_in_thread(app: Any, *, port: int | None = None, startup_timeout_s: float = 60.0) -> Iterator[str]:
    """Serves `app` on 127.0.0.1 (lifespan on) until the block ends; yields its base URL.

    The listening socket is bound here, before the server starts, and handed to it: a port found free and bound
    later may be taken meanwhile (Ray's processes open ports all the time; a fresh-clone CI run lost a whole
    module's fixture to "address already in use" so).

    Raises RuntimeError if the server does not start within `startup_timeout_s`.
    """
    sock = loopback_listener(port or 0)  # TCP_NODELAY on its connections, as uvicorn's own sockets
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, loop="asyncio", http="httptools", log_level="warning",
                            access_log=False, lifespan="on", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(timeout=30)
            sock.close()
            raise RuntimeError(f"uvicorn on port {port} did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@contextlib.contextmanager
def serve_in_process(config: Any, workdir: Any, *args: str, env: dict[str, str] | None = None,
                     startup_timeout_s: float = 120.0) -> Iterator[tuple[str, subprocess.Popen]]:
    """`switchboard serve` of `config` (a SwitchboardConfig, written to `workdir`) in a child process, with
    extra CLI `args` and `env` added to this process's environment; yields (base URL, process) once /healthz
    answers. Stopped with SIGINT at the end unless the caller killed it. Raises AssertionError, with the
    child's stderr, if it exits or does not come up within `startup_timeout_s`."""
    import yaml

    path = Path(workdir) / f"switchboard-{os.urandom(3).hex()}.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    deadline = time.monotonic() + startup_timeout_s
    # A port free_port() found free may be taken before the child binds it (on a busy machine, Ray's own
    # processes open ports all the time): the child then exits saying so, and another port is tried.
    for attempt in range(_NUM_PORT_TRIES):
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "switchboard.cli", "serve", "--config", str(path), "--port", str(port), *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
        )
        url = f"http://127.0.0.1:{port}"
        if _wait_healthy(url, process, deadline, last_try=attempt == _NUM_PORT_TRIES - 1):
            break
    try:
        yield url, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_healthy(url: str, process: subprocess.Popen, deadline: float, *, last_try: bool) -> bool:
    """Waits until `process` answers /healthz at `url`: True. False if it exited because its port was taken
    (unless `last_try`). Raises AssertionError, with the child's stderr, if it exits otherwise or `deadline`
    (monotonic) passes."""
    import httpx

    while True:
        if process.poll() is not None:
            stderr = process.stderr.read()
            if "address already in use" in stderr.lower() and not last_try:
                return False
            raise AssertionError(f"the gateway process exited: {stderr}")
        assert time.monotonic() < deadline, "the gateway process never came up"
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.3)


SMOL_GATEWAY_CONFIG = """
experts:
  - id: smol
    backend: {{kind: llamacpp, n_threads: 1{template}}}
    context_tokens: {context_tokens}
    warm_at_start: true
    ttft_slo_s: 300             # a loaded test machine must not turn answers into 429s
storage: {storage}
"""


@contextlib.contextmanager
def serve_smol_gateway(*, context_tokens: int = 1024, chat_template: Path | None = None, storage_url: str | None = None) -> Iterator[str]:
    """A gateway with one llama.cpp expert `smol` (the packaged SmolLM2-135M, one thread, warm at start, no
    storage unless `storage_url` names a database; the chat template in the file `chat_template` if given) served
    in a thread; yields its `/v1` base URL. The tests of what the real engine answers use it."""
    from switchboard.config import parse_config
    from switchboard.gateway.app import build_app

    template = f", chat_template: {json.dumps(str(chat_template))}" if chat_template else ""
    storage = f"{{url: {json.dumps(storage_url)}}}" if storage_url else "{enabled: false}"
    config = parse_config(SMOL_GATEWAY_CONFIG.format(context_tokens=context_tokens, template=template, storage=storage))
    with serve_in_thread(build_app(config), startup_timeout_s=180) as url:
        yield url + "/v1"
