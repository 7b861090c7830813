"""Stored Responses (`POST /v1/responses` with `store`): the blocking queries, and the store the gateway awaits.

A row holds the Response object and its conversation's input items, so continuing it (`previous_response_id`)
is one read. Rows are scoped to the API key that made them (none when auth is off) and expire after the
retention period (OpenAI keeps them 30 days): an expired row is never served, and old rows are deleted at most
once an hour, on a write.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from sqlalchemy import Engine, delete, select

from switchboard.storage.database import insert_or_ignore
from switchboard.storage.models import responses_table

log = logging.getLogger("switchboard.storage")
PURGE_INTERVAL_S = 3600.0
UNAVAILABLE_BACKOFF_S = 5.0
"""After a failed database call, calls fail at once for this long: an outage costs a request nothing, rather than
a connection timeout each (answers go out unstored; reads are a 503 with this Retry-After)."""


class StoreUnavailable(Exception):
    """The database failed a moment ago; not tried again until the backoff has passed."""


@dataclasses.dataclass(frozen=True)
class StoredResponse:
    body: dict[str, Any]
    input_items: list[dict[str, Any]]


# ---- blocking (a worker thread) ----

def save_many(engine: Engine, rows: list[tuple[str, str | None, float, bytes, bytes]]) -> None:
    """Writes (id, key id, created at (Unix s), body JSON, input items JSON) rows in one transaction."""
    values = [{"id": i, "key_id": k, "created_at": dt.datetime.fromtimestamp(t, dt.timezone.utc), "body": b.decode(), "input_items": items.decode()}
              for i, k, t, b, items in rows]
    with engine.begin() as connection:
        connection.execute(insert_or_ignore(engine, responses_table), values)


def _mine(query: Any, response_id: str, key_id: str | None) -> Any:
    c = responses_table.c
    return query.where(c.id == response_id, c.key_id.is_(None) if key_id is None else c.key_id == key_id)


def load(engine: Engine, response_id: str, key_id: str | None, not_before_s: float) -> tuple[str, str] | None:
    """(body, input items) as stored, if the row is `key_id`'s and was made at or after `not_before_s`."""
    c = responses_table.c
    query = _mine(select(c.body, c.input_items), response_id, key_id).where(c.created_at >= dt.datetime.fromtimestamp(not_before_s, dt.timezone.utc))
    with engine.connect() as connection:
        row = connection.execute(query).first()
    return None if row is None else (row[0], row[1])


def remove(engine: Engine, response_id: str, key_id: str | None) -> bool:
    with engine.begin() as connection:
        return connection.execute(_mine(delete(responses_table), response_id, key_id)).rowcount > 0


def purge(engine: Engine, before_s: float) -> int:
    with engine.begin() as connection:
        query = delete(responses_table).where(responses_table.c.created_at < dt.datetime.fromtimestamp(before_s, dt.timezone.utc))
        return connection.execute(query).rowcount


# ---- the gateway's side ----

class ResponseStore:
    """Awaitable access to stored Responses. `run(fn)` runs `fn(engine)` in a worker thread on the request log's
    database (`RequestLog.read`); every call raises if the database is down (the caller says so to its client),
    and for `UNAVAILABLE_BACKOFF_S` after a failure raises `StoreUnavailable` without trying."""

    enabled = True

    def __init__(self, run: Callable[[Callable[[Engine], Any]], Awaitable[Any]], retention_s: float, clock: Callable[[], float] = time.time) -> None:
        self.run = run
        self.retention_s = retention_s
        self.clock = clock
        self.purged_at = clock()
        self._pending: list[tuple[tuple[str, str | None, float, bytes, bytes], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self.unavailable_until = float("-inf")

    async def _call(self, fn: Callable[[Engine], Any]) -> Any:
        """`fn(engine)` in the worker thread, unless the database failed within the last `UNAVAILABLE_BACKOFF_S`."""
        if self.clock() < self.unavailable_until:
            raise StoreUnavailable(f"the database failed less than {UNAVAILABLE_BACKOFF_S:.0f} s ago")
        try:
            return await self.run(fn)
        except Exception:
            self.unavailable_until = self.clock() + UNAVAILABLE_BACKOFF_S
            raise

    async def save(self, response_id: str, key_id: str | None, body: dict[str, Any], input_items: list[dict[str, Any]]) -> None:
        """Returns once the response is committed. Saves that arrive while a write is in flight are committed
        together in the next transaction (group commit): one fsync for many answers under load."""
        now = self.clock()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(((response_id, key_id, now, orjson.dumps(body), orjson.dumps(input_items)), done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_pending(), name="switchboard-response-store")
        await done
        if now - self.purged_at >= PURGE_INTERVAL_S:
            self.purged_at = now
            num = await self._call(lambda engine: purge(engine, now - self.retention_s))
            log.info("stored responses: %d expired ones deleted", num)

    async def _write_pending(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            rows = [row for row, _ in batch]
            try:
                await self._call(lambda engine: save_many(engine, rows))
            except Exception as exc:  # noqa: BLE001 — each waiting save raises it to its caller
                for _, done in batch:
                    if not done.done():  # a caller that went away cancelled its own
                        done.set_exception(exc)
            else:
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)

    async def load(self, response_id: str, key_id: str | None) -> StoredResponse | None:
        found = await self._call(lambda engine: load(engine, response_id, key_id, self.clock() - self.retention_s))
        return None if found is None else StoredResponse(orjson.loads(found[0]), orjson.loads(found[1]))

    async def remove(self, response_id: str, key_id: str | None) -> bool:
        return bool(await self._call(lambda engine: remove(engine, response_id, key_id)))


class DisabledResponseStore:
    """Storage off (`storage.enabled: false`) or prompts not kept (`storage.store_prompts: false`): nothing is stored."""

    enabled = False
    why = ""

    def __init__(self, why: str) -> None:
        self.why = why
