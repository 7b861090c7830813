"""Suite-wide set-up: tests never write to the user's own data directory (the request log defaults there)."""

from __future__ import annotations

import os
import tempfile


def pytest_configure(config) -> None:
    # Set before any app or subprocess starts, so `switchboard serve` children inherit it too.
    os.environ["XDG_DATA_HOME"] = tempfile.mkdtemp(prefix="switchboard-test-data-")
