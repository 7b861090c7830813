"""What a restarted control actor reads back from its checkpoint (Ray-free: `KeyCounts` and the actor's body
in-process over a dict store; `test_ray_state.py` kills the real actor and its node)."""

from __future__ import annotations

import asyncio
import itertools
import random

from switchboard.cluster.ray_checkpoint import Checkpointer, ControlCheckpoint, MemoryCheckpointStore
from switchboard.cluster.ray_control import ControlActor
from switchboard.cluster.ray_limits import KeyCounts, KeyLease, LeaseHold, Reheld, Reopened, Returned, Settled
from switchboard.config import parse_config
from switchboard.policies.keepalive import IdleHistogram, KeepAliveState
from switchboard.tenants.keys import KeyLimits
from switchboard.tenants.limits import OverLimit
from switchboard.types import ExpertId

RPM = KeyLimits(rpm=64, usd_per_day=1.0)


def usage(counts: KeyCounts, key_id: str = "k") -> tuple[int, float, float]:
    snapshot = counts.meter.snapshot(key_id, counts.clock())
    return snapshot.num_requests, snapshot.usd_today, snapshot.usd_held


def test_restored_key_counts_count_on_where_the_old_ones_stopped():
    now = [1_800_000_000.0]
    old = KeyCounts(window_s=60.0, clock=lambda: now[0])
    lease = old.lease("k", RPM, 10, 0.01, "gw", admit_one=True)
    assert isinstance(lease, KeyLease) and lease.num_requests == 4
    hold = old.admit("k", RPM, 10, 0.01, "gw")
    old.settle(LeaseHold(lease.lease_id, "k", 10, 0.01), 10, 0.02)
    restored = KeyCounts(window_s=60.0, clock=lambda: now[0])
    restored.restore(old.checkpoint())
    assert usage(restored) == usage(old) and restored.gateway_ids() == {"gw"}

    # The lease and the hold go on as if nothing happened: settled, returned, forgotten.
    restored.apply([Settled(LeaseHold(lease.lease_id, "k", 10, 0.01), 10, 0.02), Settled(hold, 10, 0.03),
                    Returned(lease.lease_id, 2, 2, 0, lease.usd - 0.02)])
    num_requests, usd_today, usd_held = usage(restored)
    assert (num_requests, round(usd_today, 9), round(usd_held, 9)) == (3, 0.07, 0.0)
    assert restored.num_leases == restored.num_holds == 0
    # New ids never collide with what the predecessor lent after its checkpoint (gateways may still hold those).
    assert old.lease("k", RPM, 10, 0.01, "gw", admit_one=True).lease_id != restored.lease("k", RPM, 10, 0.01, "gw", admit_one=True).lease_id


def rounded(values: tuple) -> tuple:
    return tuple(round(v, 9) for v in values)


def test_grants_made_after_the_checkpoint_are_counted_once_when_their_gateway_tells_them_again():
    now = [1_800_000_000.0]
    old = KeyCounts(window_s=60.0, clock=lambda: now[0])
    data = old.checkpoint()
    lease = old.lease("k", RPM, 10, 0.01, "gw", admit_one=True)  # lent after the last checkpoint
    old.settle(LeaseHold(lease.lease_id, "k", 10, 0.01), 10, 0.01)  # lost with the old actor
    restored = KeyCounts(window_s=60.0, clock=lambda: now[0])
    restored.restore(data)
    assert usage(restored) == (0, 0.0, 0.0)
    # A settlement (the lease's second) that reaches the new actor before the lease does is spent once, not
    # again with the lease.
    reopened = Reopened(lease, num_taken=3, num_settled=2, usd_settled=0.02, usd_spent=0.02, returned=None,
                        num_tokens_settled=20, num_tokens_used=20)
    restored.apply([Settled(LeaseHold(lease.lease_id, "k", 10, 0.01), 10, 0.01, num_settled=2), reopened], "gw")
    assert rounded(usage(restored)) == rounded((4, 0.02, lease.usd - 0.02))  # the whole lease; its settled holds released
    restored.apply([reopened], "gw")  # known now: counted once
    assert usage(restored)[0] == 4
    returned = Returned(lease.lease_id, 3, 1, 0, lease.usd - 0.03)
    restored.apply([Settled(LeaseHold(lease.lease_id, "k", 10, 0.01), 10, 0.01, num_settled=3), returned])
    assert restored.num_leases == 0 and rounded(usage(restored)) == (3, 0.03, 0.0)
    # Done with and forgotten, it is still known: told again (a gateway's recent grants), it counts nothing more.
    restored.apply([Reopened(lease, 3, 3, 0.03, 0.03, returned, 30, 30)], "gw")
    assert rounded(usage(restored)) == (3, 0.03, 0.0)

    # Exact admissions, running and settled.
    running, settled = Reheld("gw/x.1", "k", 10, 0.01, None), Reheld("gw/x.2", "k", 10, 0.01, 0.005)
    for _ in range(2):
        restored.apply([running, settled], "gw")
    assert rounded(usage(restored)) == (5, 0.035, 0.01)
    restored.apply([Settled("gw/x.1", 10, 0.01)])
    assert rounded(usage(restored)) == (5, 0.045, 0.0)


def test_a_restarted_key_count_refuses_what_the_old_one_would_have():
    """rpm 64 across a restart: what the predecessor counted plus what the restored one grants stays 64."""
    now = [1_800_000_000.0]
    limits = KeyLimits(rpm=64)
    counts = KeyCounts(window_s=60.0, clock=lambda: now[0])
    granted = 0
    for i in range(200):
        if i == 50:  # the actor dies; its last checkpoint is current (every change is written)
            data = counts.checkpoint()
            counts = KeyCounts(window_s=60.0, clock=lambda: now[0])
            counts.restore(data)
        now[0] += 0.01
        granted += isinstance(counts.admit("k", limits, 1, 0.0, "gw"), str)
    assert granted == 64 and isinstance(counts.admit("k", limits, 1, 0.0, "gw"), OverLimit)


def key_state(counts: KeyCounts) -> tuple:
    """What a key's counts decide with, for each key, rounded: window requests and tokens, spend, USD held; and
    the holds and leases in flight."""
    now_s = counts.clock()
    keys = tuple((k, counts.meter.snapshot(k, now_s)) for k in ("a", "b"))
    return tuple((k, u.num_requests, u.num_tokens, round(u.usd_today, 9), round(u.usd_held, 9)) for k, u in keys) + (
        counts.num_holds, counts.num_leases, tuple(sorted(counts.gateway_ids())))


def test_a_checkpoint_restores_every_window_hold_and_lease_and_is_plain_data_taken_at_once():
    """Random leases, exact admissions, settlements, returns and silent gateways on two keys through three
    gateways. At a random moment a checkpoint is taken, and the original counts one more call (not in it); a copy
    restored from the checkpoint must count what the original counted when it was taken, and, given the same
    calls from then on as a second copy restored at that moment, count as the original to the end. The
    checkpoint holds no live object (plain data: the windows as numbers, pickled apart from the actor's state)."""
    limits = KeyLimits(rpm=400, tpm=40_000, usd_per_day=5.0)
    for seed in range(8):
        rng = random.Random(seed)
        now = [1_800_000_000.0]
        counts = [KeyCounts(window_s=60.0, clock=lambda: now[0])]  # the original, then the copy
        leases: list[tuple[str, list[KeyLease], list[int]]] = []  # (gateway, each one's lease, [requests taken])
        holds: list[tuple[str, list[str]]] = []  # (gateway, each one's hold id)

        def act() -> None:
            choice, gateway, key = rng.random(), f"gw-{rng.randrange(3)}", rng.choice("ab")
            if choice < 0.2:
                granted = [c.lease(key, limits, 10, 0.01, gateway, admit_one=True) for c in counts]
                if isinstance(granted[0], KeyLease):
                    leases.append((gateway, granted, [0]))
                elif isinstance(granted[0], str):
                    holds.append((gateway, granted))
            elif choice < 0.55 and leases:
                gateway, granted, taken = rng.choice(leases)
                if taken[0] < (granted[0].num_requests or 1):
                    taken[0] += 1
                    num_tokens = rng.randrange(5, 15)
                    for c, lease in zip(counts, granted):  # (settled as taken: its ordinal among the lease's is `taken`)
                        c.apply([Settled(LeaseHold(lease.lease_id, key, 10, 0.01), num_tokens, 0.008, taken[0])], gateway)
            elif choice < 0.6 and leases:
                gateway, granted, taken = leases.pop(rng.randrange(len(leases)))
                for c, lease in zip(counts, granted):
                    c.apply([Returned(lease.lease_id, taken[0], (lease.num_requests or 1) - taken[0], 0,
                                      max(0.0, (lease.usd or 0.0) - 0.01 * taken[0]))], gateway)
            elif choice < 0.65 and holds:
                gateway, granted = holds.pop(rng.randrange(len(holds)))
                num_tokens = rng.randrange(5, 15)
                for c, hold_id in zip(counts, granted):
                    c.apply([Settled(hold_id, num_tokens, 0.009)], gateway)
            elif choice < 0.655:
                for c in counts:
                    c.release_gateway(gateway)
            now[0] += rng.uniform(-0.05, 0.6) if rng.random() < 0.98 else -2.0  # now and then the clock steps back

        checkpoint_at = rng.randrange(300, 700)
        for step in range(800):
            if step == checkpoint_at:
                data, taken = counts[0].checkpoint(), key_state(counts[0])
                encoded = ControlCheckpoint({}, data).encode()
                taken_at_s = now[0]
                act()  # counted after the checkpoint was taken: not in it
                assert not any(name in encoded for name in (b"WindowEntry", b"_Lent", b"Tally", b"CountedSettlements", b"Unlent"))
                restored = KeyCounts(window_s=60.0, clock=lambda: taken_at_s)
                restored.restore(ControlCheckpoint.decode(encoded).keys)
                assert key_state(restored) == taken
                copy = KeyCounts(window_s=60.0, clock=lambda: now[0])
                copy.restore(counts[0].checkpoint())
                counts.append(copy)
                for granted in [g for _, g, _ in leases] + [g for _, g in holds]:
                    granted.append(granted[0])  # the copy knows the original's grants by the same ids
            act()
            assert key_state(counts[-1]) == key_state(counts[0]), (seed, step)


def test_a_hold_and_a_lease_older_than_the_window_are_restored_and_settle_alike():
    now = [1_800_000_000.0]
    original = KeyCounts(window_s=60.0, clock=lambda: now[0])
    hold = original.admit("a", KeyLimits(usd_per_day=1.0), 10, 0.1, "gw-0")
    lease = original.lease("b", KeyLimits(rpm=160, usd_per_day=1.0), 10, 0.01, "gw-1", admit_one=False)
    assert isinstance(hold, str) and isinstance(lease, KeyLease) and lease.num_requests == 10
    now[0] += 61  # both out of their windows, still holding USD
    copy = KeyCounts(window_s=60.0, clock=lambda: now[0])
    copy.restore(ControlCheckpoint.decode(ControlCheckpoint({}, original.checkpoint()).encode()).keys)
    assert key_state(copy) == key_state(original) == (("a", 0, 0, 0.0, 0.1), ("b", 0, 0, 0.0, 0.06), 1, 1, ("gw-0", "gw-1"))
    for counts in (original, copy):
        counts.apply([Settled(hold, 12, 0.05)], "gw-0")
        counts.apply([Settled(LeaseHold(lease.lease_id, "b", 10, 0.01), 9, 0.02), Returned(lease.lease_id, 1, 9, 0, 0.05)], "gw-1")
    assert key_state(copy) == key_state(original) == (("a", 0, 0, 0.05, 0.0), ("b", 0, 0, 0.02, 0.0), 0, 0, ())


async def test_the_checkpointer_writes_off_the_caller_at_most_once_per_interval():
    store = MemoryCheckpointStore()
    taken = [0]

    def take() -> ControlCheckpoint:
        taken[0] += 1
        return ControlCheckpoint({}, b"")

    checkpointer = Checkpointer(store, "k", take, interval_s=0.2)
    task = asyncio.create_task(checkpointer.run())
    try:
        for _ in range(50):
            checkpointer.mark()  # a burst of changes
        assert store.num_puts == 0  # mark() never writes: the task does
        while store.num_puts < 1:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert store.num_puts == 1 and taken[0] == 1  # one write for the burst, none after
        assert await checkpointer.load() == ControlCheckpoint({}, b"")
    finally:
        task.cancel()
    await checkpointer.delete()
    assert await checkpointer.load() is None


async def test_deleting_the_checkpoint_waits_for_a_write_still_running_in_its_thread():
    """A fleet shut down while a checkpoint is being written (in a thread, which cancelling the writer's task does
    not stop) leaves no checkpoint behind."""
    import threading

    class SlowStore(MemoryCheckpointStore):
        def __init__(self) -> None:
            super().__init__()
            self.putting, self.may_put = threading.Event(), threading.Event()

        def put(self, key: str, value: bytes) -> None:
            self.putting.set()
            self.may_put.wait(10)
            super().put(key, value)

    store = SlowStore()
    checkpointer = Checkpointer(store, "k", lambda: ControlCheckpoint({}, ()), interval_s=0.01)
    task = asyncio.create_task(checkpointer.run())
    checkpointer.mark()
    while not store.putting.is_set():
        await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    deleting = asyncio.create_task(checkpointer.delete())
    await asyncio.sleep(0.05)
    store.may_put.set()
    await deleting
    assert store.num_puts == 1 and store.values == {}


async def test_a_restarted_control_actor_starts_from_its_predecessors_histograms_and_key_counts():
    """The actor's body twice over one store, as Ray restarts it: the second starts from the first's state."""
    config = parse_config("""
experts:
  - {id: e, backend: {kind: simulated, time_scale: 0}, warm_at_start: false}
router: {enabled: false}
storage: {enabled: false}
""").model_dump(mode="json")
    store = MemoryCheckpointStore()
    first = ControlActor(config, checkpoint_store=store, fleet_tag="t/")
    await first.start()
    learned = IdleHistogram(60.0, (3, 0, 7) + (0,) * 237, num_out_of_bounds=2, num_consumed=12)
    first.fleet.loop.state = first.fleet.loop.state.__class__(keepalive=KeepAliveState({ExpertId("e"): learned}))
    lease = await first.lease_key("gw", "k", RPM, 10, 0.01, True, [])
    assert isinstance(lease, KeyLease)
    while first.checkpointer.num_written < 2 or (await first.keepalive_histograms())["e"][1] != learned.counts:
        await asyncio.sleep(0.01)
    await asyncio.sleep(2 * first.checkpointer.interval_s)  # the last change written
    before = await first.keepalive_histograms(), (await first.key_usage("k"))
    await first.fleet.stop()  # the actor dies (its checkpoint stays: only `shutdown` removes it)

    second = ControlActor(config, checkpoint_store=store, fleet_tag="t/")
    # A key's call may reach it before anything starts its fleet: what it counts adds to the predecessor's.
    assert await second.key_updates("gw", []) is None and await second.key_usage("k") == before[1]
    await second.start()
    try:
        assert second.is_restored and (await second.keepalive_histograms(), (await second.key_usage("k"))) == before
        # Its own activity starts afresh, so none of its idle gaps count as ingested.
        assert second.fleet.loop.state.keepalive.histograms[ExpertId("e")].num_consumed == 0
    finally:
        await second.shutdown()
    assert store.values == {}  # a fleet shut down leaves no checkpoint behind
    await ControlActor(config, checkpoint_store=store, fleet_tag="other/").start()  # another fleet: nothing to restore


async def test_three_gateways_grant_a_keys_rpm_once_across_a_restart_from_a_lagging_checkpoint():
    """The actor dies at a random moment; its last checkpoint was written a random number of admissions before.
    The restarted one restores it, the gateways tell it their recent grants (`reseed`), and the cluster still
    grants a key's rpm at most once, and its budget (each request costing its estimate) overspent by at most one
    request per gateway; what it under-grants is bounded too (leases and holds the lost writes left counted)."""
    from switchboard.cluster.ray_key_ledger import RayKeyLedger
    from switchboard.testing.actor_handles import InProcessHandle

    config = parse_config("experts: [{id: e, backend: {kind: simulated, time_scale: 0}}]").model_dump(mode="json")
    cases = [(KeyLimits(rpm=200), 200, 200), (KeyLimits(usd_per_day=1.2), 120, 120 + 3)]
    for seed, (limits, num_allowed, num_at_most) in itertools.product(range(8), cases):
        rng = random.Random(seed)
        now = [1_800_000_000.0]
        actors = [ControlActor(config, gateway_timeout_s=30.0, clock=lambda: now[0])]
        actors[0].keys = KeyCounts(window_s=60.0, clock=lambda: now[0])
        handle = lambda: InProcessHandle(actors[-1])  # noqa: E731 — the current incarnation
        ledgers = [RayKeyLedger(handle, f"gw-{i}", "control", clock=lambda: now[0]) for i in range(3)]
        checkpoint_at, crash_at = sorted(rng.sample(range(1, 150), 2))
        checkpoint, num_admitted, in_flight = actors[0].keys.checkpoint(), 0, []
        for i in range(400):
            now[0] += 0.01
            if i == checkpoint_at:
                checkpoint = actors[-1].keys.checkpoint()
            if i == crash_at:
                restarted = ControlActor(config, gateway_timeout_s=30.0, clock=lambda: now[0])
                restarted.keys = KeyCounts(window_s=60.0, clock=lambda: now[0])
                restarted.keys.restore(checkpoint)
                actors.append(restarted)
                for ledger in ledgers:
                    ledger.reseed()
            ledger = ledgers[rng.randrange(3)]
            verdict = await ledger.admit("k", limits, 10, 0.01)
            if not isinstance(verdict, OverLimit):
                num_admitted += 1
                in_flight.append((ledger, verdict))
            while in_flight and (len(in_flight) > 8 or rng.random() < 0.5):
                done_by, hold = in_flight.pop(rng.randrange(len(in_flight)))
                done_by.settle(hold, 10, 0.01)
            if rng.random() < 0.2:
                ledger.flush()
            await asyncio.sleep(0)
        assert num_allowed - 16 <= num_admitted <= num_at_most, (seed, limits, num_admitted)
        for actor in actors:
            await actor.shutdown()


async def test_a_restarted_actor_lends_no_quota_until_the_gateways_that_used_keys_told_their_grants():
    from switchboard.cluster.ray_limits import Rejoined

    config = parse_config("experts: [{id: e, backend: {kind: simulated, time_scale: 0}}]").model_dump(mode="json")
    store = MemoryCheckpointStore()
    first = ControlActor(config, checkpoint_store=store, fleet_tag="t/")
    for gateway_id in ("gw-a", "gw-b"):
        assert isinstance(await first.lease_key(gateway_id, "k", RPM, 10, 0.01, True, []), KeyLease)
    await first.checkpointer.write()
    second = ControlActor(config, checkpoint_store=store, fleet_tag="t/")
    asking = asyncio.ensure_future(second.lease_key("gw-a", "k", RPM, 10, 0.01, True, [Rejoined()]))
    while not second.is_restored:  # (the checkpoint is read in a thread)
        await asyncio.sleep(0.01)
    for _ in range(5):
        await asyncio.sleep(0)
    assert not asking.done() and second.keys.rejoining == {"gw-b"}  # gw-b may hold a lease unknown here
    await second.key_updates("gw-b", [Rejoined()])
    assert isinstance(await asking, KeyLease)
    for actor in (first, second):
        actor._checkpoints.cancel()
