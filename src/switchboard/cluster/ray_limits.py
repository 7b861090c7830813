"""Cluster-wide key limits for a Ray fleet (docs/ray.md, docs/tenants.md): every gateway's keyed requests are
counted in one `UsageMeter` inside the control actor, so three gateways grant a key its rpm, tpm and budgets
once, not three times.

`KeyCounts` is the control actor's part (plain Python, tested without Ray); `RayKeyLedger` is the gateway's
`KeyLedger` over it: admission is one actor call (check and count in one step on the actor's event loop, with
the same pure `limits.admit` as embedded mode); settling and releasing are sent without waiting (Ray keeps one
caller's calls in order). Holds of a gateway that falls silent are released with its leases.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from typing import Any

from switchboard.gateway.errors import ApiError
from switchboard.tenants.keys import KeyLimits
from switchboard.tenants.ledger import admit_and_reserve
from switchboard.tenants.limits import OverLimit
from switchboard.tenants.meter import Reservation, UsageMeter


class KeyCounts:
    """The fleet's one count of keys' usage, with each admitted request's hold and the gateway holding it."""

    def __init__(self, window_s: float, clock: Callable[[], float] = time.time) -> None:
        self.meter = UsageMeter(window_s)
        self.clock = clock  # one clock for every gateway's requests: the actor's
        self._holds: dict[str, tuple[Reservation, str]] = {}
        self._ids = itertools.count(1)

    def admit(self, key_id: str, limits: KeyLimits, num_tokens: int, usd_estimate: float, gateway_id: str) -> OverLimit | str:
        """The refusal, or the id of the request's hold (for `settle` / `release`)."""
        verdict = admit_and_reserve(self.meter, key_id, limits, self.clock(), num_tokens, usd_estimate)
        if isinstance(verdict, OverLimit):
            return verdict
        hold_id = f"{gateway_id}/{next(self._ids)}"
        self._holds[hold_id] = (verdict, gateway_id)
        return hold_id

    def settle(self, hold_id: str, num_tokens: int | None, usd: float) -> None:
        found = self._holds.pop(hold_id, None)
        if found is not None:  # else already released with its silent gateway: its cost is lost, not double counted
            self.meter.settle(found[0], num_tokens, usd, self.clock())

    def release(self, hold_id: str) -> None:
        found = self._holds.pop(hold_id, None)
        if found is not None:
            self.meter.release(found[0])

    def seed(self, key_id: str, usd_today: float, usd_this_month: float) -> None:
        self.meter.seed(key_id, usd_today, usd_this_month, self.clock())

    def release_gateway(self, gateway_id: str) -> int:
        """Releases every hold of `gateway_id` (it died mid-request); returns how many."""
        held = [h for h, (_, owner) in self._holds.items() if owner == gateway_id]
        for hold_id in held:
            self.release(hold_id)
        return len(held)

    @property
    def num_holds(self) -> int:
        return len(self._holds)


RETRY_INTERVAL_S = 0.2
"""How often an admission is asked again while Ray restarts the control actor."""


class RayKeyLedger:
    """A gateway's `KeyLedger` on the control actor (`actor()` is None until the fleet has joined it; spend
    seeded before then is sent when `flush_seeds` is called)."""

    def __init__(self, actor: Callable[[], Any], gateway_id: str, control_actor_name: str,
                 restart_wait_s: float = 0.0) -> None:
        self._actor = actor
        self.gateway_id = gateway_id
        self.control_actor_name = control_actor_name
        self.restart_wait_s = restart_wait_s
        """How long an admission waits for the control actor while Ray restarts it (then 503)."""
        self._seeds: list[tuple[str, float, float]] = []
        self._sent_seeds: list[tuple[str, float, float]] = []

    async def admit(self, key_id: str, limits: KeyLimits, num_tokens: int, usd_estimate: float) -> Any:
        """The hold id, or the refusal. While Ray restarts the control actor the admission is asked again every
        `RETRY_INTERVAL_S` for up to `restart_wait_s` (a key's limits are never skipped); then, or when the actor
        is gone for good, a 503 naming it."""
        from ray.exceptions import ActorUnavailableError, RayActorError

        deadline = time.monotonic() + self.restart_wait_s
        while True:
            try:
                return await self._actor().admit_key.remote(key_id, limits, num_tokens, usd_estimate, self.gateway_id)
            except ActorUnavailableError as exc:
                if time.monotonic() < deadline:
                    # An attempt that reached the dying actor held nothing that outlives it.
                    await asyncio.sleep(RETRY_INTERVAL_S)
                    continue
                failure = exc
            except RayActorError as exc:
                failure = exc
            raise ApiError(503, f"the control actor '{self.control_actor_name}' is unreachable, so key limits cannot be checked: "
                                f"{str(failure).splitlines()[0]}", code="limits_unavailable", headers={"retry-after": "1"}) from None

    def settle(self, hold: Any, num_tokens: int | None, usd: float) -> None:
        self._actor().settle_key.remote(hold, num_tokens, usd)

    def release(self, hold: Any) -> None:
        self._actor().release_key.remote(hold)

    def seed(self, key_id: str, usd_today: float, usd_this_month: float) -> None:
        self._seeds.append((key_id, usd_today, usd_this_month))
        if self._actor() is not None:
            self.flush_seeds()

    def flush_seeds(self) -> None:
        seeds, self._seeds = self._seeds, []
        if seeds:
            self._sent_seeds += seeds
            self._actor().seed_keys.remote(seeds)

    def reseed(self) -> None:
        """Sends every seed again (a restarted control actor starts its key counts from nothing)."""
        self._seeds = self._sent_seeds + self._seeds
        self._sent_seeds = []
        self.flush_seeds()
