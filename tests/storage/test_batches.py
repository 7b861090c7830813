"""OpenAI's Files and Batch APIs on SQLite and the real PostgreSQL, through the official client: a batch's input
uploaded, run through the gateway's own handlers (answers and errors in input order, in the output and error
files, with counts and usage), listed, read and deleted; a batch whose input is wrong fails validation with the
lines named; a batch cancelled mid-way and one whose gateway stops mid-way (taken up by the next gateway, each
request answered once); one taken up late (expired, or its input gone); the key's rate limit waited out, not
failed; each key sees its own; storage off; uploads over the limit or of the wrong form."""

from __future__ import annotations

import datetime as dt
import json
import time

import httpx
import openai
import pytest
from sqlalchemy import create_engine, select, update

from switchboard.storage import files as fs
from switchboard.storage.models import files_table, requests_table
from switchboard.testing.servers import serve_in_thread

from .helpers import ADMIN_ENV, storing_app

FAST_RUNNER = "batches: {poll_interval_s: 0.1, lease_s: 5, max_concurrency: 1}"


def _client(base: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)


def _jsonl(lines: list[dict]) -> bytes:
    return "\n".join(json.dumps(line) for line in lines).encode() + b"\n"


def _chat(custom_id: str, model: str, text: str, **more) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": text}], **more}}


def _upload(client: openai.OpenAI, lines: list[dict]):
    return client.files.create(file=("requests.jsonl", _jsonl(lines)), purpose="batch")


def _wait(client: openai.OpenAI, batch_id: str, statuses=("completed", "failed", "cancelled", "expired"), timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status}"
        time.sleep(0.05)


def _lines(client: openai.OpenAI, file_id: str | None) -> list[dict]:
    return [] if file_id is None else [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def _slow_app(db_url: str, upstream_url: str):
    return storing_app(db_url, upstream_url, extra=FAST_RUNNER, slow=True)


def test_a_batch_runs_through_the_gateway_and_its_files_hold_the_answers(db_url, upstream):
    recording, upstream_url = upstream
    lines = [_chat("a", "rec", "first"), _chat("b", "nope", "no such expert"), _chat("c", "sim", "third", max_tokens=5)]
    with serve_in_thread(storing_app(db_url, upstream_url, extra=FAST_RUNNER)) as base, _client(base) as client:
        recording.clear()
        upload = _upload(client, lines)
        assert (upload.purpose, upload.filename, upload.bytes, upload.status) == ("batch", "requests.jsonl", len(_jsonl(lines)), "processed")
        assert client.files.content(upload.id).content == _jsonl(lines)
        batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"job": "nightly"})
        assert batch.status == "validating" and batch.metadata == {"job": "nightly"} and batch.expires_at == batch.created_at + 86400
        batch = _wait(client, batch.id)
        assert batch.status == "completed" and batch.in_progress_at and batch.completed_at and batch.finalizing_at
        assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (3, 2, 1)
        output, errors = _lines(client, batch.output_file_id), _lines(client, batch.error_file_id)
        assert [line["custom_id"] for line in output] == ["a", "c"]  # in input order
        assert output[0]["response"]["status_code"] == 200 and output[0]["response"]["body"]["choices"][0]["message"]["content"] == "recorded"
        assert output[1]["response"]["body"]["usage"]["completion_tokens"] == 5
        assert output[0]["response"]["request_id"].startswith("chatcmpl-") and output[0]["id"].startswith("batch_req_")
        assert [m["content"] for m in recording.last.body["messages"]] == ["first"]  # the upstream got the line's body
        assert errors[0]["custom_id"] == "b" and errors[0]["response"]["status_code"] == 404
        assert errors[0]["response"]["body"]["error"]["code"] == "model_not_found"
        usage = batch.usage
        assert usage.output_tokens == output[0]["response"]["body"]["usage"]["completion_tokens"] + 5
        assert usage.total_tokens == usage.input_tokens + usage.output_tokens
        assert client.files.retrieve(batch.output_file_id).purpose == "batch_output"
        assert {f.id for f in client.files.list()} == {upload.id, batch.output_file_id, batch.error_file_id}
        assert [f.id for f in client.files.list(purpose="batch")] == [upload.id]
        assert [b.id for b in client.batches.list()] == [batch.id]
        metrics = httpx.get(base + "/metrics").text  # what an operator sees of it
        assert 'switchboard_batch_requests_total{endpoint="/v1/chat/completions",status="2xx"} 2.0' in metrics
        assert 'switchboard_batch_requests_total{endpoint="/v1/chat/completions",status="4xx"} 1.0' in metrics
        assert 'switchboard_batches_ended_total{status="completed"} 1.0' in metrics and "switchboard_batch_requests_in_flight 0.0" in metrics
        with pytest.raises(openai.ConflictError):
            client.batches.cancel(batch.id)
        assert client.files.delete(upload.id).deleted is True
        with pytest.raises(openai.NotFoundError):
            client.files.retrieve(upload.id)
        with pytest.raises(openai.BadRequestError) as refused:  # the input is gone
            client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
        assert refused.value.body["param"] == "input_file_id"
    requests = rows_of(db_url)
    assert sorted(r["expert"] for r in requests if r["status"] == 200) == ["rec", "sim"]  # logged as live requests are


def rows_of(db_url: str) -> list[dict]:
    engine = create_engine(db_url)
    try:
        deadline = time.monotonic() + 10
        while True:  # the request log writes in the background
            with engine.connect() as connection:
                found = [dict(r._mapping) for r in connection.execute(select(requests_table))]
            if len(found) >= 2 or time.monotonic() > deadline:
                return found
            time.sleep(0.05)
    finally:
        engine.dispose()


def test_an_input_that_is_wrong_fails_validation_naming_its_lines(tmp_path, upstream):
    _, upstream_url = upstream
    with serve_in_thread(storing_app(f"sqlite:///{tmp_path / 'log.db'}", upstream_url, extra=FAST_RUNNER)) as base, _client(base) as client:
        bad = _jsonl([_chat("a", "sim", "x"), _chat("a", "sim", "again"), {**_chat("b", "sim", "x"), "url": "/v1/embeddings"}]) + b"{not json\n"
        upload = client.files.create(file=("bad.jsonl", bad), purpose="batch")
        batch = _wait(client, client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h").id)
        assert batch.status == "failed" and batch.failed_at and batch.output_file_id is None
        assert [(e.code, e.line) for e in batch.errors.data] == [("duplicate_custom_id", 2), ("mismatched_endpoint", 3), ("invalid_json_line", 4)]
        streamed = client.files.create(file=("s.jsonl", _jsonl([_chat("s", "sim", "x", stream=True)])), purpose="batch")
        batch = _wait(client, client.batches.create(input_file_id=streamed.id, endpoint="/v1/chat/completions", completion_window="24h").id)
        assert batch.status == "failed" and batch.errors.data[0].param == "body.stream"
        with pytest.raises(openai.BadRequestError) as refused:  # a file for another purpose
            other = client.files.create(file=("notes.jsonl", b"{}\n"), purpose="user_data")
            client.batches.create(input_file_id=other.id, endpoint="/v1/chat/completions", completion_window="24h")
        assert refused.value.body["param"] == "input_file_id"
        with pytest.raises(openai.BadRequestError) as refused:
            client.batches.create(input_file_id=upload.id, endpoint="/v1/images/generations", completion_window="24h")
        assert refused.value.body["param"] == "endpoint"


def test_a_batch_cancelled_mid_way_keeps_what_finished(tmp_path, upstream):
    _, upstream_url = upstream
    lines = [_chat(f"r{i}", "slow", f"request {i}", max_tokens=40) for i in range(40)]
    with serve_in_thread(_slow_app(f"sqlite:///{tmp_path / 'log.db'}", upstream_url)) as base, _client(base) as client:
        batch = client.batches.create(input_file_id=_upload(client, lines).id, endpoint="/v1/chat/completions", completion_window="24h")
        deadline = time.monotonic() + 60
        while client.batches.retrieve(batch.id).request_counts.completed < 2:  # counts are live while it runs
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # The fleet shows the batch's request running as a batch's (what admission does not refuse live ones for).
        while not [r for e in httpx.get(base + "/admin/fleet").json()["experts"] for r in e["replicas"]
                   if r["expert"] == "slow" and r["num_running_background"] == r["num_running"] == 1]:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        cancelling = client.batches.cancel(batch.id)
        assert cancelling.status == "cancelling" and cancelling.cancelling_at
        batch = _wait(client, batch.id)
        assert batch.status == "cancelled" and batch.cancelled_at
        output, errors = _lines(client, batch.output_file_id), _lines(client, batch.error_file_id)
        assert 2 <= len(output) < 40 and len(output) + len(errors) == 40
        assert [line["custom_id"] for line in output + errors] == [f"r{i}" for i in range(40)]
        assert {line["error"]["code"] for line in errors} == {"batch_cancelled"} and all(line["response"] is None for line in errors)
        assert (batch.request_counts.completed, batch.request_counts.failed) == (len(output), len(errors))


def test_a_batch_left_by_a_stopped_gateway_is_finished_by_the_next_each_request_once(tmp_path, upstream):
    _, upstream_url = upstream
    db = f"sqlite:///{tmp_path / 'log.db'}"
    lines = [_chat(f"r{i}", "slow", f"request {i}", max_tokens=40) for i in range(12)]
    with serve_in_thread(_slow_app(db, upstream_url)) as base, _client(base) as client:
        batch = client.batches.create(input_file_id=_upload(client, lines).id, endpoint="/v1/chat/completions", completion_window="24h")
        deadline = time.monotonic() + 60
        while client.batches.retrieve(batch.id).request_counts.completed < 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    with serve_in_thread(_slow_app(db, upstream_url)) as base, _client(base) as client:  # a new gateway on the same database
        assert client.batches.retrieve(batch.id).status == "in_progress"
        batch = _wait(client, batch.id)
        assert batch.status == "completed" and batch.request_counts.completed == 12
        output = _lines(client, batch.output_file_id)
    assert [line["custom_id"] for line in output] == [f"r{i}" for i in range(12)]
    engine = create_engine(db)
    with engine.connect() as connection:
        answered = [r for r in connection.execute(select(requests_table.c.status)) if r[0] == 200]
    engine.dispose()
    assert len(answered) <= 13  # each answered once; the one in flight when the first gateway stopped may run twice


def test_the_keys_rate_limit_is_waited_out_and_each_key_sees_its_own(tmp_path, upstream):
    from switchboard.storage import database
    from switchboard.tenants.keys import KeyLimits
    from switchboard.tenants.store import create_key

    _, upstream_url = upstream
    db = f"sqlite:///{tmp_path / 'keys.db'}"
    engine = database.open_engine(db)
    database.migrate(engine)
    limited = create_key(engine, "batch-job", "acme", KeyLimits(rpm=2))
    other = create_key(engine, "other", "globex", KeyLimits())[1]
    engine.dispose()
    extra = f"auth: {{enabled: true, rate_window_s: 1}}\n{FAST_RUNNER}"
    with serve_in_thread(storing_app(db, upstream_url, extra=extra, environ=ADMIN_ENV)) as base:
        with _client(base, limited[1]) as client, _client(base, other) as stranger:
            upload = _upload(client, [_chat(f"r{i}", "sim", "x", max_tokens=2) for i in range(6)])
            batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
            with pytest.raises(openai.NotFoundError):
                stranger.batches.retrieve(batch.id)
            with pytest.raises(openai.NotFoundError):
                stranger.files.content(upload.id)
            with pytest.raises(openai.BadRequestError):
                stranger.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
            assert stranger.files.list().data == [] and stranger.batches.list().data == []
            batch = _wait(client, batch.id)
            assert batch.status == "completed" and batch.request_counts.completed == 6  # 2 a second: waited, not failed
    engine = create_engine(db)
    with engine.connect() as connection:
        keys = {r[0] for r in connection.execute(select(requests_table.c.key_id))}
    engine.dispose()
    assert keys == {limited[0].key_id}  # run as the key that made the batch


def test_uploads_are_checked_and_storage_off_says_so(tmp_path, upstream):
    _, upstream_url = upstream
    app = storing_app(f"sqlite:///{tmp_path / 'log.db'}", upstream_url, extra="batches: {max_file_bytes: 2048}")
    with serve_in_thread(app) as base, _client(base) as client:
        with pytest.raises(openai.APIStatusError) as refused:
            client.files.create(file=("big.jsonl", b"x" * 4096), purpose="batch")
        assert refused.value.status_code == 413
        with pytest.raises(openai.BadRequestError) as refused:
            client.files.create(file=("a.jsonl", b"{}"), purpose="nonsense")  # type: ignore[arg-type]
        assert refused.value.body["param"] == "purpose"
        with pytest.raises(openai.BadRequestError) as refused:
            client.files.create(file=("a.csv", b"a,b"), purpose="batch")
        assert refused.value.body["code"] == "invalid_file_format"
        with pytest.raises(openai.BadRequestError):
            client.post("/files", body={"purpose": "batch"}, cast_to=object)  # JSON, not a form
        with pytest.raises(openai.BadRequestError) as refused:  # a 400, not the database's error (PostgreSQL would refuse it)
            client.files.create(file=("n" * 600 + ".jsonl", b"{}"), purpose="batch")
        assert "name" in refused.value.message
        short = client.files.create(file=("notes.txt", b"hello"), purpose="user_data", expires_after={"anchor": "created_at", "seconds": 3600})
        assert short.expires_at == short.created_at + 3600 and client.files.content(short.id).content == b"hello"
        engine = create_engine(f"sqlite:///{tmp_path / 'log.db'}")  # an hour passes
        with engine.begin() as connection:
            connection.execute(update(files_table).where(files_table.c.id == short.id).values(expires_at=dt.datetime.now(dt.timezone.utc)))
        with pytest.raises(openai.NotFoundError):
            client.files.retrieve(short.id)
        assert short.id not in [f.id for f in client.files.list()]
        assert fs.purge(engine, time.time()) == 1  # what the runner does once an hour
        engine.dispose()
        with pytest.raises(openai.NotFoundError):
            client.batches.retrieve("batch_missing")
    with serve_in_thread(storing_app(f"sqlite:///{tmp_path / 'off.db'}", upstream_url, more=", store_prompts: false")) as base, _client(base) as client:
        with pytest.raises(openai.BadRequestError) as refused:
            client.files.create(file=("a.jsonl", b"{}"), purpose="batch")
        assert "store_prompts" in refused.value.message
        with pytest.raises(openai.BadRequestError):
            client.batches.list()


@pytest.mark.parametrize("meanwhile", ["a day passes", "its input is deleted"])
def test_a_batch_taken_up_late_ends_with_what_finished(meanwhile, tmp_path, upstream):
    """Past its completion window it expires (the rest in the error file); without its input it fails (the rest unknown)."""
    from sqlalchemy import delete

    from switchboard.storage.models import batches_table

    _, upstream_url = upstream
    db = f"sqlite:///{tmp_path / 'log.db'}"
    lines = [_chat(f"r{i}", "slow", f"request {i}", max_tokens=40) for i in range(10)]
    with serve_in_thread(_slow_app(db, upstream_url)) as base, _client(base) as client:
        upload = _upload(client, lines)
        batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
        deadline = time.monotonic() + 60
        while client.batches.retrieve(batch.id).request_counts.completed < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    engine = create_engine(db)  # while no gateway runs
    with engine.begin() as connection:
        if meanwhile == "a day passes":
            body = json.loads(connection.execute(select(batches_table.c.body).where(batches_table.c.id == batch.id)).scalar_one())
            connection.execute(update(batches_table).where(batches_table.c.id == batch.id).values(body=json.dumps({**body, "expires_at": int(time.time()) - 1})))
        else:
            connection.execute(delete(files_table).where(files_table.c.id == upload.id))
    engine.dispose()
    with serve_in_thread(_slow_app(db, upstream_url)) as base, _client(base) as client:
        batch = _wait(client, batch.id)
        output, errors = _lines(client, batch.output_file_id), _lines(client, batch.error_file_id)
    assert len(output) >= 2 and batch.request_counts.total == 10 and batch.request_counts.completed == len(output)
    if meanwhile == "a day passes":
        assert batch.status == "expired" and batch.expired_at
        assert len(output) + len(errors) == 10 and {line["error"]["code"] for line in errors} == {"batch_expired"}
    else:
        assert batch.status == "failed" and batch.failed_at and batch.errors.data[0].param == "input_file_id" and errors == []


def test_a_batch_whose_runs_keep_failing_ends_failed_saying_why(tmp_path, upstream, monkeypatch):
    from switchboard.gateway.batches import runner

    async def broken(self):
        raise RuntimeError("a bug")
    monkeypatch.setattr(runner.BatchRun, "run", broken)
    _, upstream_url = upstream
    with serve_in_thread(storing_app(f"sqlite:///{tmp_path / 'log.db'}", upstream_url, extra=FAST_RUNNER)) as base, _client(base) as client:
        batch = _wait(client, client.batches.create(input_file_id=_upload(client, [_chat("a", "sim", "x")]).id, endpoint="/v1/chat/completions",
                                                    completion_window="24h").id)
        assert batch.status == "failed" and batch.errors.data[0].code == "internal_error" and "RuntimeError: a bug" in batch.errors.data[0].message


@pytest.mark.parametrize("endpoint", ["/v1/responses", "/v1/completions"])
def test_responses_and_legacy_completions_run_as_batches_too(endpoint, tmp_path, upstream):
    _, upstream_url = upstream
    body = {"model": "sim", "input": "Say something.", "max_output_tokens": 6} if endpoint == "/v1/responses" else \
        {"model": "sim", "prompt": "Say something.", "max_tokens": 6}
    lines = [{"custom_id": f"r{i}", "method": "POST", "url": endpoint, "body": body} for i in range(3)]
    with serve_in_thread(storing_app(f"sqlite:///{tmp_path / 'log.db'}", upstream_url, extra=FAST_RUNNER)) as base, _client(base) as client:
        batch = _wait(client, client.batches.create(input_file_id=_upload(client, lines).id, endpoint=endpoint, completion_window="24h").id)
        output = _lines(client, batch.output_file_id)
        assert batch.status == "completed" and [line["custom_id"] for line in output] == ["r0", "r1", "r2"]
        answers = [line["response"]["body"] for line in output]
        if endpoint == "/v1/responses":
            assert {a["object"] for a in answers} == {"response"}
            assert {(a["status"], a["incomplete_details"]["reason"]) for a in answers} == {("incomplete", "max_output_tokens")}  # 6 tokens
            assert client.responses.retrieve(answers[0]["id"]).id == answers[0]["id"]  # stored, as a live one is
        else:
            assert {a["object"] for a in answers} == {"text_completion"}
        assert batch.usage.output_tokens == 18
