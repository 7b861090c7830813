"""Suite-wide set-up: tests never write to the user's own data directory (the request log defaults there); the
headless browser of the `browser`-marked tests."""

from __future__ import annotations

import os
import tempfile

import pytest


def pytest_configure(config) -> None:
    # Set before any app or subprocess starts, so `switchboard serve` children inherit it too.
    os.environ["XDG_DATA_HOME"] = tempfile.mkdtemp(prefix="switchboard-test-data-")


@pytest.fixture(scope="module")
def browser():
    """Debian's headless Chromium under Playwright (the `browser`-marked tests); fails if it is not installed."""
    from switchboard.testing.browser import CHROMIUM, launch_chromium

    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: run scripts/ensure_chromium.sh (make test does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch_chromium(p)
        yield browser
        browser.close()


@pytest.fixture
def slow_lease_release(monkeypatch):
    """Every replica lease's release held 0.5 s: the gateway's wind-down after a stream's last chunk made slow, so a
    test sees what a client acting on that chunk at once would see."""
    import asyncio

    from switchboard.runtime.lease import Lease

    release = Lease.__aexit__

    async def slow_release(self, *args):
        await asyncio.sleep(0.5)
        await release(self, *args)

    monkeypatch.setattr(Lease, "__aexit__", slow_release)
