"""The request-log writer: batching, background flushes, graceful shutdown, outages, bounded memory."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading

import pytest

from switchboard.storage import database

from .helpers import feedback_table, make_log, record, rows, wait_until


async def test_batches_of_at_most_max_batch_and_every_field(db_url):
    log = make_log(db_url, flush_interval_s=3600, max_batch=100)
    await log.start()
    for i in range(450):
        record(log, f"r{i}")
    log.add_feedback("r7", 0.75)
    assert await log.flush()
    assert list(log.batch_sizes) == [100, 100, 100, 100, 51]
    await log.stop()
    logged = {r["id"]: r for r in rows(db_url)}
    assert len(logged) == 450
    r = logged["r3"]
    assert (r["kind"], r["expert"], r["replica"], r["hardware"], r["key_id"]) == ("chat", "e", "e#0", "l4", None)
    assert (r["tokens_in"], r["tokens_out"], r["outcome"], r["status"], r["cold_start"]) == (10, 20, "ok", 200, False)
    assert r["usd_cost"] == pytest.approx(10e-6 + 40e-6)
    assert r["ttft_s"] == pytest.approx(0.01, abs=1e-6) and r["latency_s"] >= 0
    assert r["routing_reason"] == "router: best" and r["prompt_text"] == "prompt of r3" and r["created_at"] is not None
    [feedback] = rows(db_url, feedback_table)
    assert (feedback["request_id"], feedback["score"]) == ("r7", 0.75)


async def test_the_background_task_flushes_every_interval(db_url):
    log = make_log(db_url, flush_interval_s=0.05)
    await log.start()
    for i in range(20):
        record(log, f"r{i}")
    await wait_until(lambda: log.num_written == 20)
    assert len(rows(db_url)) == 20 and log.num_pending == 0
    await log.stop()


async def test_graceful_shutdown_flushes_what_is_queued(db_url):
    log = make_log(db_url, flush_interval_s=3600)
    await log.start()
    for i in range(7):
        record(log, f"r{i}")
    assert rows(db_url) == []  # nothing is written on the request path
    await log.stop()
    assert len(rows(db_url)) == 7


async def test_prompts_are_not_stored_when_disabled(tmp_path):
    url = f"sqlite:///{tmp_path / 'log.db'}"
    log = make_log(url, store_prompts=False)
    await log.start()
    record(log, "r0")
    await log.stop()
    assert rows(url)[0]["prompt_text"] is None


async def test_sqlite_locked_by_another_process_loses_nothing(tmp_path):
    url = f"sqlite:///{tmp_path / 'log.db'}"
    log = make_log(url, flush_interval_s=0.05, sqlite_busy_timeout_s=0.1)
    await log.start()
    record(log, "before")
    await wait_until(lambda: log.num_written == 1)
    # Another writer holds the database's write lock: every write of ours fails until it lets go.
    blocker = sqlite3.connect(tmp_path / "log.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    for i in range(50):
        record(log, f"during{i}")
    await wait_until(lambda: log.num_failed_flushes >= 2)
    assert log.num_pending == 50 and log.num_written == 1
    blocker.execute("ROLLBACK")
    blocker.close()
    await wait_until(lambda: log.num_pending == 0)
    await log.stop()
    assert {r["id"] for r in rows(url)} == {"before", *(f"during{i}" for i in range(50))}
    assert log.num_dropped == 0


async def test_memory_is_bounded_by_dropping_the_oldest(tmp_path):
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("switchboard.storage").addHandler(handler)
    (tmp_path / "not-a-dir").write_text("")
    log = make_log(f"sqlite:///{tmp_path / 'not-a-dir' / 'log.db'}", flush_interval_s=3600, max_pending=10)
    log.shutdown_timeout_s = 0.2
    await log.start()  # unreachable: logged, not fatal
    for i in range(25):
        record(log, f"r{i}")
    assert log.num_pending == 10 and log.num_dropped == 15
    assert not await log.flush()
    assert [r[0] for r in log._requests] == [f"r{i}" for i in range(15, 25)]  # the newest are kept
    await log.stop()
    logging.getLogger("switchboard.storage").removeHandler(handler)
    text = "\n".join(messages)
    assert "dropping the oldest" in text and "10 records not written" in text


async def test_feedback_lookup_sees_queued_and_written_requests(db_url):
    log = make_log(db_url, flush_interval_s=3600)
    await log.start()
    record(log, "queued")
    assert await log.knows("queued")
    await log.flush()
    assert await log.knows("queued") and not await log.knows("never")
    await log.stop()


async def test_a_request_being_written_is_still_found_for_its_feedback(db_url, monkeypatch):
    """A feedback sent right after its answer often arrives while the writer commits that answer's row: out of the
    queue, not yet in the database. Its prompt and expert must still be found (else the score is not learned)."""
    log = make_log(db_url, flush_interval_s=3600)
    await log.start()
    record(log, "inflight")
    writing, release = threading.Event(), threading.Event()
    write_batch = database.write_batch

    def held(*args):
        writing.set()
        release.wait(30)
        return write_batch(*args)

    monkeypatch.setattr(database, "write_batch", held)
    flushing = asyncio.create_task(log.flush())
    assert await asyncio.to_thread(writing.wait, 30)
    assert await log.knows("inflight")
    assert await log.prompt_and_expert("inflight") == ("prompt of inflight", "e")
    release.set()
    assert await flushing
    assert await log.prompt_and_expert("inflight") == ("prompt of inflight", "e")  # from the database now
    await log.stop()


async def test_migrations_are_idempotent_across_restarts(db_url):
    for attempt in range(2):
        log = make_log(db_url)
        await log.start()
        record(log, f"r{attempt}")
        await log.stop()
    assert len(rows(db_url)) == 2
