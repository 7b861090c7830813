"""Migration (Llumnix-lite): move *queued* requests off overloaded replicas onto less loaded warm ones.

Llumnix (Sun et al., OSDI'24) live-migrates running requests with their KV cache; this keeps the cheap half
of the idea: a request that has not started has no state, so moving it is free. It also rescues requests
queued on a *starting* replica once a warm replica of the same expert has room (a cold start hidden
after the fact).

Variants (`MigrationSettings.kind`): `none`; `llumnix-lite`.

Guarantees: only requests in a replica's queue move (never started ones); each request moves at most once
per plan; moves stay within one expert; applying the plan in order keeps every request in exactly one queue.
"""

from __future__ import annotations

import abc
import dataclasses
import enum

from pydantic import Field

from switchboard.fleet import ops
from switchboard.fleet.state import FleetSnapshot
from switchboard.policies import predict
from switchboard.policies.base import PolicySettings, Reason, Registry
from switchboard.types import ExpertId, ReplicaId, RequestId


class MigrationKind(str, enum.Enum):
    NONE = "none"
    LLUMNIX_LITE = "llumnix-lite"


class MigrationSettings(PolicySettings):
    kind: MigrationKind = MigrationKind.LLUMNIX_LITE
    overload_wait_s: float = Field(1.0, ge=0, description="A replica whose predicted queueing exceeds this sheds requests.")
    min_gain_s: float = Field(0.5, ge=0, description="Move only if the request would start this much sooner.")
    max_moves_per_step: int = Field(32, ge=0)


class MigrationReasonCode(str, enum.Enum):
    REBALANCE = "rebalance"
    ESCAPE_COLD_START = "escape-cold-start"


@dataclasses.dataclass(frozen=True, slots=True)
class MigrationDecision:
    request_id: RequestId
    expert_id: ExpertId
    from_replica_id: ReplicaId
    to_replica_id: ReplicaId
    reason: Reason


class MigrationPolicy(abc.ABC):
    def __init__(self, settings: MigrationSettings) -> None:
        self.settings = settings

    @abc.abstractmethod
    def plan_expert(self, snapshot: FleetSnapshot, expert_id: ExpertId, budget: int) -> list[MigrationDecision]:
        """At most `budget` moves among `expert_id`'s replicas, to be applied in order."""

    def plan(self, snapshot: FleetSnapshot) -> list[MigrationDecision]:
        moves: list[MigrationDecision] = []
        for expert_id in snapshot.experts:
            budget = self.settings.max_moves_per_step - len(moves)
            if budget <= 0:
                break
            moves.extend(self.plan_expert(snapshot, expert_id, budget))
        return moves


MIGRATION_POLICIES: Registry[MigrationKind, MigrationPolicy] = Registry("migration")


@MIGRATION_POLICIES.register(MigrationKind.NONE)
class NoMigration(MigrationPolicy):
    def plan_expert(self, snapshot, expert_id, budget):
        return []


@MIGRATION_POLICIES.register(MigrationKind.LLUMNIX_LITE)
class LlumnixLite(MigrationPolicy):
    def plan_expert(self, snapshot: FleetSnapshot, expert_id: ExpertId, budget: int) -> list[MigrationDecision]:
        s = self.settings
        if len(snapshot.accepting_replicas_of(expert_id)) < 2 or not snapshot.warm_replicas_of(expert_id):
            return []
        moves: list[MigrationDecision] = []
        moved: set[RequestId] = set()
        virtual = snapshot  # the plan so far applied, so each move sees the loads the previous ones left
        while len(moves) < budget:
            replicas = virtual.accepting_replicas_of(expert_id)
            waits = {r.replica_id: predict.queueing_s(virtual, r) for r in replicas}
            sources = [r for r in replicas if waits[r.replica_id] > s.overload_wait_s
                       and any(q.request_id not in moved for q in r.load.queue)]
            if not sources:
                break
            source = max(sources, key=lambda r: (waits[r.replica_id], r.replica_id))
            request = next(q for q in reversed(source.load.queue) if q.request_id not in moved)
            targets = [r for r in replicas if r.is_warm and r.replica_id != source.replica_id]
            if not targets:
                break
            target = min(targets, key=lambda r: (waits[r.replica_id], r.replica_id))
            after, _ = ops.remove_request(virtual, request.request_id)
            after = ops.enqueue(after, request, target.replica_id)
            wait_on_target_s = predict.queueing_s(after, after.replicas[target.replica_id]) \
                - request.num_prompt_tokens / predict.prefill_tokens_per_s(after, after.replicas[target.replica_id])
            # The tail request of the source would wait about the source's whole queue.
            wait_on_source_s = waits[source.replica_id] - request.num_prompt_tokens / predict.prefill_tokens_per_s(virtual, source)
            if wait_on_target_s + s.min_gain_s > wait_on_source_s:
                break
            code = MigrationReasonCode.REBALANCE if source.is_warm else MigrationReasonCode.ESCAPE_COLD_START
            moves.append(MigrationDecision(request.request_id, expert_id, source.replica_id, target.replica_id, Reason(
                code, f"wait {wait_on_source_s:.2f}s on {source.replica_id} → {wait_on_target_s:.2f}s on {target.replica_id}")))
            moved.add(request.request_id)
            virtual = after
        return moves


def make_migration(settings: MigrationSettings) -> MigrationPolicy:
    return MIGRATION_POLICIES.create(settings)
