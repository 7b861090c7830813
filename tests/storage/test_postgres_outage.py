"""The database going away and coming back: a private PostgreSQL server (scripts/postgres.sh on its own data
directory and port, so concurrent test runs on the shared test server are not disturbed) is stopped with
requests queued, then started again. Nothing the writer holds is lost."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import openai
import pytest
from sqlalchemy import create_engine, select

from switchboard.config import parse_config
from switchboard.gateway.app import build_app
from switchboard.storage.models import requests_table
from switchboard.storage.responses import UNAVAILABLE_BACKOFF_S
from switchboard.testing.servers import free_port, serve_in_thread

from .conftest import pg_url
from .helpers import make_log, record, rows, wait_until

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.postgres


def _pg_ctl(data_dir: Path, *args: str) -> None:
    pg_ctl = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))[-1]
    subprocess.run(["runuser", "-u", "postgres", "--", str(pg_ctl), "-D", str(data_dir), *args], check=True, capture_output=True)


@pytest.fixture
def private_postgres():
    if pg_url() is None:
        pytest.skip("SWITCHBOARD_TEST_PG_URL is not set (make test starts PostgreSQL and sets it)")
    data_dir = Path(f"/tmp/switchboard-pg-outage-{uuid.uuid4().hex[:8]}")
    port = free_port()
    url = subprocess.run([str(REPO / "scripts" / "postgres.sh"), str(data_dir), str(port), "outage"],
                         check=True, capture_output=True, text=True).stdout.strip()
    try:
        yield url, data_dir, port
    finally:
        subprocess.run(["runuser", "-u", "postgres", "--", str(sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))[-1]),
                        "-D", str(data_dir), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(data_dir, ignore_errors=True)


def _simulated_expert_logging_to(url: str):
    return parse_config(f"""
experts:
  - id: sim
    backend: {{kind: simulated, time_scale: 0}}
storage: {{url: "{url}", flush_interval_s: 0.05}}
""")


async def test_server_stopped_and_started_loses_nothing(private_postgres):
    url, data_dir, port = private_postgres
    log = make_log(url, flush_interval_s=0.05)
    await log.start()
    record(log, "before")
    await wait_until(lambda: log.num_written == 1)

    _pg_ctl(data_dir, "-m", "fast", "stop")
    for i in range(200):
        record(log, f"during{i}")
    await wait_until(lambda: log.num_failed_flushes >= 2)
    assert log.num_written == 1 and log.num_pending == 200

    _pg_ctl(data_dir, "-l", str(data_dir / "server.log"), "-w", "-o", f"-p {port} -k {data_dir} -c listen_addresses=127.0.0.1", "start")
    await wait_until(lambda: log.num_pending == 0, timeout_s=60)
    await log.stop()
    assert {r["id"] for r in rows(url)} == {"before", *(f"during{i}" for i in range(200))}
    assert log.num_dropped == 0


def test_gateway_requests_during_an_outage_are_all_logged_once(private_postgres):
    """Through the real gateway (the openai client, streamed and whole answers): requests answered while the
    database is down are in the log exactly once after it comes back and the gateway shuts down."""
    url, data_dir, port = private_postgres
    config = _simulated_expert_logging_to(url)
    app = build_app(config)
    request_log = app.state.request_log
    sent: list[str] = []
    with serve_in_thread(app) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
        messages = [{"role": "user", "content": "hi"}]
        sent.append(client.chat.completions.create(model="sim", messages=messages, max_tokens=2).id)
        _pg_ctl(data_dir, "-m", "fast", "stop")
        for i in range(20):
            if i % 2:
                sent.append(client.chat.completions.create(model="sim", messages=messages, max_tokens=2).id)
            else:
                chunk_ids = {c.id for c in client.chat.completions.create(model="sim", messages=messages, max_tokens=2, stream=True)}
                sent.extend(chunk_ids)  # every chunk carries the request's id
        asyncio.run(wait_until(lambda: request_log.num_failed_flushes >= 1))
        _pg_ctl(data_dir, "-l", str(data_dir / "server.log"), "-w", "-o", f"-p {port} -k {data_dir} -c listen_addresses=127.0.0.1", "start")
    engine = create_engine(url)
    with engine.connect() as connection:
        ids = [r.id for r in connection.execute(select(requests_table.c.id))]
    engine.dispose()
    assert sorted(ids) == sorted(sent)
    assert request_log.num_dropped == 0


def test_responses_during_an_outage_are_answered_unstored_and_continued_after_it(private_postgres):
    """Stored Responses on a database that goes away: answers keep coming (with `store: false`, and after the first
    failure without trying the database again for a few seconds), a `previous_response_id` is a 503 with a
    Retry-After, and once the server is back, responses are stored and the earlier conversation continues."""
    url, data_dir, port = private_postgres
    config = _simulated_expert_logging_to(url)
    with serve_in_thread(build_app(config)) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=60)
        before = client.responses.create(model="sim", input="hi", max_output_tokens=2)
        assert before.store is True
        _pg_ctl(data_dir, "-m", "fast", "stop")
        during = [client.responses.create(model="sim", input="hi", max_output_tokens=2, stream=i % 2 == 1) for i in range(6)]
        stored = [d.store for d in during[::2]] + [[e for e in d][-1].response.store for d in during[1::2]]
        assert stored == [False] * 6
        with pytest.raises(openai.InternalServerError) as raised:
            client.responses.create(model="sim", input="again", previous_response_id=before.id)
        assert raised.value.status_code == 503 and raised.value.response.headers["retry-after"] == str(round(UNAVAILABLE_BACKOFF_S))
        _pg_ctl(data_dir, "-l", str(data_dir / "server.log"), "-w", "-o", f"-p {port} -k {data_dir} -c listen_addresses=127.0.0.1", "start")
        time.sleep(UNAVAILABLE_BACKOFF_S)
        after = client.responses.create(model="sim", input="again", previous_response_id=before.id, max_output_tokens=2)
        assert after.store is True and client.responses.retrieve(after.id).previous_response_id == before.id
