"""Actions: what the control step asks the world to do. Plain data; the live control plane and the simulator
execute them, and both keep their fleet state with `apply_action`.

Effects on the fleet model (`apply_action`):

| action              | fleet model change                                                        |
|---------------------|---------------------------------------------------------------------------|
| `StartReplica`      | new replica on the worker, cold → starting (expected warm after cold_start_s); a replica of the expert asleep there is woken (`ops.wake_asleep`) |
| `EvictAsleep`       | the asleep replica leaves its worker's `asleep` list (its devices are free) |
| `ReactivateReplica` | draining → warm                                                           |
| `DrainReplica`      | warm → draining (finishes what it holds, accepts nothing new)             |
| `StopReplica`       | → stopped; anything still queued on it moves to `unplaced`                |
| `AssignRequest`     | request joins the replica's queue (taken out of `unplaced` if it was there) |
| `ForwardUpstream`   | request leaves `unplaced` if it was there; send it to the external API     |
| `RejectRequest`     | request leaves `unplaced` if it was there; answer with status + Retry-After |
| `MigrateRequest`    | queued request moves from one replica's queue to another's                |
| `PrewarmAt`         | none: schedule a control step at `at_s` (the step then starts the replica) |

Starting → warm is not an action: the executor reports it when the engine is healthy (`ops.transition`).
"""

from __future__ import annotations

import dataclasses

from switchboard.fleet import ops
from switchboard.fleet.state import FleetSnapshot, QueuedRequest
from switchboard.policies.base import Reason
from switchboard.types import ExpertId, HardwareKind, ReplicaId, ReplicaState, RequestId, Seconds, WorkerId
from switchboard.frozen import fast_init


@dataclasses.dataclass(frozen=True, slots=True)
class StartReplica:
    replica_id: ReplicaId
    expert_id: ExpertId
    worker_id: WorkerId
    hardware: HardwareKind
    cold_start_s: Seconds
    reason: Reason


@dataclasses.dataclass(frozen=True, slots=True)
class EvictAsleep:
    """Stop a replica asleep on `worker_id` (the sleep tier) to free its devices for a start that placement put
    there; always right before that `StartReplica`, so its devices are never booked twice."""

    replica_id: ReplicaId
    worker_id: WorkerId
    reason: Reason


@dataclasses.dataclass(frozen=True, slots=True)
class ReactivateReplica:
    replica_id: ReplicaId
    reason: Reason


@dataclasses.dataclass(frozen=True, slots=True)
class DrainReplica:
    replica_id: ReplicaId
    reason: Reason


@dataclasses.dataclass(frozen=True, slots=True)
class StopReplica:
    replica_id: ReplicaId
    reason: Reason


@fast_init
@dataclasses.dataclass(frozen=True, slots=True)
class AssignRequest:
    request: QueuedRequest
    replica_id: ReplicaId
    expected_ttft_s: Seconds
    is_cold_start: bool
    """The replica is still starting: the response should say it waited for a cold start."""
    reason: Reason


@dataclasses.dataclass(frozen=True, slots=True)
class ForwardUpstream:
    """The request's expert is an external API: send it there (no replica involved)."""

    request: QueuedRequest
    reason: Reason


@dataclasses.dataclass(frozen=True, slots=True)
class RejectRequest:
    request: QueuedRequest
    status_code: int
    """429 (overloaded) or 503 (no replica in time)."""
    retry_after_s: int
    reason: Reason


@dataclasses.dataclass(frozen=True, slots=True)
class MigrateRequest:
    request_id: RequestId
    from_replica_id: ReplicaId
    to_replica_id: ReplicaId
    reason: Reason


@dataclasses.dataclass(frozen=True, slots=True)
class PrewarmAt:
    expert_id: ExpertId
    at_s: Seconds
    reason: Reason


Action = (
    StartReplica | EvictAsleep | ReactivateReplica | DrainReplica | StopReplica | AssignRequest | ForwardUpstream | RejectRequest
    | MigrateRequest | PrewarmAt
)


def _without_unplaced(snapshot: FleetSnapshot, request_id: RequestId) -> FleetSnapshot:
    if any(r.request_id == request_id for r in snapshot.unplaced):
        return ops.remove_request(snapshot, request_id)[0]
    return snapshot


def apply_action(snapshot: FleetSnapshot, action: Action) -> FleetSnapshot:
    """The fleet after `action` took effect at `snapshot.now_s`. Raises what the `ops` functions raise
    (`IllegalTransition`, `KeyError`, `ValueError` on memory over-commit) — an action from a stale plan fails
    loudly instead of corrupting the fleet."""
    match action:
        case StartReplica():
            estimate = snapshot.estimates[(action.expert_id, action.hardware)]
            if snapshot.workers[action.worker_id].asleep:
                snapshot = ops.wake_asleep(snapshot, action.expert_id, action.worker_id)
            snapshot = ops.add_replica(snapshot, action.replica_id, estimate, action.worker_id)
            return ops.transition(snapshot, action.replica_id, ReplicaState.STARTING, cold_start_s=action.cold_start_s)
        case EvictAsleep():
            return ops.evict_asleep(snapshot, action.worker_id, action.replica_id)
        case ReactivateReplica():
            return ops.transition(snapshot, action.replica_id, ReplicaState.WARM)
        case DrainReplica():
            return ops.transition(snapshot, action.replica_id, ReplicaState.DRAINING)
        case StopReplica():
            return ops.transition(snapshot, action.replica_id, ReplicaState.STOPPED)
        case AssignRequest():
            snapshot = _without_unplaced(snapshot, action.request.request_id)
            return ops.enqueue(snapshot, action.request, action.replica_id)
        case RejectRequest() | ForwardUpstream():
            return _without_unplaced(snapshot, action.request.request_id)
        case MigrateRequest():
            source = snapshot.replicas[action.from_replica_id]
            if not any(q.request_id == action.request_id for q in source.load.queue):
                raise KeyError(f"request {action.request_id} is not queued on {action.from_replica_id}")
            snapshot, request = ops.remove_request(snapshot, action.request_id)
            return ops.enqueue(snapshot, request, action.to_replica_id)
        case PrewarmAt():
            return snapshot
    raise TypeError(f"not an action: {action!r}")
