"""Debian's headless Chromium under Playwright, for the dashboard's browser tests and its screenshot script.

Playwright drives /usr/bin/chromium (scripts/ensure_chromium.sh installs it; never `playwright install`).
"""

from __future__ import annotations

from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def launch_chromium(playwright: Any) -> Any:
    """A headless Chromium browser from a started `sync_playwright()`."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def record_errors(page: Any) -> list[str]:
    """The list that console errors and uncaught exceptions of `page` are appended to from now on."""
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return errors
