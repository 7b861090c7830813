"""Load balancing: which replica of the chosen expert takes a request.

Variants (`BalanceSettings.kind`):

- `least-outstanding-tokens`: the replica with the least work ahead — outstanding tokens ÷ its throughput,
  plus the time until it is warm if it is still starting (tokens, not requests: costs differ 100×).
- `power-of-two`: two replicas sampled with the caller's seeded `random.Random`, the less loaded wins
  (Mitzenmacher; Ray Serve's default router).
- `prefix-affinity`: requests with the same conversation prefix go to the same replica (rendezvous hashing,
  stable when replicas come and go) so its KV/prefix cache is reused — while that replica is not overloaded;
  otherwise least-outstanding-tokens.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import hashlib
import random

from pydantic import Field

from switchboard.fleet.state import FleetSnapshot, QueuedRequest, Replica
from switchboard.policies.base import PolicySettings, Reason, Registry
from switchboard.types import ReplicaId, Seconds
from switchboard.frozen import fast_init


class BalanceKind(str, enum.Enum):
    LEAST_OUTSTANDING_TOKENS = "least-outstanding-tokens"
    POWER_OF_TWO = "power-of-two"
    PREFIX_AFFINITY = "prefix-affinity"


class BalanceSettings(PolicySettings):
    kind: BalanceKind = BalanceKind.PREFIX_AFFINITY
    overload_factor: float = Field(
        1.0, gt=0, description="prefix-affinity: a replica with ≥ factor × max_num_seqs requests is overloaded."
    )


class BalanceReasonCode(str, enum.Enum):
    LEAST_LOADED = "least-loaded"
    POWER_OF_TWO = "power-of-two"
    ONLY_REPLICA = "only-replica"
    PREFIX_HIT = "prefix-affinity"
    PREFIX_OWNER_OVERLOADED = "prefix-owner-overloaded"
    NO_REPLICA = "no-accepting-replica"


@fast_init
@dataclasses.dataclass(frozen=True, slots=True)
class Balanced:
    replica_id: ReplicaId
    reason: Reason

    @property
    def is_routed(self) -> bool:
        return True


@dataclasses.dataclass(frozen=True, slots=True)
class NoReplica:
    reason: Reason

    @property
    def is_routed(self) -> bool:
        return False


BalanceOutcome = Balanced | NoReplica


def work_ahead_s(replica: Replica, now_s: Seconds) -> Seconds:
    """Seconds of work queued in front of a new request on this replica (incl. waiting for it to be warm)."""
    return replica.wait_until_warm_s(now_s) + replica.load.num_outstanding_tokens / replica.capacity.tokens_per_s


def is_overloaded(replica: Replica, overload_factor: float) -> bool:
    return (
        replica.load.num_outstanding_requests >= overload_factor * replica.capacity.max_num_seqs
        or replica.load.num_outstanding_tokens >= replica.capacity.kv_capacity_tokens
    )


def least_loaded(candidates: tuple[Replica, ...], now_s: Seconds) -> Replica:
    return min(candidates, key=lambda r: (work_ahead_s(r, now_s), r.replica_id))


def rendezvous_owner(key: str, candidates: tuple[Replica, ...]) -> Replica:
    """Highest-random-weight owner of `key`: only keys owned by a removed replica move when the set changes."""

    def weight(replica: Replica) -> bytes:
        return hashlib.blake2b(f"{key}\x00{replica.replica_id}".encode(), digest_size=8).digest()

    return max(candidates, key=weight)


class BalancePolicy(abc.ABC):
    def __init__(self, settings: BalanceSettings) -> None:
        self.settings = settings

    @abc.abstractmethod
    def pick(self, candidates: tuple[Replica, ...], request: QueuedRequest, now_s: Seconds,
             rng: random.Random) -> tuple[Replica, Reason]:
        """One of `candidates` (at least two) for `request`."""

    def choose(self, snapshot: FleetSnapshot, request: QueuedRequest, rng: random.Random) -> BalanceOutcome:
        """A replica of `request.expert_id` that accepts requests (warm or starting), or `NoReplica`."""
        candidates = snapshot.accepting_replicas_of(request.expert_id)
        if not candidates:
            return NoReplica(Reason(BalanceReasonCode.NO_REPLICA, f"{request.expert_id} has no warm or starting replica"))
        if len(candidates) == 1:
            return Balanced(candidates[0].replica_id, Reason(BalanceReasonCode.ONLY_REPLICA, candidates[0].replica_id))
        replica, reason = self.pick(candidates, request, snapshot.now_s, rng)
        return Balanced(replica.replica_id, reason)


BALANCE_POLICIES: Registry[BalanceKind, BalancePolicy] = Registry("balance")


def _least_reason(replica: Replica, now_s: Seconds, code=BalanceReasonCode.LEAST_LOADED) -> Reason:
    return Reason(code, f"{replica.replica_id}: {work_ahead_s(replica, now_s):.2f}s of work ahead")


@BALANCE_POLICIES.register(BalanceKind.LEAST_OUTSTANDING_TOKENS)
class LeastOutstandingTokens(BalancePolicy):
    def pick(self, candidates, request, now_s, rng):
        replica = least_loaded(candidates, now_s)
        return replica, _least_reason(replica, now_s)


@BALANCE_POLICIES.register(BalanceKind.POWER_OF_TWO)
class PowerOfTwoChoices(BalancePolicy):
    def pick(self, candidates, request, now_s, rng):
        replica = least_loaded(tuple(rng.sample(candidates, 2)), now_s)
        return replica, _least_reason(replica, now_s, BalanceReasonCode.POWER_OF_TWO)


@BALANCE_POLICIES.register(BalanceKind.PREFIX_AFFINITY)
class PrefixAffinity(BalancePolicy):
    def pick(self, candidates, request, now_s, rng):
        if request.prefix_key:
            owner = rendezvous_owner(request.prefix_key, candidates)
            if not is_overloaded(owner, self.settings.overload_factor):
                return owner, Reason(BalanceReasonCode.PREFIX_HIT, f"prefix owned by {owner.replica_id}")
            replica = least_loaded(candidates, now_s)
            return replica, _least_reason(replica, now_s, BalanceReasonCode.PREFIX_OWNER_OVERLOADED)
        replica = least_loaded(candidates, now_s)
        return replica, _least_reason(replica, now_s)


def make_balance(settings: BalanceSettings) -> BalancePolicy:
    return BALANCE_POLICIES.create(settings)
