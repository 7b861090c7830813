"""The differential test of issue 16: the live fleet and the simulator take the same decisions.

The same arrivals — a few hundred requests for four experts, some naming their expert and some `auto` (the
fleet-aware router chooses among the router's candidates and wakes cold experts), in bursts with idle gaps
past keep-alive, on a cluster small enough that starts compete for memory, with one replica's engine crashing
under its requests — go through

- the simulator (`Simulation` with the serverless plane), and
- the live fleet (`LiveFleet`, its own control loop task and lease path), on an event loop whose clock is
  virtual (it jumps to the next timer instead of waiting), with engines that run the simulator's engine model
  (`sim.engine.ReplicaEngine`) on that clock,

both with the live default `ControlSettings`. They must produce the same control actions in the same order at
the same times (`ControlLoop.log`), and every request the same outcome: served by the same expert and replica,
with the same cold-start flag, or rejected, or failed with the crash. A decision forked on either side — a
driver deciding itself, stepping at other moments, or seeing the fleet differently — changes the log or an
outcome (`test_a_fork_on_one_side_is_caught` shows it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from types import SimpleNamespace

import numpy as np
import pytest

from switchboard.config import parse_config
from switchboard.fleet import ops
from switchboard.engines.base import Completion, EngineUnavailable, Finish, GenerationRequest, Usage
from switchboard.policies.actions import AssignRequest, RejectRequest
from switchboard.policies.admission import Verdict
from switchboard.policies.balance import Balanced
from switchboard.policies.control import ControlSettings, RequestArrived
from switchboard.runtime.fleet import LiveFleet
from switchboard.runtime.lease import AdmissionRejected
from switchboard.sim.cluster import BuiltCluster, ClusterSpec, ExpertSimSpec, PoolSpec, SloSpec, resolve_cluster
from switchboard.sim.engine import ReplicaEngine, Sequence, StepDone
from switchboard.sim.planes import ServerlessPlane
from switchboard.sim.runner import ReplicaCrash, RoutingInputs, Simulation
from switchboard.sim.planes import quality_only_choices
from switchboard.sim.workload import NO_EXPERT, Workload
from switchboard.perf.sleep import wake_time_s
from switchboard.sim.scenario import with_delta
from switchboard.types import FinishReason

EXPERTS = (("e1b", 1.0, 0.1), ("e3b", 3.0, 0.2), ("e8b", 8.0, 0.4), ("e14b", 14.0, 0.8))
"""(id, params_b, USD/Mtok) of the experts, all served on L4s."""
SLO = SloSpec(ttft_s=2.0, tpot_s=0.2)
CRASH_AT_S = 1650.0
"""In the second burst, the e8b replica serving then crashes while it holds requests (the test checks that it
does). Which replica that is (its number) depends on the timing model, so a run without the crash finds it."""


AUTO = NO_EXPERT
QUALITY_BY_SIZE = (0.55, 0.62, 0.70, 0.74)
"""Predicted quality of each expert for an `auto` request, ± 0.08 per request: bigger is better, so the router
prefers experts that are often cold and fleet-aware routing trades quality for warmth (and wakes them)."""


def make_arrivals(seed: int = 7) -> list[tuple[float, int, int, int, tuple[float, ...]]]:
    """(arrival s, expert index or AUTO, prompt tokens, output tokens, predicted quality per expert): a steady
    trickle to the small experts, bursts to the larger ones, `auto` requests the fleet-aware router places,
    and idle gaps longer than keep-alive's fallback window between the phases."""
    rng, auto_rng = random.Random(seed), random.Random(seed + 1)
    out: list[tuple[float, int, int, int, tuple[float, ...]]] = []

    def poisson(start_s: float, end_s: float, rate_per_s: float, experts: tuple[int, ...], r=rng) -> None:
        t = start_s
        while True:
            t += r.expovariate(rate_per_s)
            if t >= end_s:
                return
            expert = r.choice(experts)
            quality = tuple(round(q + r.uniform(-0.08, 0.08), 4) for q in QUALITY_BY_SIZE) if expert == AUTO else ()
            out.append((t, expert, r.randint(50, 1500), r.randint(10, 300), quality))

    poisson(0.0, 240.0, 0.25, (0, 1))            # a trickle: cold starts of the small experts
    poisson(100.0, 140.0, 1.6, (2,))             # a burst on e8b: scale-up
    poisson(200.0, 220.0, 1.2, (2, 3))           # a burst on both larger experts
    poisson(20.0, 300.0, 0.1, (AUTO,), auto_rng)  # the router chooses, among cold and warm experts
    poisson(1500.0, 1700.0, 0.2, (0, 1, 3))      # after a gap past keep-alive: everything cold again
    poisson(1600.0, 1680.0, 1.4, (2,))           # a burst on e8b during which one of its replicas crashes
    poisson(1500.0, 1700.0, 0.1, (AUTO,), auto_rng)
    out.sort()
    return out


def predicted_quality(arrivals) -> np.ndarray:
    return np.array([a[4] or (0.0,) * len(EXPERTS) for a in arrivals])


def sim_cluster() -> BuiltCluster:
    spec = ClusterSpec(
        name="differential", slo=SLO,
        pools=[PoolSpec(hardware="l4", workers=2, devices_per_worker=2)],
        experts=[ExpertSimSpec(id=e, params_b=p, usd_per_mtok=usd) for e, p, usd in EXPERTS],
    )
    return resolve_cluster(spec)


SLEEP_TIER = {"keepalive": {"sleep_after_s": 0.0, "asleep_keepalive_s": 1800.0}}
"""The sleep tier as `switchboard-sleep` turns it on (sim/scenario.py): the live default's delta."""


def live_config(step_interval_s: float, policies: str = "{}"):
    experts = "\n".join(
        f"""  - id: {e}
    backend: {{kind: simulated, hardware: l4}}
    params_b: {p}
    usd_per_mtok_input: {usd}
    usd_per_mtok_output: {usd}
    ttft_slo_s: {SLO.ttft_s}
    tpot_slo_s: {SLO.tpot_s}
    warm_at_start: false"""
        for e, p, usd in EXPERTS)
    return parse_config(f"""
experts:
{experts}
router: {{enabled: false}}
storage: {{enabled: false}}
control_plane: {{step_interval_s: {step_interval_s}, policies: {policies}}}
failover: {{expert_circuit: {{failure_threshold: 1000}}, replica_circuit: {{failure_threshold: 1000}}}}
""")


# ------------------------------------------------------------------------------------------- the simulator


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How one request ended, as its caller sees it."""

    expert: str
    replica: str | None
    is_cold_start: bool
    how: str  # "served" | "rejected" | "failed"


def crash_at(arrivals, settings: ControlSettings, step_interval_s: float) -> ReplicaCrash:
    """The crash of the e8b replica that is warm and busiest at `CRASH_AT_S`, found by a run without it."""
    starts, stops = {}, set()
    log = run_simulator(arrivals, settings, step_interval_s, crash=None)[0]
    for e in log:
        if e.at_s < CRASH_AT_S and e.kind == "StartReplica" and e.subject.startswith("e8b#"):
            starts[e.subject] = e.at_s
        elif e.at_s < CRASH_AT_S and e.kind in ("StopReplica", "DrainReplica"):
            stops.add(e.subject)
    live = [r for r in starts if r not in stops]
    assigned = {r: sum(1 for e in log if e.kind == "AssignRequest" and e.target == r and e.at_s <= CRASH_AT_S) for r in live}
    assert live, "no e8b replica is up at the crash time: the scenario no longer exercises a crash"
    return ReplicaCrash(at_s=CRASH_AT_S, replica_id=max(live, key=lambda r: (assigned[r], starts[r])))


def run_simulator(arrivals, settings: ControlSettings, step_interval_s: float, fork=None, crash: ReplicaCrash | None = None):
    cluster = sim_cluster()
    n = len(arrivals)
    workload = Workload.from_arrays(
        [a[0] for a in arrivals], [a[2] for a in arrivals], [a[3] for a in arrivals],
        pinned_expert=np.array([a[1] for a in arrivals], dtype=np.int32),
        expert_names=tuple(e for e, _, _ in EXPERTS))
    price = np.array([e.usd_per_mtok for e in cluster.experts])
    predicted = predicted_quality(arrivals)
    router_pick = quality_only_choices(cluster.expert_ids, predicted, price, 0.0)
    plane = ServerlessPlane("differential", settings, cluster.expert_ids, price, router_pick,
                            control_interval_s=step_interval_s, keep_log=True, predicted_quality=predicted)
    if fork is not None:
        fork(plane.loop)
    result = Simulation(cluster, workload, plane, RoutingInputs(predicted, np.zeros((0, 0))),
                        crashes=(crash,) if crash is not None else ()).run()
    outcomes = []
    for i in range(n):
        expert = result.expert_ids[result.expert_index[i]]
        how = "failed" if result.failed is not None and result.failed[i] else "rejected" if result.rejected[i] else "served"
        replica = result.served_by.get(i) if how != "rejected" else None
        outcomes.append(Outcome(expert, replica, bool(result.waited_for_cold_start[i]) and how != "rejected", how))
    # The simulator stops stepping at its first periodic step with every request ended; compare until then.
    last_end_s = max(np.nanmax(result.finished_at), max(a[0] for a in arrivals))
    end_s = plane.loop.next_periodic_step_at(last_end_s)
    return [e for e in plane.loop.log if e.at_s < end_s], outcomes, end_s


# ------------------------------------------------------------------------------------------- the live fleet


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on a virtual clock from 0: when nothing is ready it jumps to the next timer instead of
    waiting, so an hour of timers runs in moments and every callback sees the exact time it was scheduled for."""

    def __init__(self) -> None:
        super().__init__()
        self._virtual_now_s = 0.0
        real_select = self._selector.select

        def select(timeout: float | None = None):
            if timeout is None:
                raise RuntimeError("deadlock: nothing scheduled and nothing ready")
            if timeout > 0 and self._scheduled:
                self._virtual_now_s = max(self._virtual_now_s, self._scheduled[0].when())
            return real_select(0)

        self._selector.select = select

    def time(self) -> float:
        return self._virtual_now_s


class VirtualEngine:
    """A live `Engine` whose timing is the simulator's engine model (`ReplicaEngine`) on the loop's clock; it can
    sleep (at once) and wake (in the perf model's wake time, as the simulator wakes a replica)."""

    def __init__(self, replica_id: str, expert_id: str, profile) -> None:
        self.replica_id, self.expert_id, self.profile = replica_id, expert_id, profile
        self.engine = ReplicaEngine(replica_id, profile)
        self.is_running = True
        self.can_sleep = True
        self.num_wakes = 0
        self._waiting: dict[int, asyncio.Future] = {}

    async def start(self) -> None:
        await asyncio.sleep(self.profile.cold_start_s)

    async def sleep(self) -> None:
        return None

    async def wake(self) -> None:
        self.num_wakes += 1
        self.engine = ReplicaEngine(self.replica_id, self.profile)  # a fresh engine model, as the simulator's
        await asyncio.sleep(wake_time_s(self.profile))

    async def stop(self) -> None:
        self.is_running = False

    def crash(self) -> int:
        """The engine dies: everything it holds fails. Returns how many requests it held."""
        self.is_running = False
        held = list(self._waiting.values())
        self._waiting.clear()
        for future in held:
            future.set_exception(EngineUnavailable(self.expert_id, "the engine crashed"))
        return len(held)

    async def complete(self, request: GenerationRequest) -> Completion:
        if not self.is_running:
            raise EngineUnavailable(self.expert_id, "the engine crashed")
        i = int(request.request_id)
        future = asyncio.get_running_loop().create_future()
        self._waiting[i] = future
        seq = Sequence(i, request.num_prompt_tokens_estimate, request.max_tokens)
        self._absorb(self.engine.submit(seq, asyncio.get_running_loop().time()))
        await future
        return Completion("", Finish(FinishReason.LENGTH, Usage(seq.num_prompt_tokens, seq.num_output_tokens)))

    def _absorb(self, outcome) -> None:
        for seq in outcome.finished:
            future = self._waiting.pop(seq.request_index, None)
            if future is not None:
                future.set_result(None)
        event = outcome.next_event
        if event is not None:
            asyncio.get_running_loop().call_at(event.time_s, self._on_step, event.time_s, event.payload)

    def _on_step(self, at_s: float, done: StepDone) -> None:
        if self.is_running:
            self._absorb(self.engine.on_step(done, at_s))


class VirtualCluster:
    """The simulator's workers, with `VirtualEngine`s (the `Cluster` adapter)."""

    inventory_interval_s = None

    def __init__(self, cluster: BuiltCluster) -> None:
        self.cluster = cluster
        self.engines: dict[str, VirtualEngine] = {}

    def workers(self):
        return list(self.cluster.workers)

    def engine_for(self, replica_id, expert, worker_id, num_devices=0):
        hardware = next(w.hardware for w in self.cluster.workers if w.worker_id == worker_id)
        engine = VirtualEngine(replica_id, expert.id, self.cluster.profiles[(expert.id, hardware)])
        self.engines[replica_id] = engine
        return engine

    async def close(self) -> None:
        return None


def run_live(arrivals, step_interval_s: float, end_s: float, crash: ReplicaCrash | None, fork=None,
             policies: str = "{}"):
    cluster = sim_cluster()
    virtual = VirtualCluster(cluster)
    outcomes: list[Outcome | None] = [None] * len(arrivals)
    crashed_holding: list[int] = []
    fleet_counters: dict[str, int] = {}

    async def scenario():
        fleet = LiveFleet(live_config(step_interval_s, policies), clock=asyncio.get_running_loop().time, cluster=virtual)
        fleet.loop.log = []
        # The same fleet the simulator starts from (workers, experts, serving estimates).
        sim_model = ops.empty_fleet(0.0, cluster.workers, cluster.experts, cluster.estimates)
        assert (fleet.model.workers, fleet.model.experts, fleet.model.estimates) == \
            (sim_model.workers, sim_model.experts, sim_model.estimates)
        if fork is not None:
            fork(fleet)
        await fleet.start()
        loop = asyncio.get_running_loop()
        tasks = []

        async def one(i: int) -> None:
            _, j, num_prompt, num_output, quality = arrivals[i]
            if j == AUTO:  # the router's candidates and pick, as the simulator's plane ranks them
                price = [usd for _, _, usd in EXPERTS]
                ranked = sorted(range(len(EXPERTS)), key=lambda k: -quality[k])[:4]
                choice = SimpleNamespace(expert_id=EXPERTS[ranked[0]][0], cost_weight=0.0, num_prompt_tokens=num_prompt,
                                         candidates=[(EXPERTS[k][0], quality[k], price[k]) for k in ranked])
                expert, _ = await fleet.route(choice)
            else:
                expert = EXPERTS[j][0]
            lease = fleet.lease(expert, str(i), num_prompt, num_output)
            try:
                async with lease:
                    await lease.complete(GenerationRequest(str(i), "chat", {}, num_output, num_prompt))
                outcomes[i] = Outcome(expert, lease.replica.replica_id, lease.was_cold, "served")
            except AdmissionRejected:
                outcomes[i] = Outcome(expert, None, False, "rejected")
            except EngineUnavailable:
                outcomes[i] = Outcome(expert, lease.replica.replica_id if lease.replica else None, lease.was_cold,
                                      "failed")

        for i, (at_s, *_rest) in enumerate(arrivals):
            loop.call_at(at_s, lambda i=i: tasks.append(loop.create_task(one(i))))
        if crash is not None:
            loop.call_at(crash.at_s, lambda: crashed_holding.append(virtual.engines[crash.replica_id].crash()))
        await asyncio.sleep(end_s + 1.0)
        await asyncio.gather(*tasks)
        log = [entry for entry in fleet.loop.log if entry.at_s < end_s]
        fleet_counters.update(fleet.counters)
        await fleet.stop()
        return log

    loop = VirtualTimeLoop()
    try:
        log = loop.run_until_complete(scenario())
    finally:
        loop.close()
    run_live.counters = fleet_counters  # how many wakes and cold starts the live fleet made (the tier's test)
    return log, outcomes, crashed_holding


def _rounded(log):
    return [dataclasses.replace(e, at_s=round(e.at_s, 6)) for e in log]


def first_difference(a, b) -> str:
    for k, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"entry {k}: {x} != {y}"
    return f"lengths {len(a)} != {len(b)}" if len(a) != len(b) else ""


STEP_INTERVAL_S = 1.0


@pytest.fixture(scope="module")
def arrivals():
    return make_arrivals()


@pytest.fixture(scope="module")
def crash(arrivals):
    return crash_at(arrivals, ControlSettings(), STEP_INTERVAL_S)


@pytest.fixture(scope="module")
def simulated(arrivals, crash):
    return run_simulator(arrivals, ControlSettings(), STEP_INTERVAL_S, crash=crash)


def test_live_and_simulated_take_the_same_decisions(arrivals, simulated, crash):
    sim_log, sim_outcomes, end_s = simulated
    live_log, live_outcomes, crashed_holding = run_live(arrivals, STEP_INTERVAL_S, end_s, crash)

    # The scenario exercises what it claims to.
    kinds = {e.kind for e in sim_log}
    assert {"StartReplica", "AssignRequest", "DrainReplica", "StopReplica"} <= kinds, kinds
    assert sum(o.is_cold_start for o in sim_outcomes) >= 10
    assert sum(e.kind == "StartReplica" for e in sim_log) >= 8
    assert any(e.code == "engine-lost" for e in sim_log) and crashed_holding and crashed_holding[0] >= 1
    assert sum(o.how == "failed" for o in sim_outcomes) == crashed_holding[0]
    auto = [i for i, a in enumerate(arrivals) if a[1] == AUTO]
    router_picks = [EXPERTS[max(range(len(EXPERTS)), key=lambda k: arrivals[i][4][k])][0] for i in auto]
    assert sum(sim_outcomes[i].expert != pick for i, pick in zip(auto, router_picks)) >= 5  # fleet-aware swaps
    assert any(e.kind == "StartReplica" and e.code == "predicted-demand" for e in sim_log)  # route-aware pre-warm

    assert _rounded(live_log) == _rounded(sim_log), first_difference(_rounded(live_log), _rounded(sim_log))
    differing = [(i, s, l) for i, (s, l) in enumerate(zip(sim_outcomes, live_outcomes)) if s != l]
    assert not differing, f"{len(differing)} requests differ, first: {differing[:3]}"


def reject_one_admission(loop) -> None:
    """A fork: this side alone turns its 50th fast-path admission into a rejection."""
    admit_fast = loop.plane.admit_fast
    calls = {"n": 0}

    def forked(snapshot, request, rng):
        fast = admit_fast(snapshot, request, rng)
        if fast.actions and isinstance(fast.actions[0], AssignRequest):
            calls["n"] += 1
            if calls["n"] == 50:
                return dataclasses.replace(fast, actions=(RejectRequest(request, 429, 1, fast.actions[0].reason),))
        return fast

    loop.plane.admit_fast = forked


def old_simulator_fast_path(loop) -> None:
    """The simulator's own per-request path before issue 16: admission without reclaiming idle memory, and a
    request balanced onto a replica still starting is assigned without a step."""
    plane, step = loop.plane, loop.step

    def admit(snapshot, request):
        decision = plane.admission.admit(snapshot, request)
        if decision.verdict is Verdict.ADMIT and not decision.wake_expert:
            outcome = plane.balance.choose(snapshot, request, loop.rng)
            if isinstance(outcome, Balanced):
                return (AssignRequest(request, outcome.replica_id, decision.expected_ttft_s, False, decision.reason),)
        if not decision.verdict.is_admitted and not decision.wake_expert:
            return (RejectRequest(request, decision.status_code, decision.retry_after_s, decision.reason),)
        return step(snapshot, (RequestArrived(request),)).actions

    loop.admit = admit


@pytest.mark.parametrize("side, fork", [("live", reject_one_admission), ("simulator", reject_one_admission),
                                        ("simulator", old_simulator_fast_path)])
def test_a_fork_on_one_side_is_caught(arrivals, simulated, crash, side, fork):
    """One side alone changes a decision, or decides on its own path, and the comparison fails."""
    if side == "live":
        sim_log, sim_outcomes, end_s = simulated
        live_log, live_outcomes, _ = run_live(arrivals, STEP_INTERVAL_S, end_s, crash, fork=lambda fleet: fork(fleet.loop))
    else:
        sim_log, sim_outcomes, end_s = run_simulator(arrivals, ControlSettings(), STEP_INTERVAL_S, fork=fork, crash=crash)
        live_log, live_outcomes, _ = run_live(arrivals, STEP_INTERVAL_S, end_s, crash)
    assert _rounded(live_log) != _rounded(sim_log)
    assert live_outcomes != sim_outcomes


def test_with_the_sleep_tier_live_and_simulated_sleep_and_wake_alike(arrivals):
    """The same comparison with the sleep tier on (`switchboard-sleep`'s delta): idle replicas go to sleep, the
    next request wakes them on their worker, and both sides price those starts at the wake
    (`fleet.sleep.reflect_asleep`) — in keep-alive, placement, admission, routing — and take the same decisions.
    (No crash here: the test above has it, and with the tier its e8b target is still starting at the crash,
    which the simulator's crash model does not cover.)"""
    settings = with_delta(ControlSettings(), SLEEP_TIER)
    sim_log, sim_outcomes, end_s = run_simulator(arrivals, settings, STEP_INTERVAL_S)
    live_log, live_outcomes, _ = run_live(arrivals, STEP_INTERVAL_S, end_s, None,
                                          policies='{keepalive: {sleep_after_s: 0.0, asleep_keepalive_s: 1800.0}}')

    sleeps = [e for e in sim_log if e.kind == "DrainReplica" and e.code == "sleep"]
    assert len(sleeps) >= 5 and run_live.counters["wakes"] >= 5, (len(sleeps), run_live.counters)
    # Asleep replicas keep their devices on both sides: a start that needs them evicts them first, alike.
    assert any(e.kind == "EvictAsleep" for e in sim_log)
    assert _rounded(live_log) == _rounded(sim_log), first_difference(_rounded(live_log), _rounded(sim_log))
    differing = [(i, s, l) for i, (s, l) in enumerate(zip(sim_outcomes, live_outcomes)) if s != l]
    assert not differing, f"{len(differing)} requests differ, first: {differing[:3]}"
