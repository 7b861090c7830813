"""Graceful shutdown of a real `switchboard serve` process: on SIGTERM it stops taking requests, lets in-flight
streams finish within the drain timeout (or ends them with an explicit error event past it), then flushes the
request log and exits cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from sqlalchemy import create_engine, select

from switchboard.storage.models import requests_table
from switchboard.testing.servers import free_port, serve_in_thread
from switchboard.testing.upstream import MockUpstream

MESSAGES = [{"role": "user", "content": "Tell me a story"}]


@pytest.fixture(scope="module")
def slow_upstream():
    """Streams 10 chunks 0.3 s apart (model `mock`)."""
    with serve_in_thread(MockUpstream(num_chunks=10, chunk_interval_s=0.3)) as url:
        yield url + "/v1"


def _serve(tmp_path: Path, upstream_url: str, drain_timeout_s: float) -> tuple[subprocess.Popen, str, str]:
    db_url = f"sqlite:///{tmp_path}/requests.db"
    config = tmp_path / "switchboard.yaml"
    config.write_text(f"""
experts:
  - id: slow
    backend: {{kind: openai, base_url: "{upstream_url}", model: mock}}
gateway: {{drain_timeout_s: {drain_timeout_s}}}
storage: {{url: "{db_url}", flush_interval_s: 5}}
""")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "switchboard.cli", "serve", "--config", str(config), "--port", str(port), "--no-router",
                             "--log-level", "warning"], env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return proc, url, db_url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("switchboard serve did not start")
        time.sleep(0.1)


def _logged(db_url: str) -> dict[str, str]:
    engine = create_engine(db_url)
    with engine.connect() as connection:
        rows = {r.id: r.outcome for r in connection.execute(select(requests_table.c.id, requests_table.c.outcome))}
    engine.dispose()
    return rows


def _is_refused(url: str) -> bool:
    """A new request after SIGTERM: the listener is closed (connection refused) or the gateway answers 503."""
    try:
        response = httpx.post(url + "/v1/chat/completions", json={"model": "slow", "messages": MESSAGES, "max_tokens": 2}, timeout=5)
    except httpx.TransportError:
        return True
    assert response.status_code in (200, 503), response.text  # 200: it got in before the signal was handled
    return response.status_code == 503


@pytest.mark.parametrize("drain_timeout_s", [30, 1])
def test_sigterm_drains_in_flight_streams_then_flushes_the_log(tmp_path, slow_upstream, drain_timeout_s):
    proc, url, db_url = _serve(tmp_path, slow_upstream, drain_timeout_s)
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        stream = client.chat.completions.create(model="slow", messages=MESSAGES, stream=True)
        chunks = iter(stream)
        first = next(chunks)
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while not _is_refused(url):
            assert time.monotonic() < deadline, "the gateway kept taking new requests after SIGTERM"
        texts = [first.choices[0].delta.content or ""]
        if drain_timeout_s == 30:  # room enough: the stream finishes whole
            rest = list(chunks)
            texts += [c.choices[0].delta.content or "" for c in rest if c.choices]
            assert "".join(texts) == "".join(f"tok{i} " for i in range(10))
            assert rest[-1].choices[0].finish_reason == "stop"
        else:  # cut by the drain timeout: an explicit error event, never a silent cut
            with pytest.raises(openai.APIError) as caught:
                for chunk in chunks:
                    texts.append(chunk.choices[0].delta.content or "")
            assert "shutting down" in caught.value.message
        # uvicorn re-raises the signal once it has shut down cleanly, so "killed by SIGTERM" is the clean exit.
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    outcomes = _logged(db_url)  # flush_interval_s is 5: the rows are there because shutdown flushed them
    assert outcomes[stream.response.headers["x-request-id"]] == ("ok" if drain_timeout_s == 30 else "error")
