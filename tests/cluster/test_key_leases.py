"""Quota leases of keys' limits (issue 17): gateways admit keyed requests from slices of a key's rpm, tpm and
budget that the control actor lends them, with no call per request, and the cluster still grants a key its
limits once. The control actor's body runs in-process (its key bookkeeping needs no fleet and no Ray)."""

from __future__ import annotations

import asyncio
import itertools
import random
from typing import Any

from switchboard.cluster.ray_control import ControlActor
from switchboard.cluster.ray_key_ledger import RayKeyLedger
from switchboard.cluster.ray_limits import (LEASE_TTL_S, KeyCounts, KeyLease, LeaseHold, Reheld, Rejoined, Reopened, Returned,
                                             Settled, lease_share)
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


# ---- a gateway's batches applied out of order (Ray runs an async actor's calls in any order)


class _Remote:
    def __init__(self, method: Any) -> None:
        self._method = method

    def remote(self, *args: Any) -> asyncio.Future:
        answered = asyncio.get_running_loop().create_future()
        answered.set_result(self._method(*args))
        return answered


class FakeControl:
    """The control actor as one gateway's `RayKeyLedger` sees it, over `counts`: each call is applied at once, in
    the order made, until `is_capturing`; from then on each call's batch of key updates is kept in `batches`
    instead (to be applied later, in any order, to a restarted actor's counts), and a lease call gets no lease."""

    def __init__(self, counts: KeyCounts) -> None:
        self.counts = counts
        self.is_capturing = False
        self.batches: list[list[Any]] = []
        self.lease_key = _Remote(self._lease_key)
        self.key_updates = _Remote(self._key_updates)

    def _lease_key(self, gateway_id: str, key_id: str, limits: KeyLimits, num_tokens: int, usd: float,
                   admit_one: bool, updates: list[Any]) -> Any:
        if self.is_capturing:
            assert not admit_one  # (only renewals while capturing: an admission needs the actor's answer)
            self._key_updates(gateway_id, updates)
            return None
        self.counts.apply(updates, gateway_id)
        return self.counts.lease(key_id, limits, num_tokens, usd, gateway_id, admit_one)

    def _key_updates(self, gateway_id: str, updates: list[Any]) -> None:
        if not self.is_capturing:
            self.counts.apply(updates, gateway_id)
        elif updates:
            self.batches.append(updates)


def restarting_gateway(clock: Clock) -> tuple[FakeControl, RayKeyLedger, tuple]:
    """A gateway on a control actor whose last checkpoint is taken now (empty): all it is granted from now on
    is lost with the actor, until the gateway tells the restarted one (`reseed`)."""
    control = FakeControl(KeyCounts(window_s=60.0, clock=clock))
    return control, RayKeyLedger(lambda: control, "gw", "control", clock=clock), control.counts.checkpoint()


def key_state(counts: KeyCounts, key_ids: tuple[str, ...] = ("k",)) -> tuple:
    """What `counts` counts of keys `key_ids`: for each, window requests and tokens, spend, USD held (rounded);
    then holds and leases."""
    state: tuple = ()
    for key_id in key_ids:
        usage = counts.meter.snapshot(key_id, counts.clock())
        state += (usage.num_requests, usage.num_tokens, round(usage.usd_today, 9), round(usage.usd_held, 9))
    return state + (counts.num_holds, counts.num_leases)


def counted(checkpoint: tuple, batches: list[list[Any]], clock: Clock, restore_after: int | None = None,
            key_ids: tuple[str, ...] = ("k",)) -> tuple:
    """What a restarted actor counts of `key_ids` (`key_state`) once it applied `batches` in this order
    (restarted again from its own checkpoint after `restore_after` of them)."""
    counts = KeyCounts(window_s=60.0, clock=clock)
    counts.restore(checkpoint)
    for i, batch in enumerate(batches):
        if i == restore_after:
            data, counts = counts.checkpoint(), KeyCounts(window_s=60.0, clock=clock)
            counts.restore(data)
        counts.apply(batch, "gw")
    return key_state(counts, key_ids)


def counted_in_every_order(checkpoint: tuple, batches: list[list[Any]], clock: Clock,
                           key_ids: tuple[str, ...] = ("k",)) -> tuple:
    """What `counted` counts of `batches` in the order they were sent, after checking that every other order
    counts the same (with a checkpoint and restore between any two batches, or none)."""
    in_order = counted(checkpoint, batches, clock, key_ids=key_ids)
    for order in itertools.permutations(batches):
        for restore_after in [None, *range(1, len(batches))]:
            assert counted(checkpoint, list(order), clock, restore_after, key_ids) == in_order, \
                ([[type(u).__name__ for u in b] for b in order], restore_after)
    return in_order


def never_restarted(counts: KeyCounts, batches: list[list[Any]], key_ids: tuple[str, ...] = ("k",)) -> tuple:
    """What the old actor (`counts`, alive after all) counts (`key_state`) once it applied `batches` in order,
    less what a gateway tells only a restarted actor."""
    for batch in batches:
        counts.apply([u for u in batch if not isinstance(u, (Reopened, Reheld, Rejoined))], "gw")
    return key_state(counts, key_ids)


async def test_a_lease_settled_after_its_gateway_told_a_restarted_actor_of_it_counts_once_in_any_order():
    """Case: settlements sent after the gateway's `reseed` reach the restarted actor before it (and the lease's
    return too): counted on top of the `Reopened`, not subtracted from it; the lease is given back and forgotten."""
    clock = Clock()
    control, ledger, checkpoint = restarting_gateway(clock)
    limits = KeyLimits(rpm=600, usd_per_day=10.0)
    first, second, third = [await ledger.admit("k", limits, 100, 0.01) for _ in range(3)]
    assert all(isinstance(h, LeaseHold) for h in (first, second, third))
    lease_usd = control.counts.meter.snapshot("k", clock()).usd_held
    ledger.settle(first, 80, 0.004)
    ledger.flush()  # counted by the old actor after its last checkpoint: lost with it
    control.is_capturing = True
    ledger.reseed()  # the batch with the `Reopened` (one request settled)
    ledger.settle(second, 120, 0.007)
    ledger.flush()
    ledger.settle(third, None, 0.002)
    ledger.flush(give_back_all=True)
    assert len(control.batches) == 3
    # The lease limits no tokens, so its requests count their real ones as they settle: the first one's, lost
    # with the old actor, as the `Reopened` tells them; the third's are unknown (its estimate counts).
    assert counted_in_every_order(checkpoint, control.batches, clock) == (3, 80 + 120 + 100, 0.013, 0.0, 0, 0)
    assert lease_usd > 0.03  # (the lease did hold USD, and gave it all back)


async def test_a_lease_settled_before_its_gateway_told_a_restarted_actor_of_it_counts_once_in_any_order():
    """Case: a settlement sent before the gateway's `reseed` reaches the restarted actor after it: the
    `Reopened` counts it already, so it is not counted again (nor the lease forgotten too early)."""
    clock = Clock()
    control, ledger, checkpoint = restarting_gateway(clock)
    limits = KeyLimits(rpm=600, usd_per_day=10.0)
    holds = [await ledger.admit("k", limits, 100, 0.01) for _ in range(3)]
    control.is_capturing = True  # the old actor is gone: what the gateway sends now reaches the restarted one
    ledger.settle(holds[0], 100, 0.004)
    ledger.flush()
    ledger.reseed()
    ledger.settle(holds[1], 100, 0.007)
    ledger.flush()
    in_flight = counted(checkpoint, control.batches, clock)
    assert in_flight[2] == 0.011 and in_flight[4:] == (0, 1)  # the third request runs: its lease is not forgotten
    assert counted(checkpoint, control.batches[::-1], clock) == in_flight
    ledger.settle(holds[2], 100, 0.002)
    ledger.flush(give_back_all=True)
    # (The first one's real tokens count once, whatever the order: on their own, or in the `Reopened`'s.)
    assert counted_in_every_order(checkpoint, control.batches, clock) == (3, 300, 0.013, 0.0, 0, 0)


async def test_an_exact_hold_settled_around_a_restart_is_counted_once_and_holds_nothing_in_any_order():
    """Case: a request admitted exactly (near the limit) by the old actor after its checkpoint, settled after
    its gateway told the restarted actor of it (`Reheld`, running) but applied before that: its cost counts
    and no hold stays. And one settled before the `reseed` (told settled) but applied after it counts once."""
    clock = Clock()
    control, ledger, checkpoint = restarting_gateway(clock)
    limits = KeyLimits(rpm=10, usd_per_day=1.0)  # a sixteenth of 10 requests holds none: admitted one by one
    late, early = await ledger.admit("k", limits, 100, 0.01), await ledger.admit("k", limits, 100, 0.01)
    assert isinstance(late, str) and isinstance(early, str)
    control.is_capturing = True
    ledger.settle(early, 50, 0.003)
    ledger.flush()
    ledger.reseed()
    ledger.settle(late, 70, 0.006)
    ledger.flush()
    # (The early one's real tokens count once, whatever the order: on their own, or as its `Reheld` tells them.)
    assert counted_in_every_order(checkpoint, control.batches, clock) == (2, 50 + 70, 0.009, 0.0, 0, 0)


async def test_what_the_old_actor_counted_after_its_checkpoint_of_grants_it_had_is_counted_once_in_any_order():
    """Case: the checkpoint has a lease (one request settled) and two exact holds; after it the old actor counts
    more settlements of both and the lease's return, then dies. The restarted actor knows the grants from its
    checkpoint, and counts what it lacks of them from what the gateway tells it (`Reopened`, `Reheld`) —
    with a settlement sent before the `reseed` and one after, applied in any order — exactly what the old
    actor, had it lived, would count: spend, USD held, window requests and tokens, holds and leases."""
    clock = Clock()
    control = FakeControl(KeyCounts(window_s=60.0, clock=clock))
    ledger = RayKeyLedger(lambda: control, "gw", "control", clock=clock)
    roomy = KeyLimits(rpm=600, tpm=60_000, usd_per_day=10.0)
    tight = KeyLimits(usd_per_day=1.0)  # a sixteenth of it holds no request of 0.1: admitted exactly
    leased = [await ledger.admit("k", roomy, 100, 0.01) for _ in range(5)]
    exact = [await ledger.admit("x", tight, 100, 0.1) for _ in range(2)]
    assert all(isinstance(h, LeaseHold) for h in leased) and all(isinstance(h, str) for h in exact)
    assert control.counts.num_leases == 1
    ledger.settle(leased[0], 80, 0.004)
    ledger.flush()
    checkpoint = control.counts.checkpoint()
    # Counted by the old actor after its last checkpoint: lost with it.
    ledger.settle(leased[1], 130, 0.012)
    ledger.settle(exact[0], 60, 0.07)
    ledger.flush()
    ledger.settle(leased[2], 90, 0.006)
    ledger.flush(give_back_all=True)
    control.is_capturing = True  # the old actor is gone: what the gateway sends now reaches the restarted one
    ledger.settle(leased[3], 70, 0.005)
    ledger.flush()
    ledger.reseed()
    keys = ("k", "x")
    while_running = never_restarted(control.counts, control.batches, keys)
    # k: 5 requests, 4 settled (370 real tokens) and one running (its estimate: 100); 0.01 held for it.
    # x: both held, one settled (60 tokens, 0.07 spent) and one running (0.1 held, its 100 estimated tokens).
    assert while_running == (5, 470, 0.027, 0.01, 2, 160, 0.07, 0.1, 1, 1)
    assert counted_in_every_order(checkpoint, control.batches, clock, keys) == while_running
    num_batches = len(control.batches)
    ledger.settle(leased[4], 120, 0.009)
    ledger.settle(exact[1], 95, 0.08)
    ledger.flush()
    done = never_restarted(control.counts, control.batches[num_batches:], keys)
    assert done == (5, 490, 0.036, 0.0, 2, 155, 0.15, 0.0, 0, 0)
    assert counted_in_every_order(checkpoint, control.batches, clock, keys) == done


async def test_a_gateways_batches_count_the_same_in_any_order_across_a_restart():
    """A gateway admits from leases and, near the rpm limit, exactly, settling in random order; the control
    actor, whose last checkpoint was taken at a random moment of its life, dies with all it counted since (some
    batches sent before the gateway noticed reach the restarted one); the gateway tells it its grants
    (`reseed`), settles the rest, lets its leases expire (renewing them with its updates) and stops. Applied in
    any order, with a checkpoint and restore between any two, its batches count what they count in order, and
    what the old actor would have counted had it lived: every request, its real tokens and its cost, once, and
    nothing held."""
    for seed in range(16):
        rng = random.Random(seed)
        clock = Clock()
        control, ledger, checkpoint = restarting_gateway(clock)
        checkpoint_at = rng.randrange(61)  # 0: empty; 60: the moment the actor dies
        limits = KeyLimits(rpm=48, tpm=48_000, usd_per_day=1.0)
        in_flight: list[Any] = []
        num_admitted, num_exact, num_tokens, usd_spent = 0, 0, 0, 0.0

        def settle_some(p: float) -> None:
            nonlocal num_tokens, usd_spent
            for hold in [h for h in in_flight if rng.random() < p]:
                in_flight.remove(hold)
                tokens, usd = rng.randrange(1, 200), rng.randrange(0, 100) / 10_000
                ledger.settle(hold, tokens, usd)
                num_tokens += tokens
                usd_spent += usd
                if rng.random() < 0.3:
                    ledger.flush()

        for i in range(90):
            clock.now_s += 0.01
            if i == checkpoint_at:
                checkpoint = control.counts.checkpoint()
            if i == 60:  # the actor died; what the gateway sends from now reaches the restarted one
                control.is_capturing = True
            if i < 60:
                verdict = await ledger.admit("k", limits, 100, 0.01)
                if not isinstance(verdict, OverLimit):
                    in_flight.append(verdict)
                    num_admitted += 1
                    num_exact += isinstance(verdict, str)
            if i == 70:
                ledger.reseed()
            settle_some(0.04 if i < 60 else 0.2)
            if rng.random() < 0.3:
                ledger.flush()
            await asyncio.sleep(0)  # renewals in the background
        clock.now_s += LEASE_TTL_S
        ledger.flush()  # expired: given back, renewed with the updates (no lease: the actor is restarting)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        settle_some(1.0)
        ledger.flush(give_back_all=True)
        batches = control.batches
        assert num_admitted > 40 and 0 < num_exact < num_admitted, (seed, num_admitted, num_exact)
        assert len(batches) >= 3, (seed, len(batches))

        in_order = counted(checkpoint, batches, clock)
        assert in_order == (num_admitted, num_tokens, round(usd_spent, 9), 0.0, 0, 0), (seed, checkpoint_at, in_order)
        assert never_restarted(control.counts, batches) == in_order, (seed, checkpoint_at)
        for _ in range(10):
            shuffled = rng.sample(batches, len(batches))
            assert counted(checkpoint, shuffled, clock, restore_after=rng.randrange(len(batches))) == in_order, seed
