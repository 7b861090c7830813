"""`KeyRegistry`: the gateway's view of the key table (kept in memory, re-read every `refresh_interval_s`) and
the adapter that seeds the key ledger with today's and this month's spend from the request log at start.

The request path only looks a digest up in a dict: an unknown key costs no database round trip, so a flood of
made-up keys cannot load the database.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from sqlalchemy import Engine

from switchboard.storage import database
from switchboard.tenants import store
from switchboard.tenants.keys import ApiKey
from switchboard.tenants.limits import day_start_s, month_start_s
from switchboard.tenants.ledger import KeyLedger

log = logging.getLogger("switchboard.tenants")


class KeyRegistry:
    def __init__(self, url: str, refresh_interval_s: float, ledger: KeyLedger, clock: Callable[[], float] = time.time) -> None:
        self.url = url
        self.refresh_interval_s = refresh_interval_s
        self.ledger = ledger
        self.clock = clock
        self.engine: Engine | None = None
        self._by_digest: dict[str, ApiKey] = {}
        self._by_id: dict[str, ApiKey] = {}
        self._task: asyncio.Task | None = None
        self.num_refresh_failures = 0

    def lookup(self, digest: str) -> ApiKey | None:
        return self._by_digest.get(digest)

    def by_id(self, key_id: str) -> ApiKey | None:
        return self._by_id.get(key_id)

    def replace(self, keys: list[ApiKey]) -> None:
        self._by_digest = {k.digest: k for k in keys}
        self._by_id = {k.key_id: k for k in keys}

    async def start(self) -> None:
        """Opens and migrates the database, loads the keys and seeds spend. Raises if the database is
        unreachable: a gateway that requires keys must not start without knowing them."""
        self.engine = await asyncio.to_thread(database.open_engine, self.url)
        await asyncio.to_thread(database.migrate, self.engine)
        self.replace(await asyncio.to_thread(store.load_keys, self.engine))
        now_s = self.clock()
        spend = await asyncio.to_thread(store.spend_since, self.engine, day_start_s(now_s), month_start_s(now_s))
        for key_id, s in spend.items():
            self.ledger.seed(key_id, s.usd_today, s.usd_this_month)
        log.info("keys: %d loaded (%d revoked), spend rebuilt for %d from the request log", len(self._by_digest),
                 sum(k.is_revoked for k in self._by_digest.values()), len(spend))
        self._task = asyncio.create_task(self._refresh_forever(), name="switchboard-keys-refresh")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self.engine is not None:
            self.engine.dispose()

    async def _refresh_forever(self) -> None:
        assert self.engine is not None
        while True:
            await asyncio.sleep(self.refresh_interval_s)
            try:
                self.replace(await asyncio.to_thread(store.load_keys, self.engine))
            except Exception as exc:  # noqa: BLE001 — keep serving with the keys last read
                self.num_refresh_failures += 1
                log.warning("keys: re-reading the key table failed (%s); keeping the %d keys last read", type(exc).__name__, len(self._by_digest))

