"""Quota leases of keys' limits (issue 17): gateways admit keyed requests from slices of a key's rpm, tpm and
budget that the control actor lends them, with no call per request, and the cluster still grants a key its
limits once. The control actor's body runs in-process (its key bookkeeping needs no fleet and no Ray)."""

from __future__ import annotations

import asyncio
import random

from switchboard.cluster.ray_control import ControlActor
from switchboard.cluster.ray_key_ledger import RayKeyLedger
from switchboard.cluster.ray_limits import LEASE_TTL_S, KeyCounts, KeyLease, LeaseHold, Returned, Settled, lease_share
from switchboard.config import parse_config
from switchboard.tenants.keys import KeyLimits
from switchboard.tenants.limits import Limit, OverLimit, UsageSnapshot
from switchboard.testing.actor_handles import InProcessHandle

START_S = 1_800_000_000.0


class Clock:
    def __init__(self, now_s: float = START_S) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


def control_actor(clock: Clock) -> ControlActor:
    config = parse_config("experts: [{id: e, backend: {kind: simulated, time_scale: 0}}]")
    actor = ControlActor(config.model_dump(mode="json"), gateway_timeout_s=5.0, clock=clock)
    actor.keys = KeyCounts(window_s=60.0, clock=clock)
    return actor


def gateways(actor: ControlActor, clock: Clock, n: int = 3) -> list[RayKeyLedger]:
    handle = InProcessHandle(actor)
    return [RayKeyLedger(lambda: handle, f"gw-{i}", "control", clock=clock) for i in range(n)]


async def settled(ledgers: list[RayKeyLedger]) -> None:
    for ledger in ledgers:
        ledger.flush()
    await asyncio.sleep(0)  # the fire-and-forget updates run
    await asyncio.sleep(0)


def test_a_lease_takes_a_share_of_what_is_left_and_none_near_a_limit():
    limits = KeyLimits(rpm=600, tpm=100_000, usd_per_day=10.0)
    assert lease_share(limits, UsageSnapshot(), 100, 0.01) == (37, 6200, 0.62)  # whole multiples of the request
    used = UsageSnapshot(num_requests=590, num_tokens=1000, usd_today=1.0, usd_held=1.0)
    assert lease_share(limits, used, 100, 0.01) is None  # 10 requests left: a sixteenth holds none
    assert lease_share(KeyLimits(usd_per_day=1.0), UsageSnapshot(usd_today=0.5), 10, 0.05) is None  # 0.5/16 < 0.05
    assert lease_share(KeyLimits(), UsageSnapshot(), 10, 0.0) == (None, None, None)  # nothing limited: all local


async def test_three_gateways_grant_a_keys_rpm_once_with_few_calls():
    clock = Clock()
    actor = control_actor(clock)
    ledgers = gateways(actor, clock)
    limits = KeyLimits(rpm=600)
    granted, calls_while_granting = 0, 0
    for i in range(900):  # each gateway alone would grant all of its 300
        clock.now_s += 0.01
        verdict = await ledgers[i % 3].admit("k", limits, 10, 0.0)
        if not isinstance(verdict, OverLimit):
            granted += 1
            ledgers[i % 3].settle(verdict, 10, 0.0)
            calls_while_granting = sum(ledger.num_calls for ledger in ledgers)
        else:
            assert verdict.limit is Limit.RPM
        if i % 50 == 0:
            await settled(ledgers)
    assert granted == 600
    # Leases lend a sixteenth of what is left: calls grow with the log of the limit, plus one per request of
    # the last sixteen (admitted exactly), not one per request.
    assert calls_while_granting < 150, calls_while_granting
    await settled(ledgers)
    assert actor.keys.meter.snapshot("k", clock()).num_requests == 600


async def test_a_lease_given_back_unused_counts_nothing_and_settled_tokens_replace_the_estimate():
    clock = Clock()
    actor = control_actor(clock)
    (ledger,) = gateways(actor, clock, 1)
    limits = KeyLimits(rpm=1000, tpm=100_000, usd_per_day=100.0)
    hold = await ledger.admit("k", limits, 500, 1.0)
    assert isinstance(hold, LeaseHold) and ledger.num_calls == 1
    usage = actor.keys.meter.snapshot("k", clock())
    assert (usage.num_requests, usage.num_tokens, usage.usd_held) == (62, 6000, 6.0)  # the whole slice counts
    ledger.settle(hold, 120, 0.25)  # 120 real tokens, 0.25 USD
    ledger.flush(give_back_all=True)  # the gateway stops: the rest goes back
    await asyncio.sleep(0)
    usage = actor.keys.meter.snapshot("k", clock())
    assert (usage.num_requests, usage.num_tokens, usage.usd_held, usage.usd_today) == (1, 120, 0.0, 0.25)
    assert actor.keys.num_leases == 0

    assert isinstance(await ledger.admit("k", limits, 500, 1.0), LeaseHold) and ledger.num_calls == 2
    clock.now_s += LEASE_TTL_S
    ledger.flush()  # expired, and used: given back and renewed in the background
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert ledger.num_calls == 3 and actor.keys.num_leases == 2  # the old one's request is still in flight
    assert isinstance(await ledger.admit("k", limits, 500, 1.0), LeaseHold) and ledger.num_calls == 3


async def test_a_budget_is_not_exceeded_by_more_than_one_estimate_under_64_concurrent_requests():
    """Three gateways, 64 requests in flight at once, each costing its whole estimate when it ends."""
    clock = Clock()
    actor = control_actor(clock)
    ledgers = gateways(actor, clock)
    estimate, budget = 0.01, 0.995
    limits = KeyLimits(usd_per_day=budget)
    rng = random.Random(7)
    served, from_leases = 0, 0

    async def one(i: int) -> None:
        nonlocal served, from_leases
        ledger = ledgers[i % 3]
        for _ in range(4):
            verdict = await ledger.admit("k", limits, 50, estimate)
            if isinstance(verdict, OverLimit):
                assert verdict.limit is Limit.USD_PER_DAY
                return
            for _ in range(rng.randrange(1, 6)):  # in flight a while
                await asyncio.sleep(0)
            served += 1
            from_leases += isinstance(verdict, LeaseHold)
            ledger.settle(verdict, 50, estimate)
            if rng.random() < 0.3:
                ledger.flush()

    await asyncio.gather(*(one(i) for i in range(64)))
    await settled(ledgers)
    clock.now_s += LEASE_TTL_S
    await settled(ledgers)
    spent = actor.keys.meter.snapshot("k", clock()).usd_today
    assert abs(spent - served * estimate) < 1e-9
    assert budget <= spent < budget + estimate  # refused only once the budget is spent, exceeded by less than one estimate
    assert from_leases >= 0.75 * served, (from_leases, served)  # near the end (16 estimates left), one by one


async def test_a_silent_gateways_lease_and_holds_stop_holding_its_keys_budget():
    clock = Clock(100.0)
    actor = control_actor(clock)
    dead, alive = gateways(actor, clock, 2)
    budget = KeyLimits(usd_per_day=16.0)
    held = await dead.admit("k", budget, 10, 0.5)
    assert isinstance(held, LeaseHold)
    assert actor.keys.meter.snapshot("k", clock()).usd_held == 1.0  # a sixteenth of the budget (two estimates), lent
    clock.now_s += 6.0
    await alive.admit("other", KeyLimits(), 10, 0.0)  # gw-1 is heard from
    assert await actor.reclaim_silent_gateways() == ["gw-0"]
    assert actor.keys.meter.snapshot("k", clock()).usd_held == 0.0 and actor.keys.num_leases == 1  # gw-1's own
    await actor.key_updates("gw-0", [Settled(held, 10, 0.5)])  # a late settle: it was spent, and holds nothing
    usage = actor.keys.meter.snapshot("k", clock())
    assert (usage.usd_held, usage.usd_today) == (0.0, 0.5)


async def test_near_a_limit_requests_are_admitted_one_by_one_exactly():
    clock = Clock()
    counts = KeyCounts(window_s=60.0, clock=clock)
    limits = KeyLimits(rpm=20)
    answers = [counts.lease("k", limits, 10, 0.0, "gw", admit_one=True) for _ in range(21)]
    assert all(isinstance(a, KeyLease) and a.num_requests == 1 for a in answers[:5])  # 20..16 left: a sixteenth is one
    assert all(isinstance(a, str) for a in answers[5:20])  # 15 left: exact admissions
    assert isinstance(answers[20], OverLimit)
    assert counts.lease("k", limits, 10, 0.0, "gw", admit_one=False) is None
    counts.apply([Settled(answers[5], 10, 0.0), Returned(answers[0].lease_id, 0, 1, 0, 0.0)])  # that lease went unused
    assert counts.meter.snapshot("k", clock()).num_requests == 19 and counts.num_holds == 14
