"""The dashboard's batches panel in Debian's headless Chromium, against a real server: hidden until the gateway runs
a batch, then the batch's requests done of its total while it runs, and how it ended (answered and errors) once
it has; a cancelled one says so."""

from __future__ import annotations

import json

import openai
import pytest

from switchboard.config import parse_config
from switchboard.gateway.app import build_app
from switchboard.testing.browser import record_errors
from switchboard.testing.servers import serve_in_thread

pytestmark = pytest.mark.browser

CONFIG = """
experts:
  - {{id: slow, backend: {{kind: simulated, time_scale: 0.2}}}}
storage: {{url: "sqlite:///{db}", flush_interval_s: 0.05}}
batches: {{poll_interval_s: 0.1, max_concurrency: 1}}
"""


def _batch(client: openai.OpenAI, lines: list[dict]):
    upload = client.files.create(file=("requests.jsonl", "\n".join(json.dumps(line) for line in lines).encode()), purpose="batch")
    return client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")


def _line(i: int, model: str = "slow") -> dict:
    return {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": f"request {i}"}], "max_tokens": 40}}


def test_a_batch_shows_running_then_ended(browser, tmp_path):
    with serve_in_thread(build_app(parse_config(CONFIG.format(db=tmp_path / "log.db")))) as url:
        page = browser.new_page(viewport={"width": 1366, "height": 900})
        errors = record_errors(page)
        try:
            page.goto(url + "/dashboard")
            page.wait_for_selector("body[data-updates]")
            assert not page.locator("#batches-panel").is_visible()
            client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
            batch = _batch(client, [_line(i) for i in range(12)] + [_line(12, model="nope")])
            running = f'#batches li[data-batch="{batch.id}"][data-status="in_progress"]'
            page.wait_for_selector(running, timeout=30_000)
            assert page.locator("#batches-panel").is_visible() and " of 13 done" in page.locator(running).inner_text()
            # The fleet's replica says its request running is a batch's.
            page.locator('.chip.replica[data-expert="slow"]', has_text="1 running (1 of a batch)").wait_for(timeout=30_000)
            ended = f'#batches li[data-batch="{batch.id}"][data-status="completed"]'
            page.wait_for_selector(ended, timeout=60_000)
            assert "12 answered, 1 error of 13" in page.locator(ended).inner_text()
            cancelled = _batch(client, [_line(i) for i in range(40)])
            page.wait_for_selector(f'#batches li[data-batch="{cancelled.id}"][data-status="in_progress"]', timeout=30_000)
            client.batches.cancel(cancelled.id)
            page.wait_for_selector(f'#batches li[data-batch="{cancelled.id}"][data-status="cancelled"]', timeout=30_000)
            assert page.locator("#batches li").first.get_attribute("data-batch") == cancelled.id  # newest first
        finally:
            page.close()
    assert errors == [], f"the dashboard logged errors: {errors}"
