"""Cluster-wide key limits for a Ray fleet (docs/ray.md, docs/tenants.md): every gateway's keyed requests are
counted in one `UsageMeter` inside the control actor, so three gateways grant a key its rpm, tpm and budgets
once, not three times.

Quota leases (issue 17): a gateway does not ask the control actor about every keyed request. It takes a
*lease*, a slice of what the key has left (`LEASE_FRACTION` of its free requests, tokens and USD, counted in the
actor's meter at once), in one call, and admits requests from it by itself until the slice is used up or
`LEASE_TTL_S` passed; it takes the next one in the background when the slice runs low, and gives back what it did
not use. Settlements travel in batches (`Settled`, `Returned`) with the gateway's next call. A lease only fits
requests whole, so leases never overshoot a limit; near a limit, where a slice would not hold the request
(`lease_share` is None), requests are admitted one by one by the actor, exactly as without leases. So:

- rpm/tpm: never more than the limit in the actor's window; requests from a lease count from the lease's grant,
  up to `LEASE_TTL_S` early, so a client's sliding minute can see the few requests of one lease period more.
  Under-granting is bounded by the unused slices the gateways hold when the key runs out (a sixteenth of what
  was left, at most two per gateway), and lasts until they are used or given back (`LEASE_TTL_S`).
- budgets: reservation at admission, settled at completion, as before; a lease's slice is held in full, so
  the budget is exceeded by less than one request's estimate in all (the one admitted exactly last).

`KeyCounts` is the control actor's part (plain Python, tested without Ray); `ray_key_ledger.RayKeyLedger` is the
gateway's `KeyLedger` over it. Holds and leases of a gateway that falls silent are released with its leases of replicas.
A restarted control actor restores its `KeyCounts` from the last checkpoint (`checkpoint`, `restore`), and counts
what the dead actor counted after it (grants made since, and settlements and returns of grants the checkpoint
has) when their gateways tell them again (`Reopened`, `Reheld`: `ray_limits_rejoin`; docs/ray.md, "What survives a
restart").

Ray runs an async actor's calls in any order, so a gateway's batches of updates (`KeyCounts.apply`) may be
applied out of the order it sent them, and the counts come out the same whatever the order: a settlement of a
lease carries its place among the lease's settlements (`Settled.num_settled`), which tells the actor whether a
`Reopened` already counts it, or it already counts one the `Reopened` tells; what arrives for a grant before the
grant itself (before its `Reopened` or `Reheld`) is kept and counted when it arrives.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
import uuid
from collections.abc import Callable
from typing import Any

from switchboard.cluster.ray_limits_rejoin import CountedSettlements, Reheld, Rejoined, Rejoining, Reopened, Tally, Unlent
from switchboard.tenants.keys import KeyLimits
from switchboard.tenants.ledger import admit_and_reserve
from switchboard.tenants.limits import OverLimit, UsageSnapshot
from switchboard.tenants.meter import Reservation, UsageMeter

LEASE_FRACTION = 1 / 16
"""The share of what a key has left (in each limited dimension) that one lease takes."""
LEASE_MAX_REQUESTS = 256
"""The most requests one lease holds (a key with a huge rpm would otherwise lend thousands of slots at once)."""
LEASE_TTL_S = 2.0
"""How long a gateway may admit from a lease; then it gives back what is left."""
ACTIVE_GATEWAY_S = 30.0
"""A gateway that used keys this long before a checkpoint is expected to tell a restarted actor its grants."""
FORGOTTEN_KEPT_S = 120.0
"""How long the actor remembers the ids of leases and holds it is done with, so that a gateway telling a
restarted actor of its recent grants (`Reopened`, `Reheld`) does not get one counted twice. More than a
gateway's `ray_key_ledger.RECENT_GRANTS_S` plus a restart."""


@dataclasses.dataclass(frozen=True, slots=True)
class KeyLease:
    """A slice of key `key_id`'s limits that one gateway admits from by itself for `ttl_s`: up to `num_requests`
    requests, `num_tokens` estimated tokens and `usd` estimated cost (None: not limited, not counted here)."""

    lease_id: str
    key_id: str
    num_requests: int | None
    num_tokens: int | None
    usd: float | None
    ttl_s: float


@dataclasses.dataclass(frozen=True, slots=True)
class LeaseHold:
    """A request admitted from lease `lease_id`, with the estimates it took from the lease."""

    lease_id: str
    key_id: str
    num_tokens: int
    usd: float


@dataclasses.dataclass(frozen=True, slots=True)
class Settled:
    """A request ended: `hold` (a `LeaseHold`, or the id of a hold the actor made) with its real tokens (None:
    unknown, the estimate stays) and cost (0 for a request that ended without a logged answer). For a
    `LeaseHold`, `num_settled` is the lease's settlements its gateway counted with this one (1, 2, ...): a
    `Reopened` with `num_settled` k counts those up to k. 0: in no `Reopened` (an exact hold, or a lease its
    gateway no longer remembers)."""

    hold: Any
    num_tokens: int | None
    usd: float
    num_settled: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class Returned:
    """What of lease `lease_id` its gateway did not use (the lease expired, or the gateway stops), and how many
    requests it admitted from it (`num_taken`: the actor forgets the lease once they have all settled)."""

    lease_id: str
    num_taken: int
    num_requests: int
    num_tokens: int
    usd: float


def lease_share(limits: KeyLimits, usage: UsageSnapshot, num_tokens: int, usd_estimate: float,
                fraction: float = LEASE_FRACTION) -> tuple[int | None, int | None, float | None] | None:
    """(requests, tokens, USD) one lease may take of what the key has left after `usage` (None where the key has
    no such limit; tokens and USD in whole multiples of the request's), or None when that slice would not hold one request of `num_tokens` tokens and `usd_estimate`
    (the key is near a limit: its requests are then admitted one by one)."""
    num_requests = None if limits.rpm is None else min(LEASE_MAX_REQUESTS, math.floor((limits.rpm - usage.num_requests) * fraction))
    tokens = None if limits.tpm is None else math.floor((limits.tpm - usage.num_tokens) * fraction)
    budgets_left = [budget - spent - usage.usd_held for budget, spent in
                    ((limits.usd_per_day, usage.usd_today), (limits.usd_per_month, usage.usd_this_month)) if budget is not None]
    usd = min(budgets_left) * fraction if budgets_left else None
    # Whole multiples of this request: the gateway's next requests are often of its size, and a remainder too
    # small for them would sit unused until the lease expires (held from every other gateway).
    if tokens is not None and num_tokens > 0:
        tokens -= tokens % num_tokens
    if usd is not None and usd_estimate > 0:
        usd = math.floor(usd / usd_estimate) * usd_estimate
    if (num_requests is not None and num_requests < 1) or (tokens is not None and tokens < num_tokens) \
            or (usd is not None and usd < usd_estimate):
        return None
    return num_requests, tokens, usd


@dataclasses.dataclass(slots=True)
class _Lent:
    """A lease in the actor's meter: its window entries (the first carries its tokens and its USD hold)."""

    gateway_id: str
    entries: list[Reservation]
    counts_requests: bool
    counts_tokens: bool
    holds_usd: bool
    num_taken: int | None = None
    """Requests admitted from it, once it was given back (None before)."""
    num_settled: int = 0
    """Its settlements counted (each once, whether on its own or in a `Reopened`'s totals)."""
    counted: CountedSettlements = dataclasses.field(default_factory=CountedSettlements)
    """Which of them, by ordinal, and their totals: what a `Reopened` tells that is not counted yet."""


class KeyCounts(Rejoining):
    """The fleet's one count of keys' usage, with each exactly admitted request's hold, each lease, and the
    gateway holding it."""

    def __init__(self, window_s: float, clock: Callable[[], float] = time.time, lease_ttl_s: float = LEASE_TTL_S) -> None:
        self.meter = UsageMeter(window_s)
        self.clock = clock  # one clock for every gateway's requests: the actor's
        self.lease_ttl_s = lease_ttl_s
        self._holds: dict[str, tuple[Reservation, str]] = {}
        self._lent: dict[str, _Lent] = {}
        self._forgotten: dict[str, float] = {}
        """Ids of leases and holds done with -> when (kept `FORGOTTEN_KEPT_S`)."""
        self._unlent: dict[str, Unlent] = {}
        """Lease id -> what came for it while not lent here (kept `FORGOTTEN_KEPT_S`)."""
        self._unheld: dict[str, tuple[int | None, float, float]] = {}
        """Hold id -> (real tokens, cost, when) of a settlement of an exact hold not known here: one its gateway
        tells this actor of later (`Reheld`), or one released with its silent gateway (kept `FORGOTTEN_KEPT_S`)."""
        self._called_at: dict[str, float] = {}
        """Gateway id -> when it last asked for or settled a key's quota."""
        self.rejoining: set[str] = set()
        """After `restore`: the gateways that used keys shortly before the checkpoint and have not yet told this
        actor their recent grants (`Rejoined`). Quota lent before they have may overshoot by their grants."""
        # Ids carry this object's incarnation: a restarted actor's must not collide with the ones its
        # predecessor lent after its last checkpoint (gateways still hold them).
        self._ids = itertools.count(1)
        self._incarnation = uuid.uuid4().hex[:6]

    def admit(self, key_id: str, limits: KeyLimits, num_tokens: int, usd_estimate: float, gateway_id: str) -> OverLimit | str:
        """The refusal, or the id of the request's hold (for `settle`)."""
        verdict = admit_and_reserve(self.meter, key_id, limits, self.clock(), num_tokens, usd_estimate)
        if isinstance(verdict, OverLimit):
            return verdict
        hold_id = f"{gateway_id}/{self._incarnation}.{next(self._ids)}"
        self._holds[hold_id] = (verdict, gateway_id)
        return hold_id

    def lease(self, key_id: str, limits: KeyLimits, num_tokens: int, usd_estimate: float, gateway_id: str,
              admit_one: bool) -> KeyLease | OverLimit | str | None:
        """A lease for `gateway_id` when a slice of what the key has left holds a request of this size (the
        caller takes that request from it), counted in the meter at once. Else, with `admit_one`, the request is
        admitted exactly (`admit`: a hold id, or the refusal); without, None."""
        now_s = self.clock()
        self._called_at[gateway_id] = now_s
        share = lease_share(limits, self.meter.snapshot(key_id, now_s), num_tokens, usd_estimate)
        if share is None:
            return self.admit(key_id, limits, num_tokens, usd_estimate, gateway_id) if admit_one else None
        num_requests, tokens, usd = share
        lease = KeyLease(f"{gateway_id}/{self._incarnation}.L{next(self._ids)}", key_id, num_requests, tokens, usd, self.lease_ttl_s)
        self._lend(lease, gateway_id, now_s)
        return lease

    def _lend(self, lease: KeyLease, gateway_id: str, now_s: float) -> _Lent:
        entries = [self.meter.reserve(lease.key_id, now_s, lease.num_tokens or 0, lease.usd or 0.0)]
        entries += [self.meter.reserve(lease.key_id, now_s, 0) for _ in range((lease.num_requests or 1) - 1)]
        lent = self._lent[lease.lease_id] = _Lent(gateway_id, entries, lease.num_requests is not None,
                                                  lease.num_tokens is not None, lease.usd is not None)
        return lent

    def apply(self, updates: list[Settled | Returned | Reopened | Reheld], gateway_id: str = "") -> None:
        """A gateway's settlements, returns and (to a restarted actor) recent grants, in the order it made them.
        Its batches may come in any order (Ray runs an async actor's calls out of order): what they count does
        not depend on it (module docstring)."""
        if updates and gateway_id:
            self._called_at[gateway_id] = self.clock()
        for update in updates:
            if isinstance(update, Rejoined):
                self.rejoining.discard(gateway_id)
            elif isinstance(update, Returned):
                self._give_back(update)
            elif isinstance(update, Reopened):
                self._reopen(update, gateway_id)
            elif isinstance(update, Reheld):
                self._rehold(update, gateway_id)
            else:
                self.settle(update.hold, update.num_tokens, update.usd, update.num_settled)

    def checkpoint(self) -> tuple:
        """Everything counted (windows, spend, holds, leases, what it is done with), for a restarted actor's
        `restore`: plain data (numbers, strings, tuples, lists and dicts made now, none shared with this object),
        so that it can be pickled in another thread while this object goes on counting, and cheap to take (the
        windows as lists of numbers: `UsageMeter.dump`)."""
        now_s = self.clock()
        horizon_s = now_s - FORGOTTEN_KEPT_S
        self._forgotten = {i: at_s for i, at_s in self._forgotten.items() if at_s > horizon_s}
        self._unlent = {i: x for i, x in self._unlent.items() if x.first_at_s > horizon_s}
        self._unheld = {i: x for i, x in self._unheld.items() if x[2] > horizon_s}
        self._called_at = {g: at_s for g, at_s in self._called_at.items() if at_s > horizon_s}
        dump = self.meter.dump(now_s)
        holds = {hold_id: (dump.ref(entry), owner) for hold_id, (entry, owner) in self._holds.items()}
        # A lease given back uses only its first entry from then on (its hold and tokens): the rest are not kept.
        lent = {lease_id: (x.gateway_id, dump.run(x.entries) if x.num_taken is None else (dump.ref(x.entries[0]),),
                           x.counts_requests, x.counts_tokens, x.holds_usd, x.num_taken, x.num_settled, x.counted.state())
                for lease_id, x in self._lent.items()}
        unlent = {lease_id: x.state() for lease_id, x in self._unlent.items()}
        return (dump.state, holds, lent, dict(self._forgotten), unlent, dict(self._unheld), dict(self._called_at), now_s)

    def restore(self, data: tuple, active_s: float = ACTIVE_GATEWAY_S) -> None:
        """Counts what `checkpoint` took, instead of what this object counted (a fresh one: restore first). The
        gateways that used keys in the `active_s` before it was taken are expected to rejoin (`rejoining`)."""
        meter_state, holds, lent, forgotten, unlent, unheld, called_at, taken_at_s = data
        self.meter, resolve = UsageMeter.load(meter_state)

        def entries(refs: Any) -> list[Reservation]:
            return resolve(refs) if refs[0] == "r" else [resolve(ref) for ref in refs]

        self._holds = {hold_id: (resolve(ref), owner) for hold_id, (ref, owner) in holds.items()}
        self._lent = {lease_id: _Lent(gateway_id, entries(refs), *flags, CountedSettlements.from_state(counted))
                      for lease_id, (gateway_id, refs, *flags, counted) in lent.items()}
        self._unlent = {lease_id: Unlent.from_state(state, Returned) for lease_id, state in unlent.items()}
        self._forgotten, self._unheld, self._called_at = dict(forgotten), dict(unheld), dict(called_at)
        self.rejoining = {g for g, at_s in self._called_at.items() if at_s > taken_at_s - active_s}

    def settle(self, hold: Any, num_tokens: int | None, usd: float, num_settled: int = 0) -> None:
        """The request of `hold` (a hold id or a `LeaseHold`, the lease's `num_settled`-th settlement: `Settled`)
        finished: its real tokens (None: the estimate stays) and cost replace what it held. A lease's request
        whose lease is not lent here (released with its silent gateway, or not yet told again to a restarted
        actor) adds its cost to the spend (it was spent) and holds nothing. An exact hold not known here is
        counted when its gateway tells it (`Reheld`), else not at all; one settled before is not counted again."""
        if isinstance(hold, LeaseHold):
            self._settle_leased(hold, num_tokens, usd, num_settled)
            return
        found = self._holds.pop(hold, None)
        if found is not None:
            self.meter.settle(found[0], num_tokens, usd, self.clock())
            self._forgotten[hold] = self.clock()
        elif hold not in self._forgotten:
            self._unheld[hold] = (num_tokens, usd, self.clock())

    def _settle_leased(self, hold: LeaseHold, num_tokens: int | None, usd: float, num_settled: int) -> None:
        settled = Tally.of(hold, num_tokens, usd)
        lent = self._lent.get(hold.lease_id)
        if lent is None:
            if hold.lease_id in self._forgotten:  # every request it admitted is counted (this one by its `Reopened`)
                return
            now_s = self.clock()
            self.meter.add_spend(hold.key_id, usd, now_s)
            self._unlent.setdefault(hold.lease_id, Unlent(now_s, [])).settled.append((num_settled, settled))
            return
        if not lent.counted.add(num_settled, settled):
            return  # already counted: in the totals of a `Reopened` sent after it (and applied before it)
        self._count_settled(lent, 1, settled)
        self._forget_if_done(hold.lease_id, lent)

    def _count_settled(self, lent: _Lent, num_settled: int, settled: Tally, is_spent: bool = False) -> None:
        """`num_settled` of the lease's requests settled, with totals `settled`: their real tokens replace their
        estimates, which its hold releases, and their cost is spent (unless `is_spent` already)."""
        lent.num_settled += num_settled
        first = lent.entries[0]
        self.meter.retoken(first, settled.num_tokens - settled.num_tokens_estimated if lent.counts_tokens else settled.num_tokens)
        if lent.holds_usd:
            self.meter.hold(first, first.usd_held - settled.usd_estimated)
        if not is_spent:
            self.meter.add_spend(first.key_id, settled.usd_spent, self.clock())

    def _give_back(self, returned: Returned) -> None:
        lent = self._lent.get(returned.lease_id)
        if lent is None:
            if returned.lease_id not in self._forgotten:  # (given back once its `Reopened` comes)
                self._unlent.setdefault(returned.lease_id, Unlent(self.clock(), [])).returned = returned
            return
        if lent.num_taken is not None:
            return
        lent.num_taken = returned.num_taken
        entries = lent.entries
        if lent.counts_requests and returned.num_requests >= len(entries):  # none used: as if never lent
            self.meter.unreserve(entries)
        else:  # the first entry carries the lease's tokens and hold: it stays, less what is given back
            if returned.num_requests > 0:
                self.meter.unreserve(entries[len(entries) - returned.num_requests:])
            if lent.counts_tokens:
                self.meter.retoken(entries[0], -returned.num_tokens)
            if lent.holds_usd:
                self.meter.hold(entries[0], entries[0].usd_held - returned.usd)
        self._forget_if_done(returned.lease_id, lent)

    def _forget_if_done(self, lease_id: str, lent: _Lent) -> None:
        if self._lent.get(lease_id) is lent and lent.num_taken is not None and lent.num_settled >= lent.num_taken:
            del self._lent[lease_id]
            self._forgotten[lease_id] = self.clock()

    def seed(self, key_id: str, usd_today: float, usd_this_month: float) -> None:
        self.meter.seed(key_id, usd_today, usd_this_month, self.clock())

    def release_gateway(self, gateway_id: str) -> int:
        """Releases every hold of `gateway_id` (it died mid-request), and the USD its leases hold (their requests
        stay counted in the windows); returns how many holds and leases."""
        held = [h for h, (_, owner) in self._holds.items() if owner == gateway_id]
        for hold_id in held:
            self.meter.release(self._holds.pop(hold_id)[0])
        lent = [lease_id for lease_id, x in self._lent.items() if x.gateway_id == gateway_id]
        for lease_id in lent:
            self.meter.release(self._lent.pop(lease_id).entries[0])
        return len(held) + len(lent)

    def gateway_ids(self) -> set[str]:
        """The gateways holding a hold or a lease."""
        return {owner for _, owner in self._holds.values()} | {lent.gateway_id for lent in self._lent.values()}

    @property
    def num_holds(self) -> int:
        return len(self._holds)

    @property
    def num_leases(self) -> int:
        """Leases lent and not yet given back (or whose requests still hold USD)."""
        return len(self._lent)
