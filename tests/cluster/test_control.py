"""What gateways sharing one control actor check of each other (no Ray needed)."""

from __future__ import annotations

from switchboard.cluster.ray_control import ControlActor, config_fingerprint, silent_gateways
from switchboard.config import parse_config


def test_gateways_compare_configs_but_not_how_they_reach_the_cluster():
    def config(address: str, params_b: float) -> str:
        return f"cluster: {{kind: ray, address: '{address}'}}\nexperts: [{{id: a, backend: {{kind: simulated}}, params_b: {params_b}}}]"

    same = config_fingerprint(parse_config(config("auto", 7)))
    assert config_fingerprint(parse_config(config("10.0.0.1:6379", 7))) == same
    assert config_fingerprint(parse_config(config("auto", 8))) != same


def test_silent_gateways_are_those_past_the_timeout_oldest_first():
    seen = {"a": 10.0, "b": 4.0, "c": 14.5}
    assert silent_gateways(seen, 15.0, 4.0) == ["b", "a"] and silent_gateways(seen, 15.0, 5.0) == ["b"]
    assert silent_gateways(seen, 15.0, 11.0) == []


async def test_a_silent_gateways_leases_are_released_and_a_live_ones_kept():
    """The control actor's body in-process over the embedded cluster (the lease bookkeeping is Ray-free)."""
    config = parse_config("""
experts:
  - {id: e, backend: {kind: simulated, time_scale: 0}, warm_at_start: true}
router: {enabled: false}
storage: {enabled: false}
""")
    now = [100.0]
    actor = ControlActor(config.model_dump(mode="json"), gateway_timeout_s=5.0, clock=lambda: now[0])
    await actor.start()
    try:
        def running() -> int:
            return sum(r["num_running"] for e in actor.fleet.snapshot()["experts"] for r in e["replicas"])

        dead = await actor.acquire("e", "r1", 10, 4, "", "gw-dead")
        alive = await actor.acquire("e", "r2", 10, 4, "", "gw-alive")
        assert dead[0] == alive[0] == "ok" and running() == 2
        now[0] += 3.0
        await actor.snapshot("gw-alive")  # the live gateway's periodic refresh
        now[0] += 3.0
        assert await actor.reclaim_silent_gateways() == ["gw-dead"]
        assert running() == 1
        assert (await actor.snapshot("gw-alive"))["counters"]["leases_reclaimed_from_silent_gateways"] == 1
        await actor.release(dead[1]["token"], None, "gw-dead")  # a late release of a reclaimed lease is harmless
        await actor.release(alive[1]["token"], None, "gw-alive")
        assert running() == 0 and await actor.reclaim_silent_gateways() == []
    finally:
        await actor.shutdown()


async def test_a_batchs_request_waits_behind_a_live_one_queued_after_it():
    """A Ray gateway's batch request is marked (`is_background`) in its call to the control actor, whose queue
    starts live requests first: with one sequence busy, a live request queued after a batch's runs before it."""
    import asyncio

    config = parse_config("""
experts:
  - {id: e, backend: {kind: simulated, time_scale: 0, max_concurrency: 1}, warm_at_start: true, ttft_slo_s: 300}
control_plane: {policies: {autoscale: {max_replicas: 1}}}
router: {enabled: false}
storage: {enabled: false}
""")
    actor = ControlActor(config.model_dump(mode="json"), gateway_timeout_s=60.0)
    await actor.start()
    try:
        first = await actor.acquire("e", "r1", 10, 4, "", "gw")
        assert first[0] == "ok"
        batch = asyncio.create_task(actor.acquire("e", "b1", 10, 4, "", "gw", is_background=True))
        await asyncio.sleep(0.05)  # queued first
        live = asyncio.create_task(actor.acquire("e", "r2", 10, 4, "", "gw"))
        await asyncio.sleep(0.05)
        assert not batch.done() and not live.done()
        await actor.release(first[1]["token"], None, "gw")
        await asyncio.wait_for(asyncio.shield(live), 10)
        await asyncio.sleep(0.05)
        assert live.result()[0] == "ok" and not batch.done()  # the live one got the sequence; the batch's waits
        await actor.release(live.result()[1]["token"], None, "gw")
        answer = await asyncio.wait_for(batch, 10)
        assert answer[0] == "ok"
        await actor.release(answer[1]["token"], None, "gw")
    finally:
        await actor.shutdown()


def test_three_gateways_share_one_count_of_a_keys_requests_and_budget():
    """The control actor's key counts (Ray-free): what three gateways admit together stays within the key's
    rpm, and its budget's holds count every gateway's requests in flight."""
    from switchboard.cluster.ray_limits import KeyCounts
    from switchboard.tenants.keys import KeyLimits
    from switchboard.tenants.limits import Limit, OverLimit

    now = [1_800_000_000.0]
    counts = KeyCounts(window_s=60.0, clock=lambda: now[0])
    rpm = KeyLimits(rpm=600)
    granted = {g: 0 for g in ("gw-a", "gw-b", "gw-c")}
    for i in range(900):  # each gateway alone would grant all of its 300
        gateway = ("gw-a", "gw-b", "gw-c")[i % 3]
        now[0] += 0.01
        if isinstance(counts.admit("k", rpm, 10, 0.0, gateway), str):
            granted[gateway] += 1
    assert sum(granted.values()) == 600 and all(n == 200 for n in granted.values())
    refused = counts.admit("k", rpm, 10, 0.0, "gw-a")
    assert isinstance(refused, OverLimit) and refused.limit is Limit.RPM

    counts, budget = KeyCounts(window_s=60.0, clock=lambda: now[0]), KeyLimits(usd_per_day=1.0)
    holds = [counts.admit("b", budget, 10, 0.4, g) for g in ("gw-a", "gw-b", "gw-c")]
    assert all(isinstance(h, str) for h in holds)  # 0, 0.4, 0.8 held when each was admitted
    assert isinstance(counts.admit("b", budget, 10, 0.4, "gw-a"), OverLimit)  # 1.2 held
    counts.settle(holds[0], 10, 0.1)
    assert counts.release_gateway("gw-b") == 1 and counts.num_holds == 1  # a silent gateway's holds go with it
    counts.settle(holds[1], 10, 0.4)  # a late settle of a released hold is not counted twice
    assert isinstance(counts.admit("b", budget, 10, 0.4, "gw-a"), str)  # 0.1 spent + 0.4 held



async def test_the_view_version_moves_with_membership_not_with_load():
    """A gateway refreshes its view when a lease carries a newer version: replicas starting, changing state or
    going move it; requests coming and going do not (else every request would refresh the whole view)."""
    config = parse_config("""
experts:
  - {id: e, backend: {kind: simulated, time_scale: 0}, warm_at_start: true}
  - {id: cold, backend: {kind: simulated, time_scale: 0}, warm_at_start: false}
router: {enabled: false}
storage: {enabled: false}
""")
    actor = ControlActor(config.model_dump(mode="json"), gateway_timeout_s=5.0)
    await actor.start()
    try:
        first = await actor.acquire("e", "r1", 10, 4, "", "gw")
        second = await actor.acquire("e", "r2", 10, 4, "", "gw")
        assert first[0] == second[0] == "ok" and first[2] == second[2]
        for answer in (first, second):
            await actor.release(answer[1]["token"], None, "gw")
        assert (await actor.snapshot("gw"))["version"] == first[2]
        woken = await actor.acquire("cold", "r3", 10, 4, "", "gw")  # a replica started (and warmed) for it
        assert woken[0] == "ok" and woken[1]["replica_id"].startswith("cold#")
        incarnation, number = woken[2]
        assert incarnation == first[2][0] and number > first[2][1]
        await actor.release(woken[1]["token"], None, "gw")
    finally:
        await actor.shutdown()


async def test_a_silent_gateways_key_holds_are_released_with_its_leases():
    """A gateway that dies mid-request leaves no budget held in the control actor's shared key counts (the
    key bookkeeping needs no fleet: the actor is not started)."""
    from switchboard.cluster.ray_limits import Settled
    from switchboard.tenants.keys import KeyLimits
    from switchboard.tenants.limits import OverLimit

    config = parse_config("experts: [{id: e, backend: {kind: simulated, time_scale: 0}}]")
    now = [100.0]
    actor = ControlActor(config.model_dump(mode="json"), gateway_timeout_s=5.0, clock=lambda: now[0])
    budget = KeyLimits(usd_per_day=0.5)
    held = await actor.lease_key("gw-dead", "k", budget, 10, 0.6, True, [])  # near the limit: exact
    assert isinstance(held, str)
    assert isinstance(await actor.lease_key("gw-alive", "k", budget, 10, 0.6, True, []), OverLimit)  # 0.6 held
    now[0] += 6.0
    assert await actor.lease_key("gw-alive", "other", KeyLimits(), 10, 0.0, True, []) is not None  # gw-alive is heard from
    assert await actor.reclaim_silent_gateways() == ["gw-dead"]
    alive = await actor.lease_key("gw-alive", "k", budget, 10, 0.6, True, [])
    assert isinstance(alive, str)  # the dead gateway's hold is gone
    # A late settle of a released hold counts nothing.
    await actor.key_updates("gw-alive", [Settled(held, 10, 0.6), Settled(alive, 10, 0.3)])
    usage = actor.keys.meter.snapshot("k", actor.keys.clock())
    assert (usage.usd_held, usage.usd_today) == (0.0, 0.3)
