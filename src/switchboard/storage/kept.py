"""What the stores of user-made objects (stored Responses, stored chat completions, conversations) share: calls to
the request log's database from the event loop with a short backoff after a failure (`KeptStore`); for objects that
expire, a group commit and the purge of expired rows (`ExpiringStore`).

Each store saves rows of its own shape with its own blocking functions; these classes only schedule them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from sqlalchemy import Engine

log = logging.getLogger("switchboard.storage")
PURGE_INTERVAL_S = 3600.0
UNAVAILABLE_BACKOFF_S = 5.0
"""After a failed database call, calls fail at once for this long: an outage costs a request nothing, rather than
a connection timeout each (answers go out unstored; reads are a 503 with this Retry-After)."""


class StoreUnavailable(Exception):
    """The database failed a moment ago; not tried again until the backoff has passed."""


Order = Literal["asc", "desc"]
"""A list's order by creation: oldest first, or newest first."""


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
