"""Stored Responses on SQLite and the real PostgreSQL: `previous_response_id` continues a conversation (the expert
receives the whole history), `responses.retrieve` / `input_items.list` / `delete` through the official client,
streams stored before their last event, each API key seeing only its own, survival across a restart, expiry."""

from __future__ import annotations

import asyncio

import openai
import pytest

from switchboard.storage import database
from switchboard.storage.responses import UNAVAILABLE_BACKOFF_S, ResponseStore, StoreUnavailable
from switchboard.testing.canned_upstream import Canned
from switchboard.testing.servers import serve_in_thread

from .helpers import keyed_storing_app, storing_app


def test_a_conversation_continues_by_previous_response_id_and_survives_a_restart(db_url, upstream):
    recording, upstream_url = upstream
    with serve_in_thread(storing_app(db_url, upstream_url)) as base, openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0) as client:
        first = client.responses.create(model="rec", instructions="Be brief.", input="My name is Ada.")
        assert first.store is True and first.output_text == "recorded"
        head = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "up"}
        recording.queue("/chat/completions", Canned(sse=[{**head, "choices": [{"index": 0, "delta": {"content": "recorded"}, "finish_reason": None}]},
                                                         {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]))
        with client.responses.stream(model="rec", previous_response_id=first.id, input="What is my name?") as stream:
            second = stream.get_final_response()
        assert second.store is True and second.previous_response_id == first.id
        # instructions are not carried over (OpenAI's rule); the earlier input and output are
        assert recording.last.body["messages"] == [{"role": "user", "content": "My name is Ada."}, {"role": "assistant", "content": "recorded"},
                                                   {"role": "user", "content": "What is my name?"}]
        third = client.responses.create(model="rec", previous_response_id=second.id, input=[{"role": "user", "content": "Thanks."}])
        assert [m["content"] for m in recording.last.body["messages"]] == ["My name is Ada.", "recorded", "What is my name?", "recorded", "Thanks."]
        assert client.responses.retrieve(first.id).to_dict() == first.to_dict()
        with pytest.raises(openai.BadRequestError, match="as a stream is not supported"):
            list(client.responses.retrieve(first.id, stream=True))
    # A new gateway on the same database: the stored conversation is still there.
    with serve_in_thread(storing_app(db_url, upstream_url)) as base, openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0) as client:
        assert client.responses.retrieve(third.id).output_text == "recorded"
        items = client.responses.input_items.list(third.id)
        texts = [item.content[0].text for item in items.data]
        assert texts == ["Thanks.", "recorded", "What is my name?", "recorded", "My name is Ada."]  # newest first, as OpenAI lists them
        assert all(item.id for item in items.data) and items.has_more is False
        assert [item.role for item in items.data] == ["user", "assistant", "user", "assistant", "user"]
        assert [item.content[0].type for item in items.data] == ["input_text", "output_text", "input_text", "output_text", "input_text"]
        page = client.responses.input_items.list(third.id, limit=2, order="asc")
        assert len(page.data) == 2 and page.has_more is True
        rest = client.responses.input_items.list(third.id, limit=10, order="asc", after=page.data[-1].id)
        assert len(rest.data) == 3 and rest.has_more is False
        client.responses.delete(first.id)
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(first.id)
        with pytest.raises(openai.NotFoundError):
            client.responses.create(model="rec", previous_response_id=first.id, input="Hi")
        with pytest.raises(openai.NotFoundError):
            client.responses.delete(first.id)


def test_store_false_and_storage_without_prompts_store_nothing(db_url, upstream):
    _, upstream_url = upstream
    with serve_in_thread(storing_app(db_url, upstream_url)) as base, openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0) as client:
        unstored = client.responses.create(model="rec", input="Hi", store=False)
        assert unstored.store is False
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(unstored.id)
    with serve_in_thread(storing_app(db_url, upstream_url, more=", store_prompts: false")) as base, \
            openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0) as client:
        assert client.responses.create(model="rec", input="Hi").store is False
        with pytest.raises(openai.BadRequestError, match="store_prompts"):
            client.responses.create(model="rec", input="Hi", previous_response_id=unstored.id)


def test_each_key_sees_only_its_own_responses(db_url, upstream):
    _, upstream_url = upstream
    app, secrets = keyed_storing_app(db_url, upstream_url)
    with serve_in_thread(app) as base:
        acme, globex = (openai.OpenAI(base_url=base + "/v1", api_key=s, max_retries=0) for s in secrets)
        mine = acme.responses.create(model="rec", input="A secret.")
        assert acme.responses.retrieve(mine.id).id == mine.id
        acme.responses.create(model="rec", input="More.", previous_response_id=mine.id)
        with pytest.raises(openai.NotFoundError):
            globex.responses.retrieve(mine.id)
        with pytest.raises(openai.NotFoundError):
            globex.responses.create(model="rec", input="Tell me.", previous_response_id=mine.id)
        with pytest.raises(openai.NotFoundError):
            globex.responses.delete(mine.id)
        assert acme.responses.retrieve(mine.id).id == mine.id


def test_expired_responses_are_not_served_and_are_deleted(db_url):
    engine = database.open_engine(db_url)
    database.migrate(engine)
    now = [1_000_000.0]

    async def run(fn):
        return await asyncio.to_thread(fn, engine)

    async def scenario():
        store = ResponseStore(run, retention_s=100.0, clock=lambda: now[0])
        await store.save("resp_old", None, {"id": "resp_old"}, [{"type": "message", "role": "user", "content": "x"}])
        assert (await store.load("resp_old", None)).body == {"id": "resp_old"}
        assert await store.load("resp_old", "key-1") is None  # another key's
        now[0] += 101
        assert await store.load("resp_old", None) is None  # expired: never served
        now[0] += 3600
        await store.save("resp_new", None, {"id": "resp_new"}, [])  # an hour since the last purge: old rows go
        with engine.connect() as connection:
            from sqlalchemy import select

            from switchboard.storage.models import responses_table
            return [row[0] for row in connection.execute(select(responses_table.c.id))]

    assert asyncio.run(scenario()) == ["resp_new"]
    engine.dispose()


def test_saves_arriving_during_a_write_are_committed_together_and_failures_reach_each_caller(tmp_path):
    engine = database.open_engine(f"sqlite:///{tmp_path / 'r.db'}")
    database.migrate(engine)
    calls: list[int] = []
    failing = [False]

    async def run(fn):
        calls.append(1)
        await asyncio.sleep(0.05)  # a write in flight: the other saves queue behind it
        if failing[0]:
            raise OSError("disk full")
        return await asyncio.to_thread(fn, engine)

    async def scenario():
        store = ResponseStore(run, retention_s=3600.0)
        first = asyncio.create_task(store.save("resp_0", None, {"id": "resp_0"}, []))
        await asyncio.sleep(0.01)  # its write is in flight
        await asyncio.gather(first, *(store.save(f"resp_{i}", None, {"id": f"resp_{i}"}, []) for i in range(1, 20)))
        assert len(calls) == 2  # the first save alone, then the 19 that arrived meanwhile in one transaction
        assert all([(await store.load(f"resp_{i}", None)) is not None for i in range(20)])
        failing[0] = True
        results = await asyncio.gather(*(store.save(f"resp_x{i}", None, {}, []) for i in range(3)), return_exceptions=True)
        assert all(isinstance(r, OSError) for r in results)

    asyncio.run(scenario())
    engine.dispose()


def test_after_a_database_failure_calls_fail_at_once_for_the_backoff(tmp_path):
    """An outage must not cost every answer a connection timeout: after a failed call the store does not try
    again for UNAVAILABLE_BACKOFF_S (the gateway answers unstored, or a 503 for a read), then tries again."""
    engine = database.open_engine(f"sqlite:///{tmp_path / 'r.db'}")
    database.migrate(engine)
    now, calls, down = [0.0], [], [True]

    async def run(fn):
        calls.append(1)
        if down[0]:
            raise OSError("connection refused")
        return await asyncio.to_thread(fn, engine)

    async def scenario():
        store = ResponseStore(run, retention_s=3600.0, clock=lambda: now[0])
        with pytest.raises(OSError):
            await store.save("resp_1", None, {}, [])
        for attempt in (store.save("resp_2", None, {}, []), store.load("resp_1", None), store.remove("resp_1", None)):
            with pytest.raises(StoreUnavailable):
                await attempt
        assert len(calls) == 1
        down[0] = False
        now[0] += UNAVAILABLE_BACKOFF_S
        await store.save("resp_3", None, {"id": "resp_3"}, [])
        assert (await store.load("resp_3", None)).body == {"id": "resp_3"} and len(calls) == 3

    asyncio.run(scenario())
    engine.dispose()
