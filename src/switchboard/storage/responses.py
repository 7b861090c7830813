"""Stored Responses (`POST /v1/responses` with `store`): the blocking queries, and the store the gateway awaits.

A row holds the Response object and its conversation's input items, so continuing it (`previous_response_id`)
is one read. Rows are scoped to the API key that made them (none when auth is off) and expire after the
retention period (OpenAI keeps them 30 days): an expired row is never served, and old rows are deleted at most
once an hour, on a write.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from sqlalchemy import Engine, delete, select

from switchboard.storage import conversations
from switchboard.storage.database import insert_or_ignore
from switchboard.storage.kept import PURGE_INTERVAL_S, UNAVAILABLE_BACKOFF_S, DisabledStore, ExpiringStore, StoreUnavailable, owned_by, utc
from switchboard.storage.models import responses_table

log = logging.getLogger("switchboard.storage")
__all__ = ["PURGE_INTERVAL_S", "UNAVAILABLE_BACKOFF_S", "DisabledResponseStore", "ResponseStore", "StoreUnavailable", "StoredResponse"]


@dataclasses.dataclass(frozen=True)
class StoredResponse:
    body: dict[str, Any]
    input_items: list[dict[str, Any]]


# ---- blocking (a worker thread) ----

Turn = tuple[str, list[dict[str, Any]]]
"""A conversation's id and the items a stored Response adds to it (its input and output, as stored)."""


def save_many(engine: Engine, rows: list[tuple[str, str | None, float, bytes, bytes, Turn | None]]) -> None:
    """Writes (id, key id, created at (Unix s), body JSON, input items JSON, the turn to append or None) rows in one
    transaction: a Response given a conversation and its turn are committed together. A turn whose conversation is
    gone (deleted meanwhile) is dropped, logged."""
    values = [{"id": i, "key_id": k, "created_at": utc(t), "body": b.decode(), "input_items": items.decode()}
              for i, k, t, b, items, _ in rows]
    with engine.begin() as connection:
        connection.execute(insert_or_ignore(engine, responses_table), values)
        for response_id, key_id, _, _, _, turn in rows:
            if turn is not None and not conversations.append_on(connection, turn[0], key_id, turn[1]):
                log.warning("conversations: %s was deleted before response %s could be added to it", turn[0], response_id)


def _mine(query: Any, response_id: str, key_id: str | None) -> Any:
    c = responses_table.c
    return query.where(c.id == response_id, owned_by(responses_table, key_id))


def load(engine: Engine, response_id: str, key_id: str | None, not_before_s: float) -> tuple[str, str] | None:
    """(body, input items) as stored, if the row is `key_id`'s and was made at or after `not_before_s`."""
    c = responses_table.c
    query = _mine(select(c.body, c.input_items), response_id, key_id).where(c.created_at >= utc(not_before_s))
    with engine.connect() as connection:
        row = connection.execute(query).first()
    return None if row is None else (row[0], row[1])


def remove(engine: Engine, response_id: str, key_id: str | None) -> bool:
    with engine.begin() as connection:
        return connection.execute(_mine(delete(responses_table), response_id, key_id)).rowcount > 0


def purge(engine: Engine, before_s: float) -> int:
    with engine.begin() as connection:
        query = delete(responses_table).where(responses_table.c.created_at < utc(before_s))
        return connection.execute(query).rowcount


# ---- the gateway's side ----

class ResponseStore(ExpiringStore):
    """Awaitable access to stored Responses (storage/kept.py: group commit, expiry, and the backoff after a failure)."""

    def __init__(self, run: Callable[[Callable[[Engine], Any]], Awaitable[Any]], retention_s: float, clock: Callable[[], float] = time.time) -> None:
        super().__init__(run, retention_s, save_rows=save_many, purge_before=purge, what="stored responses", clock=clock)

    async def save(self, response_id: str, key_id: str | None, body: dict[str, Any], input_items: list[dict[str, Any]],
                   turn: Turn | None = None) -> None:
        """Returns once the response — and `turn`, its items appended to its conversation — is committed
        (group-committed with saves arriving meanwhile)."""
        await self._save((response_id, key_id, self.clock(), orjson.dumps(body), orjson.dumps(input_items), turn))

    async def load(self, response_id: str, key_id: str | None) -> StoredResponse | None:
        found = await self._call(lambda engine: load(engine, response_id, key_id, self.not_before_s()))
        return None if found is None else StoredResponse(orjson.loads(found[0]), orjson.loads(found[1]))

    async def remove(self, response_id: str, key_id: str | None) -> bool:
        return bool(await self._call(lambda engine: remove(engine, response_id, key_id)))


class DisabledResponseStore(DisabledStore):
    """Storage off (`storage.enabled: false`) or prompts not kept (`storage.store_prompts: false`): nothing is stored."""
