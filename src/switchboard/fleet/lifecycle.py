"""The replica life cycle as a pure transition function.

    cold ──► starting ──► warm ──► draining ──► stopped
      │          │          │         │
      └──────────┴──────────┴─────────┴──► stopped   (abandon, failed start, crash)
                                      draining ──► warm  (re-activation: cheaper than a cold start)

`stopped` is terminal: a stopped replica never serves again; the fleet starts a new replica instead.
"""

from __future__ import annotations

import dataclasses

from switchboard.types import ReplicaState, Seconds

_S = ReplicaState

LEGAL_TRANSITIONS: frozenset[tuple[ReplicaState, ReplicaState]] = frozenset(
    {
        (_S.COLD, _S.STARTING),
        (_S.COLD, _S.STOPPED),
        (_S.STARTING, _S.WARM),
        (_S.STARTING, _S.STOPPED),
        (_S.WARM, _S.DRAINING),
        (_S.WARM, _S.STOPPED),
        (_S.DRAINING, _S.WARM),
        (_S.DRAINING, _S.STOPPED),
    }
)

LIVE_STATES: frozenset[ReplicaState] = frozenset({_S.COLD, _S.STARTING, _S.WARM, _S.DRAINING})
"""States in which a replica holds memory on its worker."""

ACCEPTING_STATES: frozenset[ReplicaState] = frozenset({_S.STARTING, _S.WARM})
"""States in which a replica accepts new requests (a starting replica queues them until it is warm)."""


class IllegalTransition(ValueError):
    """A transition the life cycle does not allow, or one that goes back in time."""

    def __init__(self, replica_id: str, from_state: ReplicaState, to_state: ReplicaState, reason: str) -> None:
        super().__init__(f"replica {replica_id}: {from_state.value} → {to_state.value} is illegal: {reason}")
        self.replica_id = replica_id
        self.from_state = from_state
        self.to_state = to_state


@dataclasses.dataclass(frozen=True, slots=True)
class Transition:
    """One recorded state change."""

    from_state: ReplicaState
    to_state: ReplicaState
    at_s: Seconds


def is_legal(from_state: ReplicaState, to_state: ReplicaState) -> bool:
    return (from_state, to_state) in LEGAL_TRANSITIONS


def check_transition(
    replica_id: str, from_state: ReplicaState, to_state: ReplicaState, since_s: Seconds, at_s: Seconds
) -> Transition:
    """The `Transition` record for a legal change; raises `IllegalTransition` otherwise.

    `since_s` is when the replica entered `from_state`; a transition may not happen before it.
    """
    if not is_legal(from_state, to_state):
        raise IllegalTransition(replica_id, from_state, to_state, "not an edge of the life cycle")
    if at_s < since_s:
        raise IllegalTransition(
            replica_id, from_state, to_state, f"at {at_s:.3f}s is before entering {from_state.value} at {since_s:.3f}s"
        )
    return Transition(from_state, to_state, at_s)
