"""Conversations (OpenAI's Conversations API): the blocking queries, and the store the gateway awaits.

A conversation is a row with its metadata; its items are rows in the order they were added (`seq`, an
autoincrement, so appends that race never collide). Scoped to the API key that made it (none when auth is off);
not expired (OpenAI's are not subject to the 30-day retention of stored Responses). Every query takes the key:
another key's conversation is no conversation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import orjson
from sqlalchemy import Engine, delete, select, update

from switchboard.storage.kept import DisabledStore, KeptStore, Order, owned_by, unix_s, utc
from switchboard.storage.models import conversation_items_table as items_table
from switchboard.storage.models import conversations_table as table

UNKNOWN_CURSOR = "unknown cursor"


@dataclasses.dataclass(frozen=True)
class Conversation:
    conversation_id: str
    created_s: float
    metadata: dict[str, str]

    def as_object(self) -> dict[str, Any]:
        """OpenAI's conversation object."""
        return {"id": self.conversation_id, "object": "conversation", "created_at": int(self.created_s), "metadata": self.metadata}


# ---- blocking (a worker thread) ----

def _conversation(connection: Any, conversation_id: str, key_id: str | None) -> Conversation | None:
    c = table.c
    row = connection.execute(select(c.created_at, c["metadata"]).where(c.id == conversation_id, owned_by(table, key_id))).first()
    return None if row is None else Conversation(conversation_id, unix_s(row[0]), orjson.loads(row[1]))


def _add_items(connection: Any, conversation_id: str, items: list[dict[str, Any]]) -> None:
    if items:
        connection.execute(items_table.insert(), [{"conversation_id": conversation_id, "id": item["id"], "item": orjson.dumps(item).decode()}
                                                  for item in items])


def create(engine: Engine, conversation_id: str, key_id: str | None, created_s: float, metadata: Mapping[str, str],
           items: list[dict[str, Any]]) -> None:
    with engine.begin() as connection:
        connection.execute(table.insert().values({"id": conversation_id, "key_id": key_id, "created_at": utc(created_s),
                                                  "metadata": orjson.dumps(dict(metadata)).decode()}))
        _add_items(connection, conversation_id, items)


def load(engine: Engine, conversation_id: str, key_id: str | None) -> Conversation | None:
    with engine.connect() as connection:
        return _conversation(connection, conversation_id, key_id)


def set_metadata(engine: Engine, conversation_id: str, key_id: str | None, metadata: Mapping[str, str]) -> Conversation | None:
    with engine.begin() as connection:
        found = _conversation(connection, conversation_id, key_id)
        if found is None:
            return None
        connection.execute(update(table).where(table.c.id == conversation_id).values({"metadata": orjson.dumps(dict(metadata)).decode()}))
    return dataclasses.replace(found, metadata=dict(metadata))


def remove(engine: Engine, conversation_id: str, key_id: str | None) -> bool:
    with engine.begin() as connection:
        if _conversation(connection, conversation_id, key_id) is None:
            return False
        connection.execute(delete(items_table).where(items_table.c.conversation_id == conversation_id))
        connection.execute(delete(table).where(table.c.id == conversation_id))
    return True


def append(engine: Engine, conversation_id: str, key_id: str | None, items: list[dict[str, Any]]) -> bool:
    """Adds `items` after the conversation's last; False if `key_id` has no such conversation."""
    with engine.begin() as connection:
        return append_on(connection, conversation_id, key_id, items)


def append_on(connection: Any, conversation_id: str, key_id: str | None, items: list[dict[str, Any]]) -> bool:
    """`append` within the caller's transaction (a stored Response's, whose turn it is: one commit for both)."""
    if _conversation(connection, conversation_id, key_id) is None:
        return False
    _add_items(connection, conversation_id, items)
    return True


def all_items(engine: Engine, conversation_id: str, key_id: str | None) -> list[dict[str, Any]] | None:
    """Every item, oldest first (what a response given the conversation reads); None if there is no such conversation."""
    with engine.connect() as connection:
        if _conversation(connection, conversation_id, key_id) is None:
            return None
        rows = connection.execute(select(items_table.c.item).where(items_table.c.conversation_id == conversation_id).order_by(items_table.c.seq))
        return [orjson.loads(row[0]) for row in rows]


def items_page(engine: Engine, conversation_id: str, key_id: str | None, *, after: str | None, limit: int,
               order: Order) -> tuple[list[dict[str, Any]], bool] | str | None:
    """Up to `limit` items after the item `after`, and whether more follow; None if there is no such conversation,
    UNKNOWN_CURSOR if `after` is none of its items."""
    c = items_table.c
    with engine.connect() as connection:
        if _conversation(connection, conversation_id, key_id) is None:
            return None
        query = select(c.item).where(c.conversation_id == conversation_id)
        if after is not None:
            cursor = connection.execute(select(c.seq).where(c.conversation_id == conversation_id, c.id == after)).first()
            if cursor is None:
                return UNKNOWN_CURSOR
            query = query.where(c.seq > cursor[0] if order == "asc" else c.seq < cursor[0])
        rows = [orjson.loads(row[0]) for row in connection.execute(query.order_by(c.seq.asc() if order == "asc" else c.seq.desc()).limit(limit + 1))]
    return rows[:limit], len(rows) > limit


def get_item(engine: Engine, conversation_id: str, key_id: str | None, item_id: str) -> dict[str, Any] | str | None:
    """The item; None if there is no such conversation, "" if it has no such item."""
    c = items_table.c
    with engine.connect() as connection:
        if _conversation(connection, conversation_id, key_id) is None:
            return None
        row = connection.execute(select(c.item).where(c.conversation_id == conversation_id, c.id == item_id)).first()
    return "" if row is None else orjson.loads(row[0])


def delete_item(engine: Engine, conversation_id: str, key_id: str | None, item_id: str) -> Conversation | bool | None:
    """Removes the item and returns its conversation; None if there is no such conversation, False if no such item."""
    c = items_table.c
    with engine.begin() as connection:
        found = _conversation(connection, conversation_id, key_id)
        if found is None:
            return None
        if connection.execute(delete(items_table).where(c.conversation_id == conversation_id, c.id == item_id)).rowcount == 0:
            return False
    return found


# ---- the gateway's side ----

class ConversationStore(KeptStore):
    """Awaitable access to conversations (storage/kept.py: the backoff after a failure; no expiry, no group commit).
    `call(fn, ...)` runs one of the functions above in the worker thread, with the same arguments but the engine."""


class DisabledConversationStore(DisabledStore):
    """Storage off, or prompts not kept: no conversation can be made (a conversation is user content)."""
