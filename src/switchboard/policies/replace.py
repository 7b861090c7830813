"""Re-placement: moving an expert's only replica to a better hardware kind, two stages of the control step.

- `replace_starts` — *re-place a start* (Llumnix's live re-placement and Mélange's cost-per-kind, applied to a
  replica still loading): the router's demand shows the kind it is starting on is the wrong one.
- `replace_warm` — *re-place a warm replica*: another kind with room now serves its demand for less; the old
  replica keeps serving until the new one is warm, then drains.

Both are pure functions of the step's `Plan` (and the placement policy); `ControlPlane.step` composes them.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Sequence

from switchboard.fleet.state import FleetSnapshot
from switchboard.policies.actions import Action, DrainReplica, EvictAsleep, StopReplica
from switchboard.policies.base import Reason
from switchboard.policies.placement import PlacementPolicy
from switchboard.policies.plan import Plan
from switchboard.types import ExpertId, ReplicaId


class ReplaceReasonCode(str, enum.Enum):
    REPLACED_START = "replaced-start"
    REPLACED_WARM = "replaced-warm"


def replace_starts(plan: Plan, placement: PlacementPolicy, routed_requests_per_s: Callable[[ExpertId], float]) -> None:
    """*Re-place a start* (Llumnix/Mélange re-placement applied to a replica still loading): an expert whose
    only replica is starting on a kind that now costs more at its load than another kind — typically woken
    by cold-start hiding before any of its traffic arrived, so placed for no load, while the router's
    preferences since show a rate a faster kind serves more cheaply — gets the better replica started now
    and the first one stopped. Only while nothing is queued on the starting replica: a request waiting for it
    would wait longer (the new start begins from scratch). So nobody waits for the restart — the expert's
    requests go to stand-ins meanwhile, as they did while it was cold; what re-placing costs is the load
    time already spent and some requests answered by a stand-in for longer, and what it saves is the slow
    kind serving (and being overloaded) until a replacement of the better kind is warm."""
    for expert_id in sorted(plan.snapshot.experts):
        replicas = plan.snapshot.accepting_replicas_of(expert_id)
        if len(replicas) != 1 or replicas[0].is_warm:
            continue
        starting = replicas[0]
        if starting.load.num_outstanding_requests:
            continue
        better = placement.better_than_starting(
            plan.snapshot, starting, routed_requests_per_s(expert_id))
        if better is None:
            continue
        reason = Reason(ReplaceReasonCode.REPLACED_START, f"{starting.replica_id} ({starting.hardware}) is still "
                        f"starting; {better.worker.hardware} costs less at the routed load "
                        f"(${better.usd_per_hour_at_load:.2f}/h, {better.num_replicas_needed:.1f} needed)")
        plan.start_on(better, expert_id, reason)
        plan.do(StopReplica(starting.replica_id, reason))


def replace_warm(plan: Plan, placement: PlacementPolicy, pending: tuple[tuple[ExpertId, ReplicaId, ReplicaId], ...],
                 replaced_at: dict[ExpertId, float], *, look_for_new: bool, after_s: float, cooldown_s: float,
                 min_saving: float) -> tuple[tuple[tuple[ExpertId, ReplicaId, ReplicaId], ...], dict[ExpertId, float]]:
    """*Re-place a warm replica* (`PlacementPolicy.cheaper_than_warm`): an expert served by one replica,
    warm for `after_s`, that another kind with room now serves for `min_saving`
    less at its demand gets a replica started there. The old one keeps serving meanwhile and is drained once
    the new one is warm (so nobody waits for the move). A re-placement whose old or new replica stops on
    the way (keep-alive, a failed start) is dropped. Needs two arrivals (a demand), and at most one
    re-placement per expert per `cooldown_s`: autoscaling adds a load's shortfall in the fastest
    kind, so a load that rises after a move to a cheaper kind and falls again would otherwise move the expert
    back and forth. Returns the re-placements still under way and the updated `replaced_at`."""
    still: list[tuple[ExpertId, ReplicaId, ReplicaId]] = []
    for expert_id, old_id, new_id in pending:
        old, new = plan.snapshot.replicas.get(old_id), plan.snapshot.replicas.get(new_id)
        if old is None or new is None or not old.is_accepting or not new.is_accepting:
            continue
        if new.is_warm:
            plan.do(DrainReplica(old_id, Reason(ReplaceReasonCode.REPLACED_WARM,
                                                f"{new_id} ({new.hardware}) has taken over")))
        else:
            still.append((expert_id, old_id, new_id))
    if not look_for_new:
        return tuple(still), replaced_at
    under_way = {expert_id for expert_id, _, _ in still}
    now_s = plan.snapshot.now_s
    for expert_id in sorted(plan.snapshot.experts):
        if expert_id in under_way or now_s - replaced_at.get(expert_id, -math.inf) < cooldown_s:
            continue
        replicas = plan.snapshot.accepting_replicas_of(expert_id)
        if len(replicas) != 1 or not replicas[0].is_warm:
            continue
        warm = replicas[0]
        if now_s - warm.state_since_at < after_s:
            continue
        if plan.snapshot.activity_of(expert_id).num_arrivals < 2:
            continue
        cheaper = placement.cheaper_than_warm(plan.snapshot, warm, min_saving)
        if cheaper is None:
            continue
        reason = Reason(ReplaceReasonCode.REPLACED_WARM, f"{warm.replica_id} ({warm.hardware}) serves the load "
                        f"for more; {cheaper.worker.hardware} now has room at ${cheaper.usd_per_hour_at_load:.2f}/h")
        still.append((expert_id, warm.replica_id, plan.start_on(cheaper, expert_id, reason)))
        replaced_at[expert_id] = now_s
    return tuple(still), replaced_at


def cooldowns_after_evictions(snapshot: FleetSnapshot, actions: Sequence[Action],
                              replaced_at: dict[ExpertId, float]) -> dict[ExpertId, float]:
    """`replaced_at` without the experts whose asleep replica one of `actions` evicts (`EvictAsleep`; `snapshot`
    is the step's first, where the evicted replica still sleeps). The cooldown keeps an expert's own demand from
    moving it back and forth; an eviction moves it off the kind its last move chose for another expert's start,
    and its next start lands wherever there is room. Moving it back to the cheaper kind is then the move the
    cooldown let through, not its reversal: with the cooldown kept, on the conversation trace at the 1 s step the
    70B, moved to the H100 machine where it sleeps, was evicted there by the 49B's move, cold-started on the A100s,
    where its wake misses the SLO so it never sleeps, and stayed awake there from 601 to 2,620 s, ~$11
    (docs/simulator.md, "The sleep tier")."""
    evicted = {a.replica_id for a in actions if isinstance(a, EvictAsleep)}
    if not evicted or not replaced_at:
        return replaced_at
    experts = {h.expert_id for w in snapshot.workers.values() for h in w.asleep if h.replica_id in evicted}
    return {e: at_s for e, at_s in replaced_at.items() if e not in experts}
