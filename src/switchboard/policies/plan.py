"""The control step's scratchpad (`Plan`): the actions decided so far and the fleet with them applied. The
stages of `ControlPlane.step` (policies/control.py, policies/replace.py) each read `plan.snapshot` and add
actions with `plan.do`, so every stage sees the fleet as the earlier ones left it."""

from __future__ import annotations

from switchboard.fleet.state import FleetSnapshot
from switchboard.policies.actions import Action, EvictAsleep, StartReplica, StopReplica, apply_action
from switchboard.policies.base import Reason
from switchboard.policies.devices import DeviceReasonCode
from switchboard.policies.placement import Candidate
from switchboard.types import ExpertId, ReplicaId


class Plan:
    """The step's scratchpad: actions so far and the fleet with them applied. Lives for one step only."""

    def __init__(self, snapshot: FleetSnapshot, num_replicas_created: int) -> None:
        self.snapshot = snapshot
        self.actions: list[Action] = []
        self.num_replicas_created = num_replicas_created

    def do(self, action: Action) -> None:
        self.snapshot = apply_action(self.snapshot, action)
        self.actions.append(action)

    def new_replica_id(self, expert_id: ExpertId) -> ReplicaId:
        while True:
            self.num_replicas_created += 1
            replica_id = ReplicaId(f"{expert_id}#{self.num_replicas_created}")
            if replica_id not in self.snapshot.replicas:
                return replica_id

    def start_on(self, candidate: Candidate, expert_id: ExpertId, why: Reason) -> ReplicaId:
        """Start a replica of `expert_id` on the candidate's worker (placement already chose it), after stopping
        the replicas whose room it takes there (`candidate.evicts`): asleep ones, and drained ones with no work
        left, which the stop's code keeps from sleeping."""
        replica_id = self.new_replica_id(expert_id)
        worker, estimate = candidate.worker, candidate.estimate
        for evicted in candidate.evicts:
            if evicted in self.snapshot.replicas:  # draining with no work left (`devices.soon_free`)
                self.do(StopReplica(evicted, Reason(
                    DeviceReasonCode.EVICTED_DRAINING, f"drained on {worker.worker_id}; its room goes to {replica_id}")))
            else:
                self.do(EvictAsleep(evicted, worker.worker_id, Reason(
                    DeviceReasonCode.EVICTED_ASLEEP, f"asleep on {worker.worker_id}; its devices go to {replica_id}")))
        self.do(StartReplica(replica_id, expert_id, worker.worker_id, worker.hardware,
                             estimate.start_s_on(worker.worker_id), why))
        return replica_id
