"""A gateway in front of a fast mock upstream, both in their own processes, for the benchmarks of what the gateway
adds (its request log and stored objects on SQLite in a scratch directory)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator

from gateway_overhead import UPSTREAM_CODE, _wait_http

from switchboard.testing.servers import free_port


@contextlib.contextmanager
def storing_mock_gateway() -> Iterator[int]:
    """`switchboard serve` with one `openai` expert `fast` (the mock upstream, 16-chunk streams) and storage on;
    yields the gateway's port once both answer, and stops both after."""
    with tempfile.TemporaryDirectory() as scratch:
        up_port, port = free_port(), free_port()
        config = os.path.join(scratch, "gateway.yaml")
        with open(config, "w") as fh:
            fh.write(f"""experts:
  - id: fast
    backend: {{kind: openai, base_url: "http://127.0.0.1:{up_port}/v1", model: mock}}
storage: {{url: "sqlite:///{scratch}/log.db"}}
""")
        upstream = subprocess.Popen([sys.executable, "-c", UPSTREAM_CODE, str(up_port)])
        gateway = subprocess.Popen([sys.executable, "-m", "switchboard.cli", "serve", "--config", config, "--port", str(port),
                                    "--log-level", "warning"])
        try:
            _wait_http(f"http://127.0.0.1:{up_port}/v1/models", upstream)
            _wait_http(f"http://127.0.0.1:{port}/healthz", gateway)
            yield port
        finally:
            for proc in (gateway, upstream):
                proc.terminate()
                proc.wait(timeout=30)
