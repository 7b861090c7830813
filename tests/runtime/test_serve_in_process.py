"""The test helpers' ports (on a busy machine a port found free can be taken before the server binds it): the one
that runs `switchboard serve` in a child process tries another port when its first is taken; the in-thread one
binds its port before its app starts."""

from __future__ import annotations

import socket

import httpx

from switchboard.config import parse_config
from switchboard.testing import servers

CONFIG = """
experts:
  - id: tiny
    backend: {kind: simulated, hardware: l4, time_scale: 0.01}
    params_b: 1
    warm_at_start: true
router: {enabled: false}
"""


def test_a_taken_port_is_retried_with_another(tmp_path, monkeypatch):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        taken_port = taken.getsockname()[1]
        ports = iter([taken_port])
        real_free_port = servers.free_port
        monkeypatch.setattr(servers, "free_port", lambda: next(ports, None) or real_free_port())
        with servers.serve_in_process(parse_config(CONFIG), tmp_path) as (url, process):
            assert not url.endswith(f":{taken_port}")
            assert httpx.get(url + "/healthz", timeout=5).status_code == 200
            assert process.poll() is None


def test_the_in_thread_server_holds_its_port_from_before_its_app_starts():
    """`serve_in_thread` binds its socket before the server starts, so nothing can take the port while the app's
    start-up runs (a Ray gateway's takes seconds, and Ray opens ports meanwhile: a fresh-clone CI run lost the
    whole `tests/cluster/test_ray.py` fixture to "address already in use"). Here the app's start-up itself tries
    to take the port it is about to be served on."""
    import contextlib

    from fastapi import FastAPI

    taken_during_startup: list[bool] = []

    @contextlib.asynccontextmanager
    async def lifespan(app):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
            try:
                other.bind(("127.0.0.1", app.state.port))
                taken_during_startup.append(False)
            except OSError:
                taken_during_startup.append(True)
        yield

    app = FastAPI(lifespan=lifespan)
    app.get("/healthz")(lambda: {"ok": True})
    app.state.port = servers.free_port()
    with servers.serve_in_thread(app, port=app.state.port) as url:
        assert httpx.get(url + "/healthz", timeout=5).status_code == 200
    assert taken_during_startup == [True]
