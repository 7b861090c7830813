"""A gateway's own decisions on the view the control actor pushes, and the control actor's count of them (Ray-free:
the control actor's body runs in-process over the embedded cluster; replica actors are stood in for by names)."""

from __future__ import annotations

import asyncio
import random
import time

from switchboard.cluster.ray_control import ControlActor
from switchboard.cluster.ray_routing import REPORT_MAX_EVENTS, Ended, LoadReports, LocalRouter, RoutingView, Served, Started, Timed
from switchboard.config import parse_config
from switchboard.fleet import ops
from switchboard.fleet.state import QueuedRequest, ReplicaLoad
from switchboard.policies.control import ControlPlane

CONFIG = """
experts:
  - {id: e, backend: {kind: simulated, time_scale: 0}, warm_at_start: true}
  - {id: cold, backend: {kind: simulated, time_scale: 0}, warm_at_start: false}
router: {enabled: false}
storage: {enabled: false}
control_plane:
  policies:
    autoscale: {min_replicas_by_expert: {e: 2}, upscale_delay_s: 0}
    balance: {kind: power-of-two}
"""


def request(request_id: str, expert_id: str = "e", num_tokens: int = 14) -> QueuedRequest:
    return QueuedRequest(request_id, expert_id, time.time(), 10, num_tokens - 10)


async def started_actor(now: list[float] | None = None) -> ControlActor:
    """A control actor whose expert `e` has two warm replicas."""
    config = parse_config(CONFIG)
    actor = ControlActor(config.model_dump(mode="json"), gateway_timeout_s=5.0,
                         **({"clock": lambda: now[0]} if now is not None else {}))
    await actor.start()
    for _ in range(400):
        if len(actor.fleet.model.warm_replicas_of("e")) == 2:
            return actor
        await asyncio.sleep(0.01)
    raise AssertionError("expert e never had two warm replicas")


async def routing_view(actor: ControlActor, gateway_id: str) -> RoutingView:
    """The gateway's routing view, with stand-ins for the replica actors (the embedded engines have none)."""
    view = (await actor.poll(gateway_id, None, 0.0))["routing"]
    warm = [r.replica_id for r in view.model.replicas.values() if r.state.value == "warm"]
    return RoutingView(view.version, view.model, {r: (f"actor-of-{r}", "node") for r in warm})


def running(actor: ControlActor, expert_id: str = "e") -> int:
    return sum(r.load.num_running for r in actor.fleet.model.replicas_of(expert_id))


def gateway_router(config_text: str = CONFIG) -> LocalRouter:
    config = parse_config(config_text)
    return LocalRouter(ControlPlane(config.control_plane.policies), random.Random(0))


async def test_a_gateway_balances_warm_requests_itself_and_the_control_actor_counts_them():
    actor = await started_actor()
    try:
        router = gateway_router()
        router.install(await routing_view(actor, "gw"))
        assignments = [router.assign(request(f"r{i}"), actor.fleet.model.now_s) for i in range(6)]
        assert all(a is not None for a in assignments)
        # Power of two choices on the gateway's own loads: with two replicas, they take turns.
        by_replica = {a.replica_id for a in assignments}
        assert len(by_replica) == 2 and all(a.actor == f"actor-of-{a.replica_id}" for a in assignments)
        assert sorted(sum(a.replica_id == r for a in assignments) for r in by_replica) == [3, 3]

        # Reported in a batch, the control actor counts them on the same replicas (as if it had admitted them).
        await actor.report("gw", [Started(request(f"r{i}"), a.replica_id) for i, a in enumerate(assignments)])
        assert running(actor) == 6 and actor.fleet.counters["admitted"] == 6
        # The reporting gateway gets the model without its own requests (it adds them itself, exactly); another
        # gateway sees them.
        own = (await actor.poll("gw", None, 0.0))["routing"].model
        other = (await actor.poll("gw-2", None, 0.0))["routing"].model
        assert sum(r.load.num_running for r in own.replicas_of("e")) == 0
        assert sum(r.load.num_running for r in other.replicas_of("e")) == 6
        router.install(await routing_view(actor, "gw"))
        assert sum(r.load.num_running for r in router._model.replicas_of("e")) == 6

        for i in range(6):
            router.finish(f"r{i}")
        await actor.report("gw", [Ended(f"r{i}", ok=True) for i in range(6)] + [Ended("r0", ok=True)])  # a repeat counts once
        assert running(actor) == 0
        assert sum(r.num_served for r in actor.fleet.live.values()) == 6
    finally:
        await actor.shutdown()


async def test_what_needs_a_start_a_queue_or_a_lost_replica_goes_to_the_control_actor():
    actor = await started_actor()
    try:
        router = gateway_router()
        assert router.assign(request("r0"), 0.0) is None  # no view yet
        view = await routing_view(actor, "gw")
        router.install(view)
        now_s = actor.fleet.model.now_s
        assert router.assign(request("c0", "cold"), now_s) is None  # no warm replica: a start

        # A replica without a free sequence slot queues in the control actor, never in the gateway.
        full, free = sorted(view.actors)
        replica = view.model.replicas[full]
        crowded = ops.set_load(view.model, full, ReplicaLoad(replica.capacity.max_num_seqs, 10, ()))
        router.install(RoutingView(view.version, crowded, {full: view.actors[full]}))
        assert router.assign(request("r1"), now_s) is None

        # A replica seen failing is never chosen again by this gateway, even before the control actor stops it.
        router.install(view)
        router.forget(free)
        picks = {router.assign(request(f"r{i}"), now_s).replica_id for i in range(2, 6)}
        assert picks == {full}
        router.install(view)  # a view that still lists it (the report is on its way) does not bring it back
        assert {router.assign(request(f"r{i}"), now_s).replica_id for i in range(6, 10)} == {full}
    finally:
        await actor.shutdown()


async def test_a_silent_gateways_own_requests_are_released_and_a_stopped_replica_is_not_counted():
    now = [100.0]
    actor = await started_actor(now)
    try:
        view = await routing_view(actor, "gw-dead")
        first, second = sorted(view.actors)
        await actor.report("gw-dead", [Started(request("d1"), first), Started(request("d2"), second)])
        await actor.report("gw-alive", [Started(request("a1"), first), Started(request("x"), "e#99")])  # no such replica
        assert running(actor) == 3
        now[0] += 3.0
        await actor.poll("gw-alive", None, 0.0)
        now[0] += 3.0
        assert await actor.reclaim_silent_gateways() == ["gw-dead"]
        assert running(actor) == 1 and actor.num_leases_reclaimed == 2
        await actor.report("gw-alive", [Ended("a1", ok=False), Ended("x", ok=True)])
        assert running(actor) == 0 and sum(r.num_failed for r in actor.fleet.live.values()) == 3  # 2 reclaimed, 1 failed
    finally:
        await actor.shutdown()


def test_requests_served_within_one_batch_are_reported_as_one_served_event_per_replica():
    """A request started and served before its gateway reports is one entry of its replica's `Served` (first);
    failed ones, ones still running and ends of earlier starts keep their own events, in order."""
    from switchboard.cluster.ray_streams import RemoteEngineError

    lost = RemoteEngineError("ReplicaLost", "e", "gone", 503, "replica_lost")
    reports = LoadReports()
    events = [Started(request("a"), "e#1"), Started(request("b"), "e#2"), Ended("a", ok=True), Started(request("c"), "e#1"),
              Ended("b", ok=False), Ended("old", ok=True), Started(request("x"), "e#2"), Ended("x", ok=False, error=lost),
              Started(request("x", num_tokens=20), "e#1"), Ended("c", ok=True), Started(request("d"), "e#1"), Ended("x", ok=True)]
    for event in events:
        reports.add(event)
    taken = reports.take()
    assert taken == [Served("e#1", (("e", 10, 4), ("e", 10, 4), ("e", 10, 10))),  # a, c, the retried x: as they ended
                     events[1], events[4], events[5], events[6], events[7], events[10]]
    assert reports.take() == []
    for i in range(REPORT_MAX_EVENTS):  # served requests wait for the next batch...
        reports.add(Started(request(f"s{i}"), "e#1"))
        reports.add(Ended(f"s{i}", ok=True))
    assert not reports.is_due
    for i in range(REPORT_MAX_EVENTS):  # ... requests running (or failed) fill one
        reports.add(Started(request(f"t{i}"), "e#1"))
    assert reports.is_due and len(reports.take()) == 1 + REPORT_MAX_EVENTS


async def test_served_requests_count_as_their_starts_and_ends_would():
    """`Served` counts what a `Started` and an `Ended` (ok) per request count: arrivals and ends in the demand
    statistics, the replica busy at the report, `admitted`, served; the replica's load as before. (Only the
    zero-length idle gaps between requests reported in turn are not recorded: they ran together.) Nothing on a
    replica no longer warm."""
    by_events, folded = await started_actor(), await started_actor()
    try:
        first, second = sorted((await routing_view(by_events, "gw")).actors)
        assert sorted((await routing_view(folded, "gw")).actors) == [first, second]
        requests = [request(f"r{i}", num_tokens=12 + i) for i in range(5)]
        reported_at = time.time()
        await by_events.report("gw", [e for r in requests for e in (Started(r, first), Ended(r.request_id, ok=True))])
        await folded.report("gw", [Served(first, tuple((r.expert_id, r.num_prompt_tokens, r.num_output_tokens_expected)
                                                     for r in requests))])
        for actor in (by_events, folded):
            assert actor.fleet.counters["admitted"] == 5 and actor.fleet.live[first].num_served == 5
            assert running(actor) == 0 and actor.fleet.model.replicas[first].last_busy_at >= reported_at
            activity = actor.fleet.model.activity_of("e")
            assert (activity.num_arrivals, activity.num_in_flight) == (5, 0) and activity.idle_since_at >= reported_at
        one, other = by_events.fleet.model.activity_of("e"), folded.fleet.model.activity_of("e")
        assert abs(other.decayed_arrivals - one.decayed_arrivals) < 1e-3
        assert abs(other.decayed_output_tokens - one.decayed_output_tokens) < 1e-2 and other.decayed_prompt_tokens > 49.9
        assert other.num_idle_gaps == 0 and one.num_idle_gaps == 4
        for actor in (by_events, folded):
            assert actor.fleet.model.replicas[second].load == ReplicaLoad(0, 0, ())

        await folded.report("gw", [Served("e#99", (("e", 10, 4),))])  # no such replica: nothing counted
        assert folded.fleet.counters["admitted"] == 5 and folded.fleet.model.activity_of("e").num_arrivals == 5
    finally:
        await by_events.shutdown()
        await folded.shutdown()


async def test_a_gateway_under_steady_load_reports_no_idle_gaps():
    """Served requests overlap the requests a report shows running, as they did: a gateway that always had one
    in flight (ending one and starting the next within a report) leaves the expert no idle gap, and keep-alive
    no reason to unload it."""
    actor = await started_actor()
    try:
        first, _ = sorted((await routing_view(actor, "gw")).actors)
        served = Served(first, (("e", 10, 4),) * 3)
        await actor.report("gw", [served, Started(request("p1"), first)])
        await actor.report("gw", [served, Ended("p1", ok=True), Started(request("p2"), first)])
        await actor.report("gw", [served, Ended("p2", ok=True)])
        activity = actor.fleet.model.activity_of("e")
        assert (activity.num_arrivals, activity.num_in_flight, activity.num_idle_gaps) == (11, 0, 0)
        assert running(actor) == 0 and actor.fleet.live[first].num_served == 11
    finally:
        await actor.shutdown()


async def test_a_restarted_control_actor_counts_again_what_a_gateway_reports_in_flight():
    """After a restart the gateway reports everything it has in flight — requests it placed itself and leases
    the dead incarnation granted — and the new incarnation counts them on their replicas."""
    before = await started_actor()
    try:
        router = gateway_router()
        router.install(await routing_view(before, "gw"))
        placed = router.assign(request("mine"), before.fleet.model.now_s)
        leased = await before.acquire("e", "leased", 10, 4, "", "gw")
        assert placed is not None and leased[0] == "ok"
    finally:
        await before.shutdown()
    after = await started_actor()  # stands in for the restarted incarnation (same replica names)
    try:
        router.adopt(request("leased"), leased[1]["replica_id"])
        in_flight = router.in_flight()
        assert {(s.request.request_id, s.replica_id) for s in in_flight} == {("mine", placed.replica_id),
                                                                             ("leased", leased[1]["replica_id"])}
        await after.report("gw", in_flight)
        await after.report("gw", in_flight)  # reported twice (a batch and the rejoin): counted once
        assert running(after) == 2
        router.install(await routing_view(after, "gw"))  # its own requests come back exactly once
        assert sum(r.load.num_running for r in router._model.replicas_of("e")) == 2
    finally:
        await after.shutdown()


def test_key_spend_seeds_are_sent_again_to_a_restarted_control_actor():
    from switchboard.cluster.ray_key_ledger import RayKeyLedger

    from switchboard.cluster.ray_limits import Rejoined

    sent, updates = [], []

    class Actor:
        class seed_keys:  # noqa: N801 — stands in for a Ray actor method
            @staticmethod
            def remote(seeds):
                sent.append(list(seeds))

        class key_updates:  # noqa: N801
            @staticmethod
            def remote(gateway_id, batch):
                updates.append((gateway_id, batch))

    ledger = RayKeyLedger(lambda: Actor, "gw", "control")
    ledger.seed("k", 1.0, 2.0)
    ledger.seed("j", 0.5, 0.5)
    ledger.reseed()
    assert sent == [[("k", 1.0, 2.0)], [("j", 0.5, 0.5)], [("k", 1.0, 2.0), ("j", 0.5, 0.5)]]
    assert updates == [("gw", [Rejoined()])]  # no grants to tell: only that it has told them


async def test_a_keyed_admission_waits_for_a_restarting_control_actor_and_never_skips_the_limits():
    from ray.exceptions import ActorDiedError, ActorUnavailableError

    from switchboard.cluster.ray_key_ledger import RayKeyLedger
    from switchboard.gateway.errors import ApiError
    from switchboard.tenants.keys import KeyLimits

    answers: list = [ActorUnavailableError("restarting", None), ActorUnavailableError("restarting", None), "gw/1"]

    class Actor:
        class lease_key:  # noqa: N801 — stands in for a Ray actor method
            @staticmethod
            def remote(*args):
                async def answer():
                    found = answers.pop(0)
                    if isinstance(found, Exception):
                        raise found
                    return found
                return answer()

    ledger = RayKeyLedger(lambda: Actor, "gw", "control", restart_wait_s=30.0)
    assert await ledger.admit("k", KeyLimits(rpm=10), 10, 0.0) == "gw/1" and answers == []

    impatient = RayKeyLedger(lambda: Actor, "gw", "control", restart_wait_s=0.0)
    for failure in (ActorUnavailableError("restarting", None), ActorDiedError()):
        answers[:] = [failure]
        try:
            await impatient.admit("k", KeyLimits(rpm=10), 10, 0.0)
        except ApiError as exc:
            assert exc.status == 503 and "control" in exc.message
        else:
            raise AssertionError("admitted without checking the key's limits")


async def test_a_gateway_routes_auto_requests_itself_as_the_control_actor_would_and_reports_the_wake_ups():
    from types import SimpleNamespace

    from switchboard.cluster.ray_routing import Routed
    from switchboard.runtime.fleet import fleet_route, route_answer

    actor = await started_actor()
    try:
        router = gateway_router()
        router.install(await routing_view(actor, "gw"))
        # The router prefers the cold expert; a warm one close in quality answers while it wakes (cold-start hiding).
        choice = SimpleNamespace(expert_id="cold", candidates=(("e", 0.85, 1.0), ("cold", 0.9, 1.0)), cost_weight=None, stand_ins=())
        model = router.model_at(actor.fleet.model.now_s)
        decision = fleet_route(router.plane, model, choice, lambda expert_id: True)
        here = route_answer(choice, decision)
        assert here == route_answer(choice, fleet_route(actor.fleet.loop.plane, actor.fleet.model, choice, lambda expert_id: True))
        assert here[0] == "e" and here[1]["waking"] == ["cold"]
        assert not actor.fleet.model.replicas_of("cold")

        # Reported, the control actor records the decision as its own and starts what it wakes.
        await actor.report("gw", [Routed(model.now_s, choice.expert_id, decision)])
        assert any(d["action"] == "Route" and d["expert"] == "e" for d in actor.fleet.decisions)
        for _ in range(1000):
            if actor.fleet.model.warm_replicas_of("cold"):
                break
            await asyncio.sleep(0.01)
        assert actor.fleet.model.warm_replicas_of("cold")
        # Nothing to decide (no candidates, or every circuit open): the router's pick stands.
        assert fleet_route(router.plane, model, choice, lambda expert_id: False) is None
        assert fleet_route(router.plane, model, SimpleNamespace(expert_id="e", candidates=()), lambda expert_id: True) is None
    finally:
        await actor.shutdown()


async def test_a_report_run_before_an_earlier_one_still_counts_each_request_once_and_ends_it():
    """Ray does not keep an async actor's calls in the order one caller made them: under load, a gateway's report
    with a request's end ran before its earlier report with the start, and the start, counted last, never
    ended — the replica showed a request running for good (`tests/cluster/test_ray_restart.py` failed on it).
    An end that comes first waits for its start and is applied right after it; one for another replica does not
    end a start there (a retry of the same request elsewhere), and one whose start never comes is dropped after
    `EARLY_END_KEPT_S`."""
    from switchboard.cluster.ray_control import EARLY_END_KEPT_S

    now = [1000.0]
    actor = await started_actor(now)
    try:
        first, second = sorted(r.replica_id for r in actor.fleet.model.warm_replicas_of("e"))
        await actor.report("gw", [Ended("late", ok=True, replica_id=first), Started(request("x"), first)])
        assert running(actor) == 1  # "x" runs; "late"'s end waits for its start
        await actor.report("gw", [Started(request("late"), first)])
        assert running(actor) == 1 and actor.fleet.counters["admitted"] == 2  # "late" counted, then ended
        await actor.report("gw", [Ended("x", ok=True, replica_id=first)])
        assert running(actor) == 0

        await actor.report("gw", [Ended("retried", ok=False, replica_id=first)])  # its first try, on `first`
        await actor.report("gw", [Started(request("retried"), second)])  # the retry on `second`: still running
        assert running(actor) == 1
        await actor.report("gw", [Ended("retried", ok=True, replica_id=second)])
        assert running(actor) == 0

        now[0] += EARLY_END_KEPT_S + 1  # the first try's end never met its start: forgotten
        await actor.report("gw", [])  # the gateway is not silent: only the old end goes
        assert await actor.reclaim_silent_gateways() == []
        assert "retried" not in actor._early_ends.get("gw", {})
    finally:
        await actor.shutdown()


LLAMACPP_CONFIG = """
experts:
  - {id: smol, params_b: 0.135, backend: {kind: llamacpp, n_threads: 1}, context_tokens: 512, warm_at_start: true}
router: {enabled: false}
storage: {enabled: false}
"""


async def test_a_gateways_answer_timings_reach_the_control_actors_estimates():
    """A gateway on a shared fleet reports each answer's own timing (llama.cpp's) with its load events; the control
    actor measures the expert's speed by them as the embedded fleet does, and the view it pushes carries them."""
    from switchboard.engines.base import Timing

    actor = ControlActor(parse_config(LLAMACPP_CONFIG).model_dump(mode="json"), gateway_timeout_s=5.0)
    await actor.start()
    try:
        for _ in range(3000):
            if actor.fleet.model.warm_replicas_of("smol"):
                break
            await asyncio.sleep(0.01)
        (replica,) = actor.fleet.model.warm_replicas_of("smol")
        (key,) = [k for k in actor.fleet.model.estimates if k[0] == "smol"]
        roofline = actor.fleet.model.estimates[key]
        reports = LoadReports()
        reports.add(Timed(replica.replica_id, Timing(num_prefilled=100, prefill_s=0.5, num_decoded=50, decode_s=0.25)))
        await actor.report("gw", reports.take())
        measured = actor.fleet.model.estimates[key]
        assert measured.prefill_tokens_per_s == 200 and measured.decode_step_s_batch_1 == 0.005 != roofline.decode_step_s_batch_1
        pushed = (await actor.poll("gw-2", None, 0.0))["routing"].model
        assert pushed.estimates[key] == measured and pushed.replicas[replica.replica_id].capacity == measured.capacity
    finally:
        await actor.shutdown()
