"""Stored chat completions (`store: true`) on SQLite and the real PostgreSQL, through the official client:
`chat.completions.retrieve` / `list` (pages, order, `model` and `metadata` filters) / `update` / `delete` /
`messages.list`; streams kept as they add up (tool calls, n > 1, usage the client did not ask for), relayed
upstream answers relabelled with the gateway's id, each API key seeing only its own, a restart, storage off,
bad metadata, expiry."""

from __future__ import annotations

import asyncio

import openai
import pytest

from switchboard.storage import database
from switchboard.storage.chat_completions import ChatCompletionStore, StoredRow
from switchboard.testing.canned_upstream import Canned
from switchboard.testing.servers import serve_in_thread

from .helpers import keyed_storing_app, storing_app

USER = [{"role": "user", "content": "Hi"}]


def _client(base: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)


def _tool_stream() -> Canned:
    """An upstream's streamed tool call, as OpenAI streams one (its own, repeated id)."""
    head = {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 7, "model": "up"}
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
    return Canned(sse=[
        {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": None, "tool_calls": [call]}, "finish_reason": None}]},
        {**head, "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}, "finish_reason": None}]},
        {**head, "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}, "finish_reason": None}]},
        {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {**head, "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}},
    ])


def test_whole_and_streamed_answers_are_kept_as_the_client_saw_them_and_survive_a_restart(db_url, upstream):
    recording, upstream_url = upstream
    with serve_in_thread(storing_app(db_url, upstream_url)) as base, _client(base) as client:
        whole = client.chat.completions.create(model="sim", messages=USER, max_tokens=5, store=True, metadata={"app": "demo"})
        kept = client.chat.completions.retrieve(whole.id)
        assert kept.choices == whole.choices and kept.usage == whole.usage and kept.model == "sim"
        assert kept.to_dict()["metadata"] == {"app": "demo"}

        # n = 2, streamed without asking for usage: the client gets no usage chunk, the stored answer has usage
        chunks = list(client.chat.completions.create(model="sim", messages=USER, max_tokens=4, n=2, stream=True, store=True))
        assert all(c.usage is None for c in chunks) and len({c.id for c in chunks}) == 1
        streamed = client.chat.completions.retrieve(chunks[0].id)
        for i in (0, 1):
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == i)
            assert streamed.choices[i].message.content == text and streamed.choices[i].finish_reason == "length"
        assert streamed.usage.completion_tokens == 8 and streamed.object == "chat.completion"

        # a relayed upstream's tool-call stream, through the client's stream helper
        recording.queue("/chat/completions", _tool_stream())
        with client.chat.completions.stream(model="rec", messages=USER, store=True) as stream:
            final = stream.get_final_completion()
        assert final.id.startswith("chatcmpl-") and final.id != "chatcmpl-up"  # relabelled: the gateway's id
        call = client.chat.completions.retrieve(final.id).choices[0]
        assert call.finish_reason == "tool_calls" and call.message.tool_calls[0].id == "call_1"
        assert call.message.tool_calls[0].function.name == "get_weather" and call.message.tool_calls[0].function.arguments == '{"city": "Paris"}'
        assert client.chat.completions.retrieve(final.id).usage.total_tokens == 13

        # two relayed whole answers with the upstream's one id are two stored completions
        first, second = (client.chat.completions.create(model="rec", messages=USER, store=True) for _ in range(2))
        assert first.id != second.id and "chatcmpl-rec" not in (first.id, second.id)
        assert client.chat.completions.retrieve(second.id).choices[0].message.content == "recorded"

        unkept = client.chat.completions.create(model="sim", messages=USER, max_tokens=2)  # store defaults to false
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.retrieve(unkept.id)
    with serve_in_thread(storing_app(db_url, upstream_url)) as base, _client(base) as client:
        assert client.chat.completions.retrieve(whole.id).choices == whole.choices
        assert [c.id for c in client.chat.completions.list()] == [whole.id, streamed.id, final.id, first.id, second.id]


def test_list_pages_filters_update_messages_and_delete(db_url, upstream):
    _, upstream_url = upstream
    with serve_in_thread(storing_app(db_url, upstream_url)) as base, _client(base) as client:
        ids = []
        for i in range(5):
            model = "sim" if i % 2 == 0 else "rec"
            ids.append(client.chat.completions.create(model=model, messages=USER, max_tokens=2, store=True, metadata={"n": str(i), "team": "a" if i < 3 else "b"}).id)
        page = client.chat.completions.list(limit=2)
        assert [c.id for c in page.data] == ids[:2] and page.has_more is True
        assert [c.id for c in client.chat.completions.list(limit=2)] == ids  # the client follows the pages
        assert [c.id for c in client.chat.completions.list(order="desc", limit=3)] == ids[::-1]
        assert [c.id for c in client.chat.completions.list(model="rec")] == [ids[1], ids[3]]
        assert [c.id for c in client.chat.completions.list(metadata={"team": "a"})] == ids[:3]
        assert [c.id for c in client.chat.completions.list(metadata={"team": "a", "n": "1"})] == [ids[1]]
        assert client.chat.completions.list(metadata={"team": "c"}).data == []
        with pytest.raises(openai.BadRequestError, match="after"):
            client.chat.completions.list(after="chatcmpl-none")
        with pytest.raises(openai.BadRequestError, match="limit"):
            client.chat.completions.list(limit=101)

        updated = client.chat.completions.update(ids[0], metadata={"team": "b", "reviewed": "yes"})
        assert updated.to_dict()["metadata"] == {"team": "b", "reviewed": "yes"}  # replaced, not merged
        assert [c.id for c in client.chat.completions.list(metadata={"team": "b"})] == [ids[0], ids[3], ids[4]]
        assert client.chat.completions.retrieve(ids[0]).to_dict()["metadata"]["reviewed"] == "yes"
        with pytest.raises(openai.BadRequestError, match="metadata"):
            client.chat.completions.update(ids[0], metadata={"k" * 65: "v"})
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.update("chatcmpl-none", metadata={})

        assert client.chat.completions.delete(ids[2]).deleted is True
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.retrieve(ids[2])
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.delete(ids[2])
        assert ids[2] not in [c.id for c in client.chat.completions.list(metadata={"team": "a"})]

        conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]}]
        kept = client.chat.completions.create(model="sim", messages=conversation, max_tokens=2, store=True)
        messages = client.chat.completions.messages.list(kept.id)
        assert [m.role for m in messages] == ["system", "user"] and len({m.id for m in messages}) == 2
        assert messages.data[0].content == "Be brief." and messages.data[0].content_parts is None
        assert messages.data[1].content == "Hello there" and [p.text for p in messages.data[1].content_parts] == ["Hello ", "there"]
        newest = client.chat.completions.messages.list(kept.id, order="desc", limit=1)
        assert newest.data[0].role == "user" and newest.has_more is True


def test_each_key_sees_only_its_own_completions(db_url, upstream):
    _, upstream_url = upstream
    app, secrets = keyed_storing_app(db_url, upstream_url)
    with serve_in_thread(app) as base:
        acme, globex = (_client(base, s) for s in secrets)
        mine = acme.chat.completions.create(model="sim", messages=USER, max_tokens=2, store=True, metadata={"t": "x"})
        streamed = [c.id for c in acme.chat.completions.create(model="sim", messages=USER, max_tokens=2, store=True, stream=True)][0]
        assert [c.id for c in acme.chat.completions.list()] == [mine.id, streamed]  # a stream is kept as its key's too
        acme.chat.completions.delete(streamed)
        assert globex.chat.completions.list().data == []
        assert globex.chat.completions.list(metadata={"t": "x"}).data == []
        for attempt in (lambda: globex.chat.completions.retrieve(mine.id), lambda: globex.chat.completions.messages.list(mine.id),
                        lambda: globex.chat.completions.update(mine.id, metadata={}), lambda: globex.chat.completions.delete(mine.id)):
            with pytest.raises(openai.NotFoundError):
                attempt()
        with pytest.raises(openai.BadRequestError, match="after"):  # another key's id is no cursor either
            globex.chat.completions.list(after=mine.id)
        assert acme.chat.completions.retrieve(mine.id).to_dict()["metadata"] == {"t": "x"}


def test_storage_without_prompts_keeps_nothing_and_says_why(db_url, upstream):
    _, upstream_url = upstream
    with serve_in_thread(storing_app(db_url, upstream_url, more=", store_prompts: false")) as base, _client(base) as client:
        answer = client.chat.completions.create(model="sim", messages=USER, max_tokens=2, store=True)
        with pytest.raises(openai.NotFoundError, match="store_prompts"):
            client.chat.completions.retrieve(answer.id)
        with pytest.raises(openai.BadRequestError, match="store_prompts"):
            client.chat.completions.list()


def test_metadata_beyond_openai_limits_is_a_400_naming_it(tmp_path, upstream):
    _, upstream_url = upstream
    with serve_in_thread(storing_app(f"sqlite:///{tmp_path / 'r.db'}", upstream_url)) as base, _client(base) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="sim", messages=USER, store=True, metadata={str(i): "v" for i in range(17)})
        assert caught.value.body["param"] == "metadata"
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="sim", messages=USER, store=True, metadata={"k": "v" * 513})
        assert caught.value.body["param"].startswith("metadata")


def test_expired_completions_are_not_served_and_are_deleted(db_url):
    engine = database.open_engine(db_url)
    database.migrate(engine)
    now = [1_000_000.0]

    async def run(fn):
        return await asyncio.to_thread(fn, engine)

    def row(completion_id: str) -> StoredRow:
        return StoredRow(completion_id, None, now[0], "m", {"id": completion_id, "metadata": {"a": "b"}}, [{"id": completion_id + "-0", "role": "user"}])

    async def scenario():
        store = ChatCompletionStore(run, retention_s=100.0, clock=lambda: now[0])
        await store.save(row("chatcmpl-old"))
        assert (await store.load("chatcmpl-old", None))[0]["id"] == "chatcmpl-old"
        assert await store.load("chatcmpl-old", "key-1") is None  # another key's
        now[0] += 101
        assert await store.load("chatcmpl-old", None) is None  # expired: never served, listed or updated
        assert await store.page(None, model=None, metadata={"a": "b"}, after=None, limit=20, order="asc") == ([], False)
        assert await store.set_metadata("chatcmpl-old", None, {}) is None
        now[0] += 3600
        await store.save(row("chatcmpl-new"))  # an hour since the last purge: old rows go, their metadata too
        with engine.connect() as connection:
            from sqlalchemy import select

            from switchboard.storage.models import chat_completion_metadata_table, chat_completions_table
            return ([r[0] for r in connection.execute(select(chat_completions_table.c.id))],
                    [r[0] for r in connection.execute(select(chat_completion_metadata_table.c.completion_id))])

    assert asyncio.run(scenario()) == (["chatcmpl-new"], ["chatcmpl-new"])
    engine.dispose()


def test_a_database_that_fails_costs_the_answer_nothing():
    """The answer goes out (unstored, logged) when the write fails, and a stream too; reads then fail fast."""
    from switchboard.gateway.responses import SSE_DONE, JSONBytesResponse, SSEResponse
    from switchboard.gateway.stored_chats.endpoints import StoredChats
    from switchboard.storage.kept import StoreUnavailable

    calls = []

    async def run(fn):
        calls.append(fn)
        raise OSError("connection refused")

    body = {"model": "m", "messages": USER, "store": True}
    whole = b'{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[],"usage":null}'

    async def chunks():
        yield b'data: {"id":"chatcmpl-2","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"x"},"finish_reason":"stop"}]}\n\n' + SSE_DONE

    async def scenario():
        kept = StoredChats(ChatCompletionStore(run, retention_s=60.0), max_body_bytes=1 << 20)
        answer = await kept.keep(JSONBytesResponse(whole, {"x-request-id": "chatcmpl-1"}), body, kept.tap())
        assert answer.body == whole and len(calls) == 1
        tap = kept.tap()
        stream = await kept.keep(SSEResponse(chunks(), {"x-request-id": "chatcmpl-2"}), body, tap)
        sent = b"".join([c async for c in stream.chunks])
        assert sent.endswith(SSE_DONE) and b'"content":"x"' in sent and tap.is_complete
        assert len(calls) == 1  # within the backoff: not tried again
        with pytest.raises(StoreUnavailable):
            await kept.store.load("chatcmpl-1", None)

    asyncio.run(scenario())
