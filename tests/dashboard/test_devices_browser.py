"""The dashboard's devices panel in Debian's headless Chromium, against a real server: per worker that declares
devices a row of cells that follow a replica as it starts, warms and stops (simulated GPU experts), and as a
`process` replica goes to sleep (its device freed, shown where it would wake) and wakes."""

from __future__ import annotations

import contextlib
import sys
import threading

import openai
import pytest

from switchboard.config import parse_config
from switchboard.gateway.app import build_app
from switchboard.testing.browser import record_errors
from switchboard.testing.servers import serve_in_thread

from .conftest import SIMULATED, SLEEPING

pytestmark = pytest.mark.browser


def cell(worker_id: str, index: int, state: str, expert: str | None = None) -> str:
    """The selector of device `index` of `worker_id` in `state` (held by or asleep from `expert`)."""
    who = f'[data-expert="{expert}"]' if expert else ""
    return f'#devices .device-row[data-worker="{worker_id}"] .device[data-index="{index}"][data-state="{state}"]{who}'


def row_states(page, worker_id: str) -> list[tuple[str, str, str]]:
    return page.locator(f'#devices .device-row[data-worker="{worker_id}"] .device').evaluate_all(
        "cells => cells.map(c => [c.dataset.index, c.dataset.state, c.dataset.expert])")


def ask(url: str, model: str) -> str:
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4).choices[0].message.content


@contextlib.contextmanager
def dashboard(browser, url: str):
    """The dashboard of the gateway at `url`, once its first event is shown; closed (before the gateway stops, so
    its event stream ends cleanly) with no console error logged."""
    page = browser.new_page(viewport={"width": 1366, "height": 900})
    errors = record_errors(page)
    try:
        page.goto(url + "/dashboard")
        page.wait_for_selector("body[data-updates]")
        yield page
    finally:
        page.close()
    assert errors == [], f"the dashboard logged errors: {errors}"


def test_device_cells_follow_a_replica_starting_warming_and_stopping(browser):
    with serve_in_thread(build_app(parse_config(SIMULATED))) as url, dashboard(browser, url) as page:
        page.wait_for_selector(cell("h100-box", 0, "warm", "resident"), timeout=20_000)
        assert page.locator("#devices-panel").is_visible()
        assert row_states(page, "h100-box") == [["0", "warm", "resident"], ["1", "free", ""], ["2", "free", ""], ["3", "free", ""]]
        assert row_states(page, "l4-box") == [["7", "free", ""]]
        assert page.locator('#devices .device-row[data-worker="cpu"]').count() == 0  # it declares no devices
        assert "3 of 4 free" in page.locator('#devices .device-row[data-worker="h100-box"] .head').inner_text()

        answers: list[str] = []
        request = threading.Thread(target=lambda: answers.append(ask(url, "wide")))
        request.start()
        # `wide` (tensor-parallel 2) takes the two lowest free devices while its modelled cold start runs.
        page.wait_for_selector(cell("h100-box", 1, "starting", "wide"), timeout=20_000)
        assert page.locator(cell("h100-box", 2, "starting", "wide")).count() == 1
        page.wait_for_selector(cell("h100-box", 2, "warm", "wide"), timeout=20_000)
        request.join(timeout=60)
        assert answers and answers[0].startswith("[simulated wide:")
        assert "1 of 4 free" in page.locator('#devices .device-row[data-worker="h100-box"] .head').inner_text()
        assert "held by wide#" in page.locator(cell("h100-box", 1, "warm", "wide")).get_attribute("title")
        assert "(h100 devices 1, 2)" in page.locator('.replica[data-expert="wide"]').get_attribute("title")  # the fleet panel

        # Idle past its keep-alive window, `wide` stops and its devices are free again.
        page.wait_for_selector(cell("h100-box", 1, "free"), timeout=20_000)
        assert row_states(page, "h100-box") == [["0", "warm", "resident"], ["1", "free", ""], ["2", "free", ""], ["3", "free", ""]]


def test_a_sleeping_replica_keeps_its_device_and_the_cell_says_it_wakes_there(browser, tmp_path):
    app = build_app(parse_config(SLEEPING.format(python=sys.executable, logs=tmp_path)))
    with serve_in_thread(app, startup_timeout_s=60) as url, dashboard(browser, url) as page:
        assert row_states(page, "box") == [["0", "free", ""], ["1", "free", ""]]
        assert ask(url, "vllm").startswith("fake vllm answer")
        page.wait_for_selector(cell("box", 0, "warm", "vllm"), timeout=20_000)
        page.wait_for_selector(cell("box", 0, "asleep", "vllm"), timeout=20_000)
        assert "1 of 2 free" in page.locator('#devices .device-row[data-worker="box"] .head').inner_text()
        assert "is asleep and wakes here" in page.locator(cell("box", 0, "asleep", "vllm")).get_attribute("title")
        assert ask(url, "vllm").startswith("fake vllm answer")
        page.wait_for_selector(cell("box", 0, "warm", "vllm"), timeout=20_000)
