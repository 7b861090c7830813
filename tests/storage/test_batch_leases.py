"""The batch lease (storage/batches.py) on SQLite and the real PostgreSQL: one runner holds a batch while its lease
lives; once it lapses (the runner died) another takes the batch, and the first — should it come back — finds it
lost and writes nothing; a released lease is taken at once; a cancel is seen by the holder; finished batches are
never claimed."""

from __future__ import annotations

from switchboard.storage import batches as bs
from switchboard.storage import database


def _batch(batch_id: str, created_s: float) -> dict:
    return {"id": batch_id, "object": "batch", "status": "in_progress", "created_at": int(created_s), "endpoint": "/v1/chat/completions",
            "request_counts": {"total": 1, "completed": 0, "failed": 0}}


def test_a_lapsed_lease_passes_the_batch_to_another_runner_and_the_first_finds_it_lost(db_url):
    engine = database.open_engine(db_url)
    database.migrate(engine)
    try:
        bs.create(engine, _batch("batch_old", 1000.0), None, 1000.0)
        bs.create(engine, _batch("batch_new", 1001.0), "key_1", 1001.0)
        assert bs.claim_next(engine, "a", 2000.0, 30.0)[0] == "batch_old"  # the oldest first
        assert bs.claim_next(engine, "b", 2010.0, 30.0)[:2] == ("batch_new", "key_1")  # the other; a's is held
        assert bs.claim_next(engine, "c", 2020.0, 30.0) is None
        assert bs.renew(engine, "batch_old", "a", 2025.0, 30.0) == "in_progress"  # a renews: held until 2055
        assert bs.renew(engine, "batch_new", "b", 2035.0, 30.0) == "in_progress"  # b too: until 2065
        assert bs.claim_next(engine, "c", 2050.0, 30.0) is None
        assert bs.claim_next(engine, "c", 2056.0, 30.0)[0] == "batch_old"  # a died: its lease lapsed
        assert bs.renew(engine, "batch_old", "a", 2057.0, 30.0) is None  # a, back, has lost it
        assert not bs.set_state(engine, "batch_old", "a", {**_batch("batch_old", 1000.0), "status": "completed"})
        assert not bs.finish(engine, "batch_old", "a", {**_batch("batch_old", 1000.0), "status": "completed"}, [])
        assert bs.claim_next(engine, "d", 2058.0, 30.0) is None
        bs.release(engine, "batch_new", "b")  # b stops: the batch is free at once, its lease not run out
        assert bs.claim_next(engine, "d", 2058.0, 30.0)[0] == "batch_new"
        assert bs.request_cancel(engine, "batch_new", "key_1", 2059.0)["status"] == "cancelling"
        assert bs.renew(engine, "batch_new", "d", 2060.0, 30.0) == "cancelling"  # the holder sees the cancel
        assert bs.request_cancel(engine, "batch_new", None, 2059.0) is None  # another key's: no such batch
        assert bs.finish(engine, "batch_new", "d", {**_batch("batch_new", 1001.0), "status": "cancelled"}, [])
        assert bs.finish(engine, "batch_old", "c", {**_batch("batch_old", 1000.0), "status": "completed"}, [])
        assert bs.claim_next(engine, "e", 9999.0, 30.0) is None  # both ended
        assert bs.load(engine, "batch_new", "key_1")["status"] == "cancelled"
    finally:
        engine.dispose()


def test_batches_made_in_the_same_second_are_listed_newest_first_and_run_oldest_first(db_url):
    # Their `created_at` is whole seconds (OpenAI's); the row keeps the instant, so the order is theirs, not the ids'.
    engine = database.open_engine(db_url)
    database.migrate(engine)
    try:
        ids = ["batch_c", "batch_a", "batch_b"]  # made in this order, within one second; ids in another
        for i, batch_id in enumerate(ids):
            bs.create(engine, _batch(batch_id, 1000.0), None, 1000.0 + 0.1 * i)
        page, has_more = bs.list_page(engine, None, after=None, limit=10)
        assert [b["id"] for b in page] == ids[::-1] and not has_more
        assert bs.claim_next(engine, "a", 2000.0, 30.0)[0] == "batch_c"
    finally:
        engine.dispose()
