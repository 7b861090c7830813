"""The fleet model: workers, experts, replicas and their load as immutable, clocked snapshots.

`state` holds the types, `lifecycle` the replica state machine, `ops` the pure updates.
"""

from switchboard.fleet.lifecycle import LEGAL_TRANSITIONS, IllegalTransition, Transition, is_legal
from switchboard.fleet.state import (
    EngineCapacity,
    ExpertActivity,
    ExpertSpec,
    FleetSnapshot,
    QueuedRequest,
    Replica,
    ReplicaLoad,
    RequestLocation,
    ServingEstimate,
    Whereabouts,
    Worker,
)

__all__ = [
    "LEGAL_TRANSITIONS", "IllegalTransition", "Transition", "is_legal", "EngineCapacity", "ExpertActivity",
    "ExpertSpec", "FleetSnapshot", "QueuedRequest", "Replica", "ReplicaLoad", "RequestLocation", "ServingEstimate",
    "Whereabouts", "Worker",
]
