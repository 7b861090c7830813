"""A gateway's side of cluster-wide key limits (docs/ray.md, "Keys' limits"; issue 17): `RayKeyLedger`, the
`KeyLedger` that admits a key's requests from the quota leases the control actor lends (`ray_limits`), with no
call per request: it calls the actor for a lease (in the background once one runs low), or, near a limit, for
each request, and sends its settlements and the leases' unused rest in batches. When Ray restarts the actor, it
tells the new one of its recent grants, which its checkpoint may lack (`reseed`; docs/ray.md, "What survives a
restart")."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from switchboard.cluster.ray_limits import KeyLease, LeaseHold, Reheld, Rejoined, Reopened, Returned, Settled
from switchboard.gateway.errors import ApiError
from switchboard.tenants.keys import KeyLimits

log = logging.getLogger("switchboard.cluster")

RENEW_BELOW = 0.25
"""A gateway takes its next lease in the background once a lease has less than this share of its requests left."""

RETRY_INTERVAL_S = 0.2
"""How often an admission is asked again while Ray restarts the control actor."""

RECENT_GRANTS_S = 30.0
"""How long a gateway remembers a lease or exact admission it got, to tell a restarted control actor of it (its
checkpoint, written within `ray_checkpoint.CHECKPOINT_INTERVAL_S` of a change, may lack it): counted up to the
last answer from the actor, so a restart however long forgets nothing granted just before it."""


class _OpenLease:
    """A gateway's lease with what is left of it (None: not limited)."""

    __slots__ = ("lease", "num_requests", "num_tokens", "usd", "expires_at", "num_taken", "asked", "num_settled",
                 "usd_settled", "usd_spent", "num_tokens_settled", "num_tokens_used", "returned", "granted_at")

    def __init__(self, lease: KeyLease, granted_at: float, asked: tuple[KeyLimits, int, float]) -> None:
        self.lease = lease
        self.num_requests, self.num_tokens, self.usd = lease.num_requests, lease.num_tokens, lease.usd
        self.granted_at = granted_at
        self.expires_at = granted_at + lease.ttl_s
        self.num_taken = 0
        self.asked = asked
        """(limits, tokens, USD) of the request it was taken for: what its renewal asks with."""
        self.num_settled = 0
        self.usd_settled = 0.0
        """The estimates of its requests settled so far (what a restarted control actor releases of its hold)."""
        self.usd_spent = 0.0
        self.num_tokens_settled = 0
        """Their estimated tokens (what a restarted control actor counted for them until then)."""
        self.num_tokens_used = 0
        """Their real tokens (the estimate where unknown)."""
        self.returned: Returned | None = None

    def settled(self, hold: LeaseHold, num_tokens: int | None, usd: float) -> None:
        # (Summed in the order made, as the actor sums the settlements it counts: `ray_limits_rejoin`.)
        self.num_settled += 1
        self.usd_settled += hold.usd
        self.usd_spent += usd
        self.num_tokens_settled += hold.num_tokens
        self.num_tokens_used += hold.num_tokens if num_tokens is None else num_tokens

    def take(self, num_tokens: int, usd: float) -> LeaseHold | None:
        """A hold on this lease for a request of this size, or None if what is left does not hold it whole."""
        # (USD compared with a tolerance: a lease of k estimates, taken k times, leaves float residue below 0.)
        if (self.num_requests is not None and self.num_requests < 1) or (self.num_tokens is not None and self.num_tokens < num_tokens) \
                or (self.usd is not None and self.usd < usd * (1 - 1e-9)):
            return None
        if self.num_requests is not None:
            self.num_requests -= 1
        if self.num_tokens is not None:
            self.num_tokens -= num_tokens
        if self.usd is not None:
            self.usd -= usd
        self.num_taken += 1
        return LeaseHold(self.lease.lease_id, self.lease.key_id, num_tokens, usd)

    @property
    def is_low(self) -> bool:
        """Less than `RENEW_BELOW` of it is left (in a dimension it limits)."""
        lease = self.lease
        return any(left is not None and left < RENEW_BELOW * whole for left, whole in
                   ((self.num_requests, lease.num_requests), (self.num_tokens, lease.num_tokens), (self.usd, lease.usd)))

    def regranted(self) -> Reopened:
        return Reopened(self.lease, self.num_taken, self.num_settled, self.usd_settled, self.usd_spent, self.returned,
                        self.num_tokens_settled, self.num_tokens_used)

    def give_back(self) -> Returned:
        """What is left, returned; the lease admits nothing more."""
        returned = self.returned = Returned(self.lease.lease_id, self.num_taken, self.num_requests or 0,
                                            self.num_tokens or 0, self.usd or 0.0)
        self.num_requests, self.num_tokens, self.usd = 0, 0, 0.0
        return returned


class _ExactHold:
    """A request the control actor admitted exactly (its hold id), as its gateway remembers it."""

    __slots__ = ("hold_id", "key_id", "num_tokens", "usd", "granted_at", "usd_settled", "num_tokens_used")

    def __init__(self, hold_id: str, key_id: str, num_tokens: int, usd: float, granted_at: float) -> None:
        self.hold_id, self.key_id, self.num_tokens, self.usd, self.granted_at = hold_id, key_id, num_tokens, usd, granted_at
        self.usd_settled: float | None = None
        self.num_tokens_used: int | None = None

    def regranted(self) -> Reheld:
        return Reheld(self.hold_id, self.key_id, self.num_tokens, self.usd, self.usd_settled, self.num_tokens_used)


class RayKeyLedger:
    """A gateway's `KeyLedger` on the control actor, by quota leases (module docstring). `actor()` is None until
    the fleet has joined it; spend seeded before then is sent when `flush_seeds` is called. Settlements and
    returns are sent with the next call to the actor, or by `flush` (the gateway's report loop calls it)."""

    def __init__(self, actor: Callable[[], Any], gateway_id: str, control_actor_name: str,
                 restart_wait_s: float = 0.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._actor = actor
        self.gateway_id = gateway_id
        self.control_actor_name = control_actor_name
        self.restart_wait_s = restart_wait_s
        """How long an admission waits for the control actor while Ray restarts it (then 503)."""
        self.clock = clock
        self._seeds: list[tuple[str, float, float]] = []
        self._sent_seeds: list[tuple[str, float, float]] = []
        self._open: dict[str, list[_OpenLease]] = {}
        """Key id -> its leases this gateway admits from, oldest first."""
        self._asking: dict[str, asyncio.Future] = {}
        """Key id -> the lease call in flight for it (others wait for it rather than ask too)."""
        self._near_limit: set[str] = set()
        """Keys whose last call got no lease: their requests are asked one by one, not waiting on each other."""
        self._updates: list[Any] = []
        self._recent: dict[str, _OpenLease | _ExactHold] = {}
        """Grant id -> the leases and exact admissions of the last `RECENT_GRANTS_S` (oldest first), and the
        leases still open."""
        self._renewals: set[asyncio.Task] = set()
        self.num_calls = 0
        """Lease and admission calls made (the cost of leases, for benchmarks and tests)."""
        self._answered_at = clock()
        """When the control actor last answered a lease call."""
        self._num_reseeds = 0

    async def admit(self, key_id: str, limits: KeyLimits, num_tokens: int, usd_estimate: float) -> Any:
        """A `LeaseHold`, the id of a hold the actor made, or the refusal. A request that fits in this gateway's
        lease costs no call; else it waits for a lease call in flight for its key, or makes one (which may admit
        it exactly instead). While Ray restarts the control actor a call is asked again every `RETRY_INTERVAL_S`
        for up to `restart_wait_s` (a key's limits are never skipped); then, or when the actor is gone for good,
        a 503 naming it."""
        while True:
            hold = self._from_lease(key_id, num_tokens, usd_estimate)
            if hold is not None:
                return hold
            asking = self._asking.get(key_id)
            if asking is None or key_id in self._near_limit:
                break
            await asyncio.wait([asking])
        answer = await self._ask(key_id, limits, num_tokens, usd_estimate, admit_one=True)
        if isinstance(answer, _OpenLease):
            hold = answer.take(num_tokens, usd_estimate)
            assert hold is not None  # the actor lends only slices that hold the request it was asked for
            return hold
        return answer

    def _from_lease(self, key_id: str, num_tokens: int, usd: float) -> LeaseHold | None:
        leases = self._open.get(key_id)
        if not leases:
            return None
        now = self.clock()
        for lease in list(leases):
            if now >= lease.expires_at:
                self._close(key_id, lease)
                continue
            hold = lease.take(num_tokens, usd)
            if hold is None:
                # Given back now, with the call this request makes next: the actor counts it free before it decides.
                self._close(key_id, lease)
                continue
            if lease.is_low and len(leases) == 1:
                self._renew(key_id, *lease.asked)
            return hold
        return None

    def _open_lease(self, lease: KeyLease, asked: tuple[KeyLimits, int, float]) -> _OpenLease:
        self._near_limit.discard(lease.key_id)
        opened = _OpenLease(lease, self.clock(), asked)
        self._open.setdefault(lease.key_id, []).append(opened)
        self._recent[lease.lease_id] = opened
        return opened

    def _close(self, key_id: str, lease: _OpenLease) -> None:
        self._updates.append(lease.give_back())
        leases = self._open[key_id]
        leases.remove(lease)
        if not leases:
            del self._open[key_id]

    def _renew(self, key_id: str, limits: KeyLimits, num_tokens: int, usd: float) -> None:
        """Takes the key's next lease in the background (unless a call for it is in flight)."""
        if key_id in self._asking or key_id in self._near_limit:
            return

        async def renew() -> None:
            try:
                await self._ask(key_id, limits, num_tokens, usd, admit_one=False)
            except Exception:  # noqa: BLE001 — a request that finds no lease asks itself, and reports the failure
                log.debug("could not renew a quota lease of key %s", key_id, exc_info=True)

        task = asyncio.ensure_future(renew())
        self._renewals.add(task)
        task.add_done_callback(self._renewals.discard)

    async def _ask(self, key_id: str, limits: KeyLimits, num_tokens: int, usd: float, *, admit_one: bool) -> Any:
        """One lease call (with the pending updates), registered as the key's call in flight while it lasts: the
        lease it got, opened (`_OpenLease`), the id of the exact hold it got, or the refusal (None: no lease)."""
        from ray.exceptions import ActorUnavailableError, RayActorError

        done = asyncio.get_running_loop().create_future()
        self._asking.setdefault(key_id, done)
        deadline = time.monotonic() + self.restart_wait_s
        num_reseeds = self._num_reseeds
        try:
            while True:
                self.num_calls += 1
                try:
                    answer = await self._actor().lease_key.remote(self.gateway_id, key_id, limits, num_tokens, usd, admit_one,
                                                                  self._take_updates())
                except ActorUnavailableError as exc:
                    if time.monotonic() < deadline:
                        # What an attempt that reached the dying actor counted after its last checkpoint is lost
                        # with it (or told again: `reseed`): asked again, the request is counted at most twice.
                        await asyncio.sleep(RETRY_INTERVAL_S)
                        continue
                    failure = exc
                except RayActorError as exc:
                    failure = exc
                else:
                    return self._granted(answer, key_id, (limits, num_tokens, usd), num_reseeds)
                raise ApiError(503, f"the control actor '{self.control_actor_name}' is unreachable, so key limits cannot be checked: "
                                    f"{str(failure).splitlines()[0]}", code="limits_unavailable", headers={"retry-after": "1"}) from None
        finally:
            if self._asking.get(key_id) is done:
                del self._asking[key_id]
            done.set_result(None)

    def _granted(self, answer: Any, key_id: str, asked: tuple[KeyLimits, int, float], num_reseeds: int) -> Any:
        """Remembers what a lease call got (see `_ask`). A grant whose call was in flight across a `reseed`
        may come from the dead actor after its last checkpoint: it is told to the new one too."""
        self._answered_at = self.clock()
        grant: _OpenLease | _ExactHold | None = None
        if isinstance(answer, KeyLease):
            answer = grant = self._open_lease(answer, asked)
        else:
            self._near_limit.add(key_id)
            if isinstance(answer, str):
                grant = self._recent[answer] = _ExactHold(answer, key_id, asked[1], asked[2], self.clock())
        if grant is not None and num_reseeds != self._num_reseeds:
            self._updates.append(grant.regranted())
        return answer

    def settle(self, hold: Any, num_tokens: int | None, usd: float) -> None:
        grant = self._recent.get(hold.lease_id if isinstance(hold, LeaseHold) else hold)
        num_settled = 0  # (a lease forgotten here is in no `Reopened` from now on)
        if isinstance(grant, _OpenLease):
            grant.settled(hold, num_tokens, usd)
            num_settled = grant.num_settled
        elif grant is not None:
            grant.usd_settled, grant.num_tokens_used = usd, num_tokens
        self._updates.append(Settled(hold, num_tokens, usd, num_settled))

    def release(self, hold: Any) -> None:
        self.settle(hold, None, 0.0)

    def _take_updates(self) -> list[Any]:
        updates, self._updates = self._updates, []
        return updates

    def flush(self, *, give_back_all: bool = False) -> None:
        """Gives back the leases that expired (all of them with `give_back_all`: the gateway stops), renewing
        in the background those that were used, and sends the pending updates (fire and forget). Ray may run
        this gateway's calls out of the order they were made (an async actor's are): the actor counts its
        batches the same in any order (`ray_limits`)."""
        now = self.clock()
        for key_id, leases in list(self._open.items()):
            for lease in list(leases):
                if give_back_all or now >= lease.expires_at:
                    self._close(key_id, lease)
                    if lease.num_taken and not give_back_all:
                        self._renew(key_id, *lease.asked)
        self._forget_old_grants()
        if self._updates and self._actor() is not None:
            self._actor().key_updates.remote(self.gateway_id, self._take_updates())

    def seed(self, key_id: str, usd_today: float, usd_this_month: float) -> None:
        self._seeds.append((key_id, usd_today, usd_this_month))
        if self._actor() is not None:
            self.flush_seeds()

    def flush_seeds(self) -> None:
        seeds, self._seeds = self._seeds, []
        if seeds:
            self._sent_seeds += seeds
            self._actor().seed_keys.remote(seeds)

    def _forget_old_grants(self) -> None:
        until = self._answered_at - RECENT_GRANTS_S
        for grant_id, grant in list(self._recent.items()):
            if grant.granted_at > until:
                break  # (oldest first)
            if not (isinstance(grant, _OpenLease) and grant.returned is None):
                del self._recent[grant_id]

    def reseed(self) -> None:
        """Tells a restarted control actor what it may not know: every seed again (it keeps the larger spend),
        and, after the updates already made, this gateway's leases still open and its grants of the last
        `RECENT_GRANTS_S` (it counts those its checkpoint lacks: `ray_limits.Reopened`, `Reheld`). The actor may
        apply this batch after later ones, or earlier ones after it: it counts each settlement once all the same."""
        self._num_reseeds += 1
        self._near_limit.clear()
        self._forget_old_grants()
        self._updates += [grant.regranted() for grant in self._recent.values()] + [Rejoined()]
        self._seeds = self._sent_seeds + self._seeds
        self._sent_seeds = []
        self.flush_seeds()
        self._actor().key_updates.remote(self.gateway_id, self._take_updates())
