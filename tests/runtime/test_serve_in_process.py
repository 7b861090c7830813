"""The test helper that runs `switchboard serve` in a child process tries another port when its first is taken
(on a busy machine a port found free can be taken before the child binds it)."""

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
