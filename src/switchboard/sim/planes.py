"""The planes the simulator drives.

- `StaticPlane`: a fleet provisioned once for peak and always on; round-robin over an expert's replicas;
  quality-only routing. The obvious baseline; it makes no decisions after time 0.
- `ServerlessPlane`: the live fleet's own decision path, `switchboard.policies.loop.ControlLoop`, unchanged —
  fleet-aware (or quality-only) routing, `ControlLoop.admit` per request (the fast path the live fleet takes,
  or a whole step), and the composed control step (keep-alive, route-aware pre-warming, autoscaling,
  placement, migration) on the loop's interval and whenever a request needs a replica started.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence

import numpy as np

from switchboard.fleet import ops
from switchboard.fleet.state import FleetSnapshot, QueuedRequest
from switchboard.policies.actions import Action, AssignRequest, RejectRequest, StartReplica
from switchboard.policies.base import Reason
from switchboard.policies.control import ControlSettings
from switchboard.policies.loop import ControlLoop
from switchboard.policies.routing import ExpertCandidate, RoutingKind
from switchboard.router.selection import RoutingConstraints, choose
from switchboard.sim.plane import RouteQuery, Routed
from switchboard.types import ExpertId, ReplicaId, WorkerId


def quality_only_choices(expert_ids: Sequence[str], predicted: np.ndarray, usd_per_mtok: np.ndarray,
                         cost_weight: float) -> np.ndarray:
    """Per request, the router's own choice: max predicted quality − cost_weight · price (cheaper on ties)."""
    if not len(predicted):
        return np.zeros(0, dtype=np.int32)
    index, _ = choose(predicted, usd_per_mtok, list(expert_ids), RoutingConstraints(cost_weight=cost_weight))
    return index.astype(np.int32)


# ------------------------------------------------------------------------------------------------ static


class StaticPlane:
    """Provisioned for peak before the workload starts, always on, round-robin balancing, no control loop."""

    control_interval_s = None
    loop = None

    def __init__(self, name: str, choices: np.ndarray, replicas_per_expert: dict[str, int], hardware: str) -> None:
        self.name = name
        self.choices = choices
        self.replicas_per_expert = replicas_per_expert
        self.hardware = hardware
        self._next: dict[str, int] = {}
        self._provisioned: set[str] = set()

    def initial_actions(self, snapshot: FleetSnapshot) -> list[Action]:
        actions: list[Action] = []
        why = Reason(StaticReasonCode.PROVISIONED, f"always-on {self.hardware} fleet sized for the peak minute")
        for expert_id, count in sorted(self.replicas_per_expert.items()):
            for k in range(count):
                worker_id = _first_fit(snapshot, ExpertId(expert_id), self.hardware)
                if worker_id is None:
                    raise ValueError(f"static fleet: no {self.hardware} worker has room for {expert_id}")
                replica_id = ReplicaId(f"{expert_id}#static{k}")
                estimate = snapshot.estimate(ExpertId(expert_id), snapshot.workers[worker_id].hardware)
                snapshot = ops.add_replica(snapshot, replica_id, estimate, worker_id)
                actions.append(StartReplica(replica_id, ExpertId(expert_id), worker_id, estimate.hardware, 0.0, why))
                self._provisioned.add(replica_id)
        return actions

    def is_preprovisioned(self, replica_id: str) -> bool:
        return replica_id in self._provisioned

    def route(self, snapshot: FleetSnapshot, query: RouteQuery) -> Routed:
        return Routed(int(self.choices[query.request_index]), "quality-only")

    def admit(self, snapshot: FleetSnapshot, request: QueuedRequest) -> list[Action]:
        replicas = snapshot.accepting_replicas_of(request.expert_id)
        if not replicas:
            return [RejectRequest(request, 503, 0, Reason(StaticReasonCode.NO_REPLICA, request.expert_id))]
        k = self._next.get(request.expert_id, 0)
        self._next[request.expert_id] = k + 1
        return [AssignRequest(request, replicas[k % len(replicas)].replica_id, 0.0, False,
                              Reason(StaticReasonCode.ROUND_ROBIN, "round-robin"))]

    def control(self, snapshot: FleetSnapshot) -> list[Action]:
        return []

    def step_is_due(self) -> bool:
        return False


class StaticReasonCode(str, enum.Enum):
    PROVISIONED = "provisioned-for-peak"
    ROUND_ROBIN = "round-robin"
    NO_REPLICA = "no-replica"


def _first_fit(snapshot: FleetSnapshot, expert_id: ExpertId, hardware: str) -> WorkerId | None:
    for worker in snapshot.workers.values():
        est = snapshot.estimate(expert_id, worker.hardware)
        if worker.hardware == hardware and est and est.memory_gb <= snapshot.memory_free_gb(worker.worker_id) + 1e-9:
            return worker.worker_id
    return None


# ------------------------------------------------------------------------------------------------ serverless


class ServerlessPlane:
    """The real control plane, driven request by request and step by step.

    Per request: routing (fleet-aware via `ControlLoop.route` over the router's `num_candidates` best experts
    by predicted quality − λ·price, or the router's own quality-only choice), then `ControlLoop.admit`, as the
    live fleet does. Wake-ups requested by cold-start hiding make a step due at once (`step_is_due`), as they
    wake the live fleet's control loop.
    """

    def __init__(self, name: str, settings: ControlSettings, expert_ids: Sequence[str], usd_per_mtok: np.ndarray,
                 quality_only: np.ndarray, *, control_interval_s: float = 5.0, num_candidates: int = 4,
                 seed: int = 0, predicted_quality: np.ndarray | None = None, keep_log: bool = False) -> None:
        """`predicted_quality` (optional): every request's row of predictions (rows = request index, as in
        `RouteQuery`), to rank the candidates of all requests in one vectorised pass instead of one by one, and
        build them once per distinct row (a trace replays the routing data's prompts: the hour's 19k requests
        have ~1.2k distinct rows)."""
        self.name = name
        self.settings = settings
        self.loop = ControlLoop(settings, step_interval_s=control_interval_s, seed=seed, keep_log=keep_log)
        self.expert_ids = tuple(expert_ids)
        self.price = np.asarray(usd_per_mtok, dtype=np.float64)
        self.quality_only = quality_only
        self.control_interval_s = control_interval_s
        self.num_candidates = num_candidates
        self.is_fleet_aware = settings.routing.kind is RoutingKind.FLEET_AWARE
        self._step_due = False
        self._ids = [ExpertId(e) for e in self.expert_ids]
        self._position = {e: j for j, e in enumerate(self.expert_ids)}
        self._prices = self.price.tolist()
        self._preferred = np.asarray(quality_only).tolist()
        self._row_of: list[int] | None = None
        """Per request, its row in `_rows` (distinct prediction rows, in order of first use)."""
        if predicted_quality is not None and self.is_fleet_aware and len(predicted_quality):
            rows = predicted_quality.tolist()
            if np.isnan(predicted_quality).any() or (np.signbit(predicted_quality) & (predicted_quality == 0)).any():
                self._row_of, self._rows = list(range(len(rows))), rows  # equal is not identical there: no sharing
            else:
                distinct: dict[tuple[float, ...], int] = {}
                self._row_of = [distinct.setdefault(tuple(row), len(distinct)) for row in rows]
                self._rows = list(distinct)
            self._top = self._rank(np.array(self._rows, dtype=np.float64)).tolist()
            self._shared: list[tuple[ExpertCandidate, ...] | None] = [None] * len(self._rows)

    def initial_actions(self, snapshot: FleetSnapshot) -> list[Action]:
        return []

    def is_preprovisioned(self, replica_id: str) -> bool:
        return False

    def _rank(self, predicted_quality: np.ndarray) -> np.ndarray:
        """Per row, expert positions by predicted quality − λ·price, best first (stable: ties keep the cluster's
        expert order), cut to `num_candidates`."""
        base = predicted_quality - self.settings.routing.usd_weight * self.price
        return np.argsort(-base, axis=-1, kind="stable")[..., : self.num_candidates]

    def _candidates(self, query: RouteQuery) -> Sequence[ExpertCandidate]:
        """The router's `num_candidates` best experts by predicted quality − λ·price, best first."""
        if self._row_of is not None:
            k = self._row_of[query.request_index]
            candidates = self._shared[k]
            if candidates is None:
                quality = self._rows[k]
                candidates = self._shared[k] = tuple(
                    ExpertCandidate(self._ids[j], quality[j], self._prices[j]) for j in self._top[k])
            return candidates
        top, quality = self._rank(query.predicted_quality).tolist(), query.predicted_quality.tolist()
        return [ExpertCandidate(self._ids[j], quality[j], self._prices[j]) for j in top]

    def route(self, snapshot: FleetSnapshot, query: RouteQuery) -> Routed:
        preferred = self._preferred[query.request_index]
        if not self.is_fleet_aware:
            # The router's own choice: what `ControlPlane.route` under quality-only routing picks too.
            self.loop.predicted(snapshot.now_s, self._ids[preferred])
            return Routed(preferred, "quality-only")
        decision = self.loop.route(snapshot, self._candidates(query), self._ids[preferred],
                                   num_prompt_tokens=query.num_prompt_tokens)
        if decision.wake_expert_ids:
            self._step_due = True
        return Routed(self._position[decision.expert_id], decision.reason.code.value)

    def admit(self, snapshot: FleetSnapshot, request: QueuedRequest) -> Sequence[Action]:
        return self.loop.admit(snapshot, request)

    def control(self, snapshot: FleetSnapshot) -> Sequence[Action]:
        return self.loop.step(snapshot).actions

    def step_is_due(self) -> bool:
        """Whether routing asked for a wake-up since the last call (a step then follows at once, as the live
        fleet's control loop wakes)."""
        due, self._step_due = self._step_due, False
        return due


def peak_replicas(
    arrival_s: np.ndarray, num_tokens: np.ndarray, expert_index: np.ndarray, expert_ids: Sequence[str],
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
