"""Placement: which worker a new replica of an expert goes on.

Variants (`PlacementSettings.kind`):

- `first-fit`: the first worker (in configuration order) with a serving estimate for its hardware and enough
  free memory.
- `cost-aware`: Mélange (Griggs et al., 2024) for one replica at a time — among workers that fit, the cheapest
  one whose *predicted* TTFT and TPOT at the expert's current load meet the expert's targets. "Cheapest" is
  USD/hour × replicas of that kind the current load needs, so a small card wins at low load and a big one
  when its throughput saves replicas. When no hardware meets the targets, the fastest that fits is chosen
  and the outcome says the SLO is at risk.

Guarantee (both): a placed replica fits in its worker's free memory (never over-commit).
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import math

from switchboard.fleet.state import FleetSnapshot, ServingEstimate, Worker
from switchboard.policies.base import PolicySettings, Reason, Registry
from switchboard.types import ExpertId, Seconds


class PlacementKind(str, enum.Enum):
    FIRST_FIT = "first-fit"
    COST_AWARE = "cost-aware"


class PlacementSettings(PolicySettings):
    kind: PlacementKind = PlacementKind.COST_AWARE
    default_prompt_tokens: int = 512
    """Prompt length assumed for latency predictions when the expert has no queued requests."""


class PlacementStatus(str, enum.Enum):
    PLACED = "placed"
    PLACED_SLO_AT_RISK = "placed-slo-at-risk"
    NO_ESTIMATE = "no-estimate"
    NO_MEMORY = "no-memory"


@dataclasses.dataclass(frozen=True, slots=True)
class Candidate:
    """A worker that can host the replica, with the replica's predicted behaviour there."""

    worker: Worker
    estimate: ServingEstimate
    predicted_ttft_s: Seconds
    predicted_tpot_s: Seconds
    meets_slo: bool
    usd_per_hour_at_load: float


@dataclasses.dataclass(frozen=True, slots=True)
class Placed:
    status: PlacementStatus
    expert_id: ExpertId
    candidate: Candidate
    reason: Reason

    @property
    def is_placed(self) -> bool:
        return True


@dataclasses.dataclass(frozen=True, slots=True)
class Unplaceable:
    status: PlacementStatus
    expert_id: ExpertId
    reason: Reason

    @property
    def is_placed(self) -> bool:
        return False


PlacementOutcome = Placed | Unplaceable


def candidates(snapshot: FleetSnapshot, expert_id: ExpertId, settings: PlacementSettings) -> list[Candidate]:
    """Workers that fit a new replica of `expert_id`, in configuration order, with latency and cost at load."""
    spec = snapshot.experts[expert_id]
    replicas = snapshot.accepting_replicas_of(expert_id)
    queued = [q for r in replicas for q in r.load.queue] + list(snapshot.unplaced_of(expert_id))
    num_after = len(replicas) + 1
    num_requests = sum(r.load.num_outstanding_requests for r in replicas) + len(snapshot.unplaced_of(expert_id))
    num_tokens = sum(r.load.num_outstanding_tokens for r in replicas) + sum(q.num_tokens for q in snapshot.unplaced_of(expert_id))
    prompt_tokens = round(sum(q.num_prompt_tokens for q in queued) / len(queued)) if queued else settings.default_prompt_tokens
    tokens_ahead = sum(q.num_prompt_tokens for q in queued) // num_after
    seqs = math.ceil(num_requests / num_after)
    found = []
    for worker in snapshot.workers.values():
        estimate = snapshot.estimate(expert_id, worker.hardware)
        if estimate is None or estimate.memory_gb > snapshot.memory_free_gb(worker.worker_id) + 1e-9:
            continue
        ttft_s = estimate.ttft_s(prompt_tokens, tokens_ahead)
        tpot_s = estimate.tpot_s(seqs)
        num_needed = max(1, math.ceil(num_tokens / estimate.kv_capacity_tokens))
        found.append(Candidate(worker, estimate, ttft_s, tpot_s,
                               meets_slo=ttft_s <= spec.ttft_slo_s and tpot_s <= spec.tpot_slo_s,
                               usd_per_hour_at_load=worker.usd_per_hour * num_needed))
    return found


class PlacementPolicy(abc.ABC):
    def __init__(self, settings: PlacementSettings) -> None:
        self.settings = settings

    @abc.abstractmethod
    def choose(self, fitting: list[Candidate]) -> Candidate:
        """One of `fitting` (never empty)."""

    def place(self, snapshot: FleetSnapshot, expert_id: ExpertId) -> PlacementOutcome:
        fitting = candidates(snapshot, expert_id, self.settings)
        if not fitting:
            if not any(snapshot.estimate(expert_id, w.hardware) for w in snapshot.workers.values()):
                return Unplaceable(PlacementStatus.NO_ESTIMATE, expert_id, Reason(
                    PlacementStatus.NO_ESTIMATE, f"no worker's hardware can serve {expert_id}"))
            return Unplaceable(PlacementStatus.NO_MEMORY, expert_id, Reason(
                PlacementStatus.NO_MEMORY, f"no worker has free memory for {expert_id}"))
        chosen = self.choose(fitting)
        status = PlacementStatus.PLACED if chosen.meets_slo else PlacementStatus.PLACED_SLO_AT_RISK
        detail = (f"{chosen.worker.worker_id} ({chosen.worker.hardware}, ${chosen.worker.usd_per_hour:.2f}/h): "
                  f"predicted TTFT {chosen.predicted_ttft_s:.2f}s, TPOT {chosen.predicted_tpot_s * 1000:.0f}ms")
        return Placed(status, expert_id, chosen, Reason(status, detail))


PLACEMENT_POLICIES: Registry[PlacementKind, PlacementPolicy] = Registry("placement")


@PLACEMENT_POLICIES.register(PlacementKind.FIRST_FIT)
class FirstFitPlacement(PlacementPolicy):
    def choose(self, fitting: list[Candidate]) -> Candidate:
        return fitting[0]


@PLACEMENT_POLICIES.register(PlacementKind.COST_AWARE)
class CostAwarePlacement(PlacementPolicy):
    def choose(self, fitting: list[Candidate]) -> Candidate:
        meeting = [c for c in fitting if c.meets_slo]
        if meeting:
            # min() keeps the first of equals, so configuration order breaks ties deterministically.
            return min(meeting, key=lambda c: (c.usd_per_hour_at_load, c.worker.usd_per_hour))
        return min(fitting, key=lambda c: (c.predicted_ttft_s, c.predicted_tpot_s, c.worker.usd_per_hour))


def make_placement(settings: PlacementSettings) -> PlacementPolicy:
    return PLACEMENT_POLICIES.create(settings)
