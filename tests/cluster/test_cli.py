"""`switchboard serve --ray` fails fast and clearly when no Ray cluster answers (Ray alone retries for minutes)."""

from __future__ import annotations

import subprocess
import sys

from switchboard.testing.servers import free_port


def test_serve_with_no_cluster_at_the_address_says_so():
    address = f"127.0.0.1:{free_port()}"
    result = subprocess.run([sys.executable, "-m", "switchboard.cli", "serve", "--ray", address, "--no-router", "--port", str(free_port())],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert f"error: no Ray cluster answers at {address}" in result.stderr
