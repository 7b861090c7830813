"""What the stores of user-made objects (stored Responses, stored chat completions, conversations) share: calls to
the request log's database from the event loop with a short backoff after a failure (`KeptStore`); for objects that
expire, a group commit and the purge of expired rows (`ExpiringStore`).

Each store saves rows of its own shape with its own blocking functions; these classes only schedule them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from sqlalchemy import Engine, Table, and_, or_, select

log = logging.getLogger("switchboard.storage")
PURGE_INTERVAL_S = 3600.0
UNAVAILABLE_BACKOFF_S = 5.0
"""After a failed database call, calls fail at once for this long: an outage costs a request nothing, rather than
a connection timeout each (answers go out unstored; reads are a 503 with this Retry-After)."""


class StoreUnavailable(Exception):
    """The database failed a moment ago; not tried again until the backoff has passed."""


Order = Literal["asc", "desc"]
"""A list's order by creation: oldest first, or newest first."""


def utc(unix_s: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(unix_s, dt.timezone.utc)


def unix_s(value: dt.datetime) -> float:
    """A stored time as a Unix time (SQLite returns naive datetimes, in UTC)."""
    return (value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)).timestamp()


def owned_by(table: Table, key_id: str | None) -> Any:
    """The rows of `key_id` (None: the rows made with auth off)."""
    return table.c.key_id.is_(None) if key_id is None else table.c.key_id == key_id


def cursor_page(connection: Any, table: Table, query: Any, *, visible: Any, after: str | None, limit: int, order: Order) -> tuple[list[Any], bool] | None:
    """Up to `limit` rows of `query` (a select over `table`, which has `id` and `created_at`), oldest first for
    `asc`, starting after the row `after`, and whether more follow; None if `after` names no row that `visible`
    (a where-clause) lets the caller see. Ordered by creation time, then id: a total order, so pages never repeat
    or skip a row made in the same instant."""
    c = table.c
    if after is not None:
        cursor = connection.execute(select(c.created_at).where(visible, c.id == after)).first()
        if cursor is None:
            return None
        at = cursor[0]
        later = or_(c.created_at > at, and_(c.created_at == at, c.id > after))
        earlier = or_(c.created_at < at, and_(c.created_at == at, c.id < after))
        query = query.where(later if order == "asc" else earlier)
    ordering = (c.created_at.asc(), c.id.asc()) if order == "asc" else (c.created_at.desc(), c.id.desc())
    rows = list(connection.execute(query.order_by(*ordering).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


class KeptStore:
    """Awaitable access to one kind of stored object. `run(fn)` runs `fn(engine)` in a worker thread on the
    request log's database (`RequestLog.read`); every call raises if the database is down (the caller says so to
    its client), and for `UNAVAILABLE_BACKOFF_S` after a failure raises `StoreUnavailable` without trying."""

    enabled = True

    def __init__(self, run: Callable[[Callable[[Engine], Any]], Awaitable[Any]], clock: Callable[[], float] = time.time) -> None:
        self.run = run
        self.clock = clock
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


    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """`fn(engine, *args, **kwargs)` in the worker thread, as `_call` runs it."""
        return await self._call(lambda engine: fn(engine, *args, **kwargs))


class ExpiringStore(KeptStore):
    """A `KeptStore` whose objects are saved group-committed and expire after `retention_s`.
    `save_rows(engine, rows)` writes a batch of rows in one transaction; `purge_before(engine, before_s)` deletes
    the rows made before a Unix time and returns how many. `what` names the objects in log lines."""

    def __init__(self, run: Callable[[Callable[[Engine], Any]], Awaitable[Any]], retention_s: float, *,
                 save_rows: Callable[[Engine, list[Any]], None], purge_before: Callable[[Engine, float], int], what: str,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(run, clock)
        self.retention_s = retention_s
        self.save_rows = save_rows
        self.purge_before = purge_before
        self.what = what
        self.purged_at = clock()
        self._pending: list[tuple[Any, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    def not_before_s(self) -> float:
        """Rows made before this Unix time have expired: never served."""
        return self.clock() - self.retention_s

    async def _save(self, row: Any) -> None:
        """Returns once `row` is committed. Saves that arrive while a write is in flight are committed together in
        the next transaction (group commit): one fsync for many answers under load. Expired rows are purged at most
        once every `PURGE_INTERVAL_S`, after a save."""
        now = self.clock()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((row, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_pending(), name=f"switchboard-{self.what.replace(' ', '-')}-store")
        await done
        if now - self.purged_at >= PURGE_INTERVAL_S:
            self.purged_at = now
            num = await self._call(lambda engine: self.purge_before(engine, now - self.retention_s))
            log.info("%s: %d expired ones deleted", self.what, num)

    async def _write_pending(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            rows = [row for row, _ in batch]
            try:
                await self._call(lambda engine: self.save_rows(engine, rows))
            except Exception as exc:  # noqa: BLE001 — each waiting save raises it to its caller
                for _, done in batch:
                    if not done.done():  # a caller that went away cancelled its own
                        done.set_exception(exc)
            else:
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)


class DisabledStore:
    """Storage off (`storage.enabled: false`) or prompts not kept (`storage.store_prompts: false`): nothing is
    stored; `why` says which."""

    enabled = False

    def __init__(self, why: str) -> None:
        self.why = why
