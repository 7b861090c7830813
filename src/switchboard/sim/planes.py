"""Control planes the simulator can drive, built from the real policies in `switchboard.policies`.

- `StaticPlane`: a fleet provisioned once for peak and always on; round-robin over an expert's replicas.
- `ServerlessPlane`: scale-to-zero with the control plane's keep-alive, autoscaling, placement, load-balancing
  and admission policies, composed by `ServerlessControl` (the same composition the live control loop runs).

Routing is separate (`QualityOnlyRouting`, `FleetAwareRouting`) so each plane can use either.
"""

from __future__ import annotations

import dataclasses
import math
import random

import numpy as np

from switchboard.fleet import ops
from switchboard.fleet.state import EngineCapacity, FleetSnapshot, QueuedRequest
from switchboard.policies.admission import AdmissionSettings, make_admission
from switchboard.policies.autoscale import AutoscaleSettings, AutoscaleState, make_autoscale
from switchboard.policies.balance import BalanceSettings, make_balance
from switchboard.policies.keepalive import KeepAliveAction, KeepAliveSettings, KeepAliveState, make_keepalive
from switchboard.policies.placement import PlacementSettings, make_placement
from switchboard.policies import predict
from switchboard.router.selection import RoutingConstraints, choose
from switchboard.sim.plane import Action, Admission, Enqueue, Reject, RouteDecision, RouteQuery, StartReplica, StopReplica
from switchboard.types import ExpertId, ReplicaId, ReplicaState, WorkerId

# ------------------------------------------------------------------------------------------------ routing


class QualityOnlyRouting:
    """The router blind to the fleet: max predicted quality − cost_weight · price (the router's own rule)."""

    def __init__(self, expert_ids: tuple[str, ...], predicted: np.ndarray, usd_per_mtok: np.ndarray,
                 cost_weight: float = 0.0) -> None:
        self.expert_ids = expert_ids
        if len(predicted):
            index, _ = choose(predicted, usd_per_mtok, expert_ids, RoutingConstraints(cost_weight=cost_weight))
        else:
            index = np.zeros(0, dtype=np.int64)
        self._choice = index.astype(np.int32)

    def route(self, snapshot: FleetSnapshot, query: RouteQuery) -> RouteDecision:
        return RouteDecision(int(self._choice[query.request_index]), None, "quality-only")


class FleetAwareRouting:
    """score = predicted quality − λ·price − μ·expected extra latency (queueing, or the wake-up of a cold expert).

    Cold-start hiding: when the expert the quality rule prefers is not warm, a warm expert within
    `hide_margin` of its predicted quality (net of price) answers, and the preferred one is woken.

    Stand-in for the control-plane engineer's fleet-aware routing policy until it lands in
    `switchboard.policies`; it uses only the shared latency predictions of `switchboard.policies.predict`.
    """

    def __init__(self, expert_ids: tuple[str, ...], usd_per_mtok: np.ndarray, *, cost_weight: float = 0.0,
                 latency_weight_per_s: float = 0.02, hide_margin: float = 0.05) -> None:
        self.expert_ids = expert_ids
        self.price = np.asarray(usd_per_mtok, dtype=np.float64)
        self.cost_weight = cost_weight
        self.latency_weight_per_s = latency_weight_per_s
        self.hide_margin = hide_margin
        self._cold_start_s: np.ndarray | None = None

    def _wake_s(self, snapshot: FleetSnapshot) -> np.ndarray:
        # The fastest wake-up over hardware kinds is a property of the estimates, which never change in a run.
        if self._cold_start_s is None:
            self._cold_start_s = np.array([
                min((est.cold_start_s for (eid, _), est in snapshot.estimates.items() if eid == e), default=np.inf)
                for e in self.expert_ids])
        return self._cold_start_s

    def extra_latency_s(self, snapshot: FleetSnapshot, num_prompt_tokens: int) -> tuple[np.ndarray, np.ndarray]:
        """(expected wait before prefill per expert, whether each expert has a warm replica)."""
        best = np.full(len(self.expert_ids), np.inf)
        warm = np.zeros(len(self.expert_ids), dtype=bool)
        pos = {e: i for i, e in enumerate(self.expert_ids)}
        for replica in snapshot.replicas.values():
            if not replica.is_accepting:
                continue
            j = pos[replica.expert_id]
            warm[j] |= replica.is_warm
            best[j] = min(best[j], predict.queueing_s(snapshot, replica))
        cold = np.isinf(best)
        best[cold] = self._wake_s(snapshot)[cold]
        return best, warm

    def route(self, snapshot: FleetSnapshot, query: RouteQuery) -> RouteDecision:
        base = query.predicted_quality - self.cost_weight * self.price
        wait_s, warm = self.extra_latency_s(snapshot, query.num_prompt_tokens)
        preferred = int(np.argmax(base))
        if not warm[preferred] and warm.any():
            warm_base = np.where(warm, base, -np.inf)
            k = int(np.argmax(warm_base))
            if warm_base[k] >= base[preferred] - self.hide_margin:
                return RouteDecision(k, preferred, f"hide cold start of {self.expert_ids[preferred]}")
        score = base - self.latency_weight_per_s * wait_s
        chosen = int(np.argmax(score))
        return RouteDecision(chosen, preferred if chosen != preferred and not warm[preferred] else None, "fleet-aware")


# ------------------------------------------------------------------------------------------------ static


class StaticPlane:
    """Provisioned for peak before the workload starts, always on, round-robin balancing, no control loop."""

    control_interval_s = None

    def __init__(self, name: str, routing, replicas_per_expert: dict[str, int], hardware: str) -> None:
        self.name = name
        self.routing = routing
        self.replicas_per_expert = replicas_per_expert
        self.hardware = hardware
        self._next: dict[str, int] = {}

    def initial_actions(self, snapshot: FleetSnapshot) -> list[Action]:
        actions: list[Action] = []
        for expert_id, count in self.replicas_per_expert.items():
            for _ in range(count):
                placed = _first_fit(snapshot, ExpertId(expert_id), self.hardware)
                if placed is None:
                    raise ValueError(f"static fleet: no {self.hardware} worker has room for {expert_id}")
                snapshot = ops.add_replica(snapshot, ReplicaId(f"plan-{len(actions)}"),
                                           snapshot.estimate(ExpertId(expert_id), snapshot.workers[placed].hardware),
                                           placed)
                actions.append(StartReplica(ExpertId(expert_id), placed, is_preprovisioned=True))
        return actions

    def route(self, snapshot, query):
        return self.routing.route(snapshot, query)

    def admit(self, snapshot: FleetSnapshot, request: QueuedRequest) -> Admission:
        replicas = snapshot.accepting_replicas_of(request.expert_id)
        if not replicas:
            return Reject(f"static fleet has no replica of {request.expert_id}")
        k = self._next.get(request.expert_id, 0)
        self._next[request.expert_id] = k + 1
        return Enqueue(replicas[k % len(replicas)].replica_id, "round-robin")

    def control(self, snapshot: FleetSnapshot) -> list[Action]:
        return []


def _first_fit(snapshot: FleetSnapshot, expert_id: ExpertId, hardware: str) -> WorkerId | None:
    for worker in snapshot.workers.values():
        est = snapshot.estimate(expert_id, worker.hardware)
        if worker.hardware == hardware and est and est.memory_gb <= snapshot.memory_free_gb(worker.worker_id) + 1e-9:
            return worker.worker_id
    return None


# ------------------------------------------------------------------------------------------------ serverless


@dataclasses.dataclass(frozen=True)
class ServerlessSettings:
    keepalive: KeepAliveSettings = KeepAliveSettings()
    autoscale: AutoscaleSettings = AutoscaleSettings()
    placement: PlacementSettings = PlacementSettings()
    balance: BalanceSettings = BalanceSettings(kind="least-outstanding-tokens")
    admission: AdmissionSettings = AdmissionSettings(kind="always")
    control_interval_s: float = 2.0
    evict_idle_for_memory: bool = True


class ServerlessControl:
    """The composed control step: keep-alive → autoscale (with the keep-alive floor and wake requests) →
    placement for scale-ups, idle-first stops for scale-downs; keep-alive alone takes an idle expert to zero.

    Holds the policies' state (idle histograms, hysteresis) between steps, as the live control loop does.
    """

    def __init__(self, settings: ServerlessSettings) -> None:
        self.settings = settings
        self.keepalive = make_keepalive(settings.keepalive)
        self.autoscale = make_autoscale(settings.autoscale)
        self.placement = make_placement(settings.placement)
        self.keepalive_state = KeepAliveState()
        self.autoscale_state = AutoscaleState()
        self.wake: set[str] = set()

    def step(self, snapshot: FleetSnapshot) -> list[Action]:
        experts = [e for e, spec in snapshot.experts.items() if not spec.is_external]
        cold_start_s = {e: min((est.cold_start_s for (eid, _), est in snapshot.estimates.items() if eid == e),
                               default=0.0) for e in experts}
        decisions, self.keepalive_state = self.keepalive.decide(snapshot, self.keepalive_state, cold_start_s)
        floor = {e: 1 if (decisions[e].wants_replica or e in self.wake) else 0 for e in experts}
        wake, self.wake = set(self.wake), set()
        capacity = {e: _largest_capacity(snapshot, e) for e in experts}
        capacity = {e: c for e, c in capacity.items() if c is not None}
        scale, self.autoscale_state = self.autoscale.decide(snapshot, self.autoscale_state, capacity, floor)
        actions: list[Action] = []
        plan = snapshot
        for expert_id, decision in sorted(scale.items()):
            outstanding = sum(r.load.num_outstanding_requests for r in snapshot.accepting_replicas_of(expert_id))
            outstanding += len(snapshot.unplaced_of(expert_id))
            to_zero = decisions[expert_id].action is KeepAliveAction.SCALE_TO_ZERO and outstanding == 0
            desired = 0 if to_zero else decision.num_desired
            current = snapshot.accepting_replicas_of(expert_id)
            if desired > len(current):
                for _ in range(desired - len(current)):
                    plan, started = self._place(plan, expert_id, actions)
                    if not started:
                        break
            elif desired < len(current):
                idle_first = sorted(current, key=lambda r: (r.load.num_outstanding_requests, -r.capacity.tokens_per_s,
                                                            r.replica_id))
                for replica in idle_first[: len(current) - desired]:
                    actions.append(StopReplica(replica.replica_id))
                    plan = ops.transition(plan, replica.replica_id, ReplicaState.STOPPED)
        # A wake request (routing's cold-start hiding, admission's wake_expert) is an explicit decision to start
        # now: it does not wait out the autoscaler's upscale delay.
        for expert_id in sorted(wake):
            if expert_id in capacity and not plan.accepting_replicas_of(ExpertId(expert_id)):
                plan, _ = self._place(plan, ExpertId(expert_id), actions)
        return actions

    def _place(self, plan: FleetSnapshot, expert_id: ExpertId, actions: list[Action]) -> tuple[FleetSnapshot, bool]:
        outcome = self.placement.place(plan, expert_id)
        if not outcome.is_placed and self.settings.evict_idle_for_memory:
            plan = self._evict_one_idle(plan, expert_id, actions)
            outcome = self.placement.place(plan, expert_id)
        if not outcome.is_placed:
            return plan, False
        worker_id = outcome.candidate.worker.worker_id
        actions.append(StartReplica(expert_id, worker_id))
        plan = ops.add_replica(plan, ReplicaId(f"planned-{len(actions)}"), outcome.candidate.estimate, worker_id)
        return plan, True

    def _evict_one_idle(self, plan: FleetSnapshot, expert_id: ExpertId, actions: list[Action]) -> FleetSnapshot:
        """Stop the longest-idle warm replica of another expert on hardware that could host `expert_id`."""
        hosts = {w.hardware for w in plan.workers.values() if plan.estimate(expert_id, w.hardware)}
        idle = [r for r in plan.replicas.values()
                if r.is_warm and r.expert_id != expert_id and r.hardware in hosts
                and r.load.num_outstanding_requests == 0]
        if not idle:
            return plan
        victim = max(idle, key=lambda r: (r.idle_for_s(plan.now_s), r.replica_id))
        actions.append(StopReplica(victim.replica_id))
        return ops.transition(plan, victim.replica_id, ReplicaState.STOPPED)


def _largest_capacity(snapshot: FleetSnapshot, expert_id: str) -> EngineCapacity | None:
    estimates = [est for (eid, _), est in snapshot.estimates.items() if eid == expert_id]
    if not estimates:
        return None
    return max(estimates, key=lambda e: e.kv_capacity_tokens).capacity


class ServerlessPlane:
    """Scale-to-zero fleet driven by the real policies; routing plugged in."""

    def __init__(self, name: str, routing, settings: ServerlessSettings = ServerlessSettings(), *, seed: int = 0):
        self.name = name
        self.routing = routing
        self.settings = settings
        self.control_interval_s = settings.control_interval_s
        self.control_step = ServerlessControl(settings)
        self.balance = make_balance(settings.balance)
        self.admission = make_admission(settings.admission)
        self.rng = random.Random(seed)

    def initial_actions(self, snapshot: FleetSnapshot) -> list[Action]:
        return []

    def route(self, snapshot: FleetSnapshot, query: RouteQuery) -> RouteDecision:
        decision = self.routing.route(snapshot, query)
        if decision.wake_expert_index is not None:
            expert_id = self.routing.expert_ids[decision.wake_expert_index]
            if expert_id in self.control_step.wake or snapshot.accepting_replicas_of(ExpertId(expert_id)):
                decision = dataclasses.replace(decision, wake_expert_index=None)  # already waking
            else:
                self.control_step.wake.add(expert_id)
        return decision

    def admit(self, snapshot: FleetSnapshot, request: QueuedRequest) -> Admission:
        verdict = self.admission.admit(snapshot, request)
        if verdict.wake_expert:
            self.control_step.wake.add(request.expert_id)
        if not verdict.verdict.is_admitted:
            return Reject(str(verdict.reason))
        outcome = self.balance.choose(snapshot, request, self.rng)
        return Enqueue(outcome.replica_id if outcome.is_routed else None, str(outcome.reason))

    def control(self, snapshot: FleetSnapshot) -> list[Action]:
        return self.control_step.step(snapshot)


def peak_replicas(
    arrival_s: np.ndarray, num_tokens: np.ndarray, expert_index: np.ndarray, expert_ids: tuple[str, ...],
    tokens_per_s_per_replica: dict[str, float], *, window_s: float = 60.0, headroom: float = 1.25,
) -> dict[str, int]:
    """Replicas per expert to carry its busiest `window_s` of token work (prompt + output) with `headroom`;
    at least one per expert that receives any request."""
    out: dict[str, int] = {}
    for j, expert_id in enumerate(expert_ids):
        mine = expert_index == j
        if not mine.any():
            continue
        bins = (arrival_s[mine] // window_s).astype(np.int64)
        peak_tokens_per_s = np.bincount(bins, weights=num_tokens[mine]).max() / window_s
        out[expert_id] = max(1, math.ceil(headroom * peak_tokens_per_s / tokens_per_s_per_replica[expert_id]))
    return out
