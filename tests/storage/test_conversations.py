"""OpenAI's Conversations API on SQLite and the real PostgreSQL, through the official client: a conversation made
with items and metadata, read, relabelled, its items paged, added, read and deleted; responses given the
conversation (whole and streamed) read its items as their history — the upstream receives them — and append their
input and output; each API key sees only its own; a restart; storage off; items no response could take."""

from __future__ import annotations

import time

import openai
import pytest

from switchboard.testing.canned_upstream import Canned
from switchboard.testing.servers import serve_in_thread

from .helpers import keyed_storing_app, storing_app


def _client(base: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)


def _texts(items) -> list[tuple[str, str]]:
    return [(item.role, item.content[0].text) for item in items]


def test_a_conversation_is_the_history_responses_read_and_extend(db_url, upstream):
    recording, upstream_url = upstream
    with serve_in_thread(storing_app(db_url, upstream_url)) as base, _client(base) as client:
        conversation = client.conversations.create(items=[{"role": "user", "content": "My name is Ada."},
                                                          {"type": "message", "role": "assistant", "content": "Hello Ada."}],
                                                   metadata={"topic": "names"})
        assert conversation.id.startswith("conv_") and conversation.metadata == {"topic": "names"}
        answer = client.responses.create(model="rec", conversation=conversation.id, input="What is my name?", instructions="Be brief.")
        assert answer.output_text == "recorded" and answer.conversation.id == conversation.id
        assert recording.last.body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "My name is Ada."},
                                                   {"role": "assistant", "content": "Hello Ada."}, {"role": "user", "content": "What is my name?"}]
        head = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "up"}
        recording.queue("/chat/completions", Canned(sse=[{**head, "choices": [{"index": 0, "delta": {"content": "recorded"}, "finish_reason": None}]},
                                                         {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]))
        with client.responses.stream(model="rec", conversation={"id": conversation.id}, input=[{"role": "user", "content": "Thanks."}]) as stream:
            assert stream.get_final_response().conversation.id == conversation.id
        assert [m["content"] for m in recording.last.body["messages"]] == ["My name is Ada.", "Hello Ada.", "What is my name?", "recorded", "Thanks."]
        items = client.conversations.items.list(conversation.id, order="asc")
        assert _texts(items.data) == [("user", "My name is Ada."), ("assistant", "Hello Ada."), ("user", "What is my name?"),
                                      ("assistant", "recorded"), ("user", "Thanks."), ("assistant", "recorded")]
        assert all(item.id for item in items.data) and len({item.id for item in items.data}) == 6
    with serve_in_thread(storing_app(db_url, upstream_url)) as base, _client(base) as client:  # a new gateway, the same database
        assert client.conversations.retrieve(conversation.id).metadata == {"topic": "names"}
        newest = client.conversations.items.list(conversation.id, limit=2)  # newest first by default, as OpenAI's
        assert _texts(newest.data) == [("assistant", "recorded"), ("user", "Thanks.")] and newest.has_more is True
        rest = client.conversations.items.list(conversation.id, limit=10, after=newest.data[-1].id)
        assert len(rest.data) == 4 and rest.has_more is False
        assert len(list(client.conversations.items.list(conversation.id, limit=2))) == 6  # the client follows the pages


def test_items_and_metadata_are_edited_and_conversations_deleted(db_url, upstream):
    _, upstream_url = upstream
    with serve_in_thread(storing_app(db_url, upstream_url)) as base, _client(base) as client:
        conversation = client.conversations.create()
        assert client.conversations.items.list(conversation.id).data == []
        added = client.conversations.items.create(conversation.id, items=[
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}])
        assert [item.type for item in added.data] == ["message", "function_call", "function_call_output"]
        call = client.conversations.items.retrieve(added.data[1].id, conversation_id=conversation.id)
        assert call.type == "function_call" and call.name == "get_weather"
        assert client.conversations.items.delete(added.data[1].id, conversation_id=conversation.id).id == conversation.id
        assert [item.type for item in client.conversations.items.list(conversation.id, order="asc")] == ["message", "function_call_output"]
        with pytest.raises(openai.NotFoundError):
            client.conversations.items.retrieve(added.data[1].id, conversation_id=conversation.id)
        assert client.conversations.update(conversation.id, metadata={"a": "b"}).metadata == {"a": "b"}
        with pytest.raises(openai.BadRequestError) as refused:  # no response could take it as input
            client.conversations.items.create(conversation.id, items=[{"type": "web_search_call", "id": "ws_1"}])
        assert refused.value.body["param"].startswith("items[0]")
        with pytest.raises(openai.BadRequestError) as refused:
            client.conversations.items.create(conversation.id, items=[{"role": "user", "content": "x"}] * 21)
        assert refused.value.body["param"] == "items"
        with pytest.raises(openai.BadRequestError) as refused:
            client.responses.create(model="rec", conversation=conversation.id, previous_response_id="resp_1", input="x")
        assert refused.value.body["param"] == "conversation"
        assert client.conversations.delete(conversation.id).deleted is True
        for attempt in (lambda: client.conversations.retrieve(conversation.id), lambda: client.conversations.items.list(conversation.id),
                        lambda: client.conversations.delete(conversation.id)):
            with pytest.raises(openai.NotFoundError):
                attempt()
        with pytest.raises(openai.NotFoundError) as missing:
            client.responses.create(model="rec", conversation=conversation.id, input="x")
        assert missing.value.body["param"] == "conversation"


def test_each_key_sees_only_its_own_conversations(db_url, upstream):
    _, upstream_url = upstream
    app, secrets = keyed_storing_app(db_url, upstream_url)
    with serve_in_thread(app) as base:
        acme, globex = (_client(base, s) for s in secrets)
        mine = acme.conversations.create(items=[{"role": "user", "content": "A secret."}])
        item_id = acme.conversations.items.list(mine.id).data[0].id
        for attempt in (lambda: globex.conversations.retrieve(mine.id), lambda: globex.conversations.items.list(mine.id),
                        lambda: globex.conversations.items.retrieve(item_id, conversation_id=mine.id),
                        lambda: globex.conversations.items.create(mine.id, items=[{"role": "user", "content": "x"}]),
                        lambda: globex.conversations.update(mine.id, metadata={}), lambda: globex.conversations.delete(mine.id),
                        lambda: globex.responses.create(model="rec", conversation=mine.id, input="Tell me.")):
            with pytest.raises(openai.NotFoundError):
                attempt()
        assert [item.id for item in acme.conversations.items.list(mine.id)] == [item_id]


def test_storage_without_prompts_keeps_no_conversations(tmp_path, upstream):
    _, upstream_url = upstream
    with serve_in_thread(storing_app(f"sqlite:///{tmp_path / 'r.db'}", upstream_url, more=", store_prompts: false")) as base, _client(base) as client:
        with pytest.raises(openai.BadRequestError, match="store_prompts"):
            client.conversations.create()
        with pytest.raises(openai.BadRequestError, match="store_prompts"):
            client.responses.create(model="rec", conversation="conv_1", input="x")


def test_responses_sent_at_once_to_one_conversation_take_turns(tmp_path, upstream):
    """The second reads the first's turn as history (not the same past twice), and the items alternate; a stream
    the client leaves early gives the turn back at once."""
    import concurrent.futures

    _, upstream_url = upstream
    with serve_in_thread(storing_app(f"sqlite:///{tmp_path / 'log.db'}", upstream_url, slow=True)) as base, _client(base) as client:
        conversation = client.conversations.create(items=[{"role": "user", "content": "Tell me a story."}])
        client.responses.create(model="slow", input="warm up", max_output_tokens=1)  # the slow expert's start, out of the way

        def turn(text: str):
            with _client(base) as own:
                return own.responses.create(model="slow", conversation=conversation.id, input=text, max_output_tokens=40)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(turn, ["First question?", "Second question?"]))
        first, second = sorted(answers, key=lambda a: a.usage.input_tokens)
        assert second.usage.input_tokens > first.usage.input_tokens + 10  # the first's turn (its question, its answer) was in its history
        roles = [item.role for item in client.conversations.items.list(conversation.id, order="asc")]
        assert roles == ["user", "user", "assistant", "user", "assistant"]
        with client.responses.stream(model="slow", conversation=conversation.id, input="A long one.", max_output_tokens=400) as stream:
            for event in stream:
                if event.type == "response.output_text.delta":
                    break  # the client leaves mid-answer
        started = time.monotonic()
        client.responses.create(model="slow", conversation=conversation.id, input="Still there?", max_output_tokens=1)
        assert time.monotonic() - started < 2.0  # not kept waiting for the abandoned stream's 400 tokens (~3 s)


def test_turn_locks_serialize_one_conversation_and_time_out_as_a_409():
    import asyncio

    from switchboard.gateway.conversations import TurnLocks
    from switchboard.gateway.errors import ApiError

    async def scenario():
        locks = TurnLocks(wait_s=0.2)
        release_a = await locks.acquire("conv_a")
        release_b = await locks.acquire("conv_b")  # another conversation: not kept waiting
        with pytest.raises(ApiError) as refused:
            await locks.acquire("conv_a")
        assert (refused.value.status, refused.value.code, refused.value.param) == (409, "conversation_locked", "conversation")
        waiting = asyncio.ensure_future(locks.acquire("conv_a"))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        release_a()
        release_a()  # twice is once
        release_again = await asyncio.wait_for(waiting, 1.0)
        release_again()
        release_b()
        assert locks._locks == {}

    asyncio.run(scenario())


def test_a_turn_is_kept_with_its_stored_response_or_alone_when_not_stored(tmp_path, upstream):
    """Stored (the default), a Response and its turn are written in one commit; with `store: false` the turn is kept
    alone, the Response not at all."""
    from sqlalchemy import create_engine, func, select

    from switchboard.storage.models import conversation_items_table, responses_table

    _, upstream_url = upstream
    db = f"sqlite:///{tmp_path / 'log.db'}"
    with serve_in_thread(storing_app(db, upstream_url)) as base, _client(base) as client:
        conversation = client.conversations.create()
        stored = client.responses.create(model="rec", conversation=conversation.id, input="One.")
        unstored = client.responses.create(model="rec", conversation=conversation.id, input="Two.", store=False)
        assert stored.store is True and unstored.store is False
        assert _texts(client.conversations.items.list(conversation.id, order="asc")) == [
            ("user", "One."), ("assistant", "recorded"), ("user", "Two."), ("assistant", "recorded")]
        assert client.responses.retrieve(stored.id).id == stored.id
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(unstored.id)
    engine = create_engine(db)
    with engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(conversation_items_table)).scalar_one() == 4
        assert connection.execute(select(func.count()).select_from(responses_table)).scalar_one() == 1
    engine.dispose()
