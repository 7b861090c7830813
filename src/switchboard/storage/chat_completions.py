"""Stored chat completions (`POST /v1/chat/completions` with `store: true`): the blocking queries, and the store
the gateway awaits.

A row holds the completion object as answered (its `metadata` included) and the request's messages; the metadata
pairs are also rows of their own, so the list's filters are plain queries. Rows are scoped to the API key that
made them (none when auth is off) and expire after the retention period, as stored Responses do
(storage/kept.py).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from sqlalchemy import Engine, delete, exists, select, update

from switchboard.storage.database import insert_or_ignore
from switchboard.storage.kept import DisabledStore, ExpiringStore, Order, cursor_page, owned_by, utc
from switchboard.storage.models import chat_completion_metadata_table as meta_table
from switchboard.storage.models import chat_completions_table as table

@dataclasses.dataclass(frozen=True)
class StoredRow:
    """A row to store: the completion object (with its `metadata`) and the request's messages (with their ids)."""

    completion_id: str
    key_id: str | None
    created_s: float
    model: str
    body: dict[str, Any]
    messages: list[dict[str, Any]]


# ---- blocking (a worker thread) ----

def save_many(engine: Engine, rows: list[StoredRow]) -> None:
    """Writes the rows, and their metadata pairs, in one transaction (a row already there is left as it is)."""
    values = [{"id": r.completion_id, "key_id": r.key_id, "created_at": utc(r.created_s), "model": r.model,
               "body": orjson.dumps(r.body).decode(), "messages": orjson.dumps(r.messages).decode()} for r in rows]
    pairs = [{"completion_id": r.completion_id, "name": k, "value": v} for r in rows for k, v in (r.body.get("metadata") or {}).items()]
    with engine.begin() as connection:
        connection.execute(insert_or_ignore(engine, table), values)
        if pairs:
            connection.execute(insert_or_ignore(engine, meta_table), pairs)


def _mine(query: Any, key_id: str | None, not_before_s: float) -> Any:
    """`query` limited to `key_id`'s rows that have not expired."""
    c = table.c
    return query.where(owned_by(table, key_id), c.created_at >= utc(not_before_s))


def load(engine: Engine, completion_id: str, key_id: str | None, not_before_s: float) -> tuple[str, str] | None:
    """(body, messages) as stored, if the row is `key_id`'s and was made at or after `not_before_s`."""
    query = _mine(select(table.c.body, table.c.messages), key_id, not_before_s).where(table.c.id == completion_id)
    with engine.connect() as connection:
        row = connection.execute(query).first()
    return None if row is None else (row[0], row[1])


def list_page(engine: Engine, key_id: str | None, not_before_s: float, *, model: str | None, metadata: Mapping[str, str],
              after: str | None, limit: int, order: Order) -> tuple[list[str], bool] | None:
    """Up to `limit` bodies of `key_id`'s completions, oldest first for `asc`, made by `model` (if given) and
    carrying every `metadata` pair, starting after the completion `after`; and whether more follow. None if `after`
    names none of `key_id`'s unexpired completions. Ordered by creation time, then id (a total order, so pages never
    repeat or skip a row made in the same instant)."""
    c = table.c
    query = _mine(select(c.body), key_id, not_before_s)
    if model is not None:
        query = query.where(c.model == model)
    for name, value in metadata.items():
        m = meta_table.c
        query = query.where(exists().where(m.completion_id == c.id, m.name == name, m.value == value))
    with engine.connect() as connection:
        found = cursor_page(connection, table, query, visible=_mine(select(c.id), key_id, not_before_s).whereclause,
                            after=after, limit=limit, order=order)
    return None if found is None else ([row[0] for row in found[0]], found[1])


def set_metadata(engine: Engine, completion_id: str, key_id: str | None, not_before_s: float, metadata: Mapping[str, str]) -> str | None:
    """Replaces the completion's metadata (OpenAI's update: the new set, not a merge); returns the new body, or
    None if there is no such completion of `key_id`'s."""
    with engine.begin() as connection:
        row = connection.execute(_mine(select(table.c.body), key_id, not_before_s).where(table.c.id == completion_id)).first()
        if row is None:
            return None
        body = orjson.loads(row[0])
        body["metadata"] = dict(metadata)
        text = orjson.dumps(body).decode()
        connection.execute(update(table).where(table.c.id == completion_id).values(body=text))
        connection.execute(delete(meta_table).where(meta_table.c.completion_id == completion_id))
        if metadata:
            connection.execute(meta_table.insert(), [{"completion_id": completion_id, "name": k, "value": v} for k, v in metadata.items()])
    return text


def remove(engine: Engine, completion_id: str, key_id: str | None) -> bool:
    c = table.c
    with engine.begin() as connection:
        removed = connection.execute(delete(table).where(c.id == completion_id, owned_by(table, key_id))).rowcount > 0
        if removed:
            connection.execute(delete(meta_table).where(meta_table.c.completion_id == completion_id))
    return removed


def purge(engine: Engine, before_s: float) -> int:
    with engine.begin() as connection:
        expired = select(table.c.id).where(table.c.created_at < utc(before_s))
        connection.execute(delete(meta_table).where(meta_table.c.completion_id.in_(expired)))
        return connection.execute(delete(table).where(table.c.created_at < utc(before_s))).rowcount


# ---- the gateway's side ----

class ChatCompletionStore(ExpiringStore):
    """Awaitable access to stored chat completions (storage/kept.py: group commit, expiry, and the backoff after a failure)."""

    def __init__(self, run: Callable[[Callable[[Engine], Any]], Awaitable[Any]], retention_s: float, clock: Callable[[], float] = time.time) -> None:
        super().__init__(run, retention_s, save_rows=save_many, purge_before=purge, what="stored chat completions", clock=clock)

    async def save(self, row: StoredRow) -> None:
        """Returns once the completion is committed (group-committed with saves arriving meanwhile)."""
        await self._save(row)

    async def load(self, completion_id: str, key_id: str | None) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """(the completion object, the request's messages), or None if `key_id` has no such completion."""
        found = await self._call(lambda engine: load(engine, completion_id, key_id, self.not_before_s()))
        return None if found is None else (orjson.loads(found[0]), orjson.loads(found[1]))

    async def page(self, key_id: str | None, *, model: str | None, metadata: Mapping[str, str], after: str | None, limit: int,
                   order: Order) -> tuple[list[dict[str, Any]], bool] | None:
        """A page of `key_id`'s completions and whether more follow; None if `after` names none (`list_page`)."""
        found = await self._call(lambda engine: list_page(engine, key_id, self.not_before_s(), model=model, metadata=metadata,
                                                          after=after, limit=limit, order=order))
        return None if found is None else ([orjson.loads(b) for b in found[0]], found[1])

    async def set_metadata(self, completion_id: str, key_id: str | None, metadata: Mapping[str, str]) -> dict[str, Any] | None:
        text = await self._call(lambda engine: set_metadata(engine, completion_id, key_id, self.not_before_s(), metadata))
        return None if text is None else orjson.loads(text)

    async def remove(self, completion_id: str, key_id: str | None) -> bool:
        return bool(await self._call(lambda engine: remove(engine, completion_id, key_id)))


class DisabledChatCompletionStore(DisabledStore):
    """Storage off, or prompts not kept: no chat completion is stored (`store: true` is answered, not kept)."""
