"""The fleet model: immutable snapshots of workers, experts, replicas and their load, at a point in time.

Every policy reads a `FleetSnapshot`; nobody mutates one. Changes are pure functions that return a new
snapshot (`fleet.ops`), so the live server (wall-clock `now_s`) and the simulator (simulated `now_s`) build
snapshots the same way and hand them to the same policies.

Performance numbers enter as data (`ServingEstimate`, one per expert × hardware kind), filled from the perf
model or from measurements by whoever builds the snapshot; the policies never import the perf model.
"""

from __future__ import annotations

import dataclasses
import enum
import types
from collections.abc import Iterator, Mapping

from switchboard.fleet.activity import ExpertActivity
from switchboard.fleet.lifecycle import ACCEPTING_STATES, LIVE_STATES, Transition, check_transition
from switchboard.frozen import evolve, evolver_of, fast_init
from switchboard.types import ExpertId, HardwareKind, ReplicaId, ReplicaState, RequestId, Seconds, WorkerId

def _frozen_mapping(value: Mapping) -> Mapping:
    return value if isinstance(value, types.MappingProxyType) else types.MappingProxyType(dict(value))


# --------------------------------------------------------------------------------------------- hardware


@dataclasses.dataclass(frozen=True, slots=True)
class AsleepHolder:
    """A replica asleep on a worker (the sleep tier) and the devices it keeps there: its engine's process and
    accelerator context stay on them, so they are not free. A start of its expert there wakes it on them; any
    other start may take them only by evicting it first (`EvictAsleep`)."""

    replica_id: ReplicaId
    expert_id: ExpertId
    num_devices: int
    until_s: Seconds
    """When it is stopped unless woken: a start of its expert wakes it only before then."""

    def wakes_for(self, expert_id: ExpertId, now_s: Seconds) -> bool:
        return self.expert_id == expert_id and now_s < self.until_s


@dataclasses.dataclass(frozen=True, slots=True)
class Worker:
    """A machine that hosts replicas.

    A worker with `num_devices` > 0 declares its accelerators: a replica there takes whole devices (its
    estimate's `num_devices`, the tensor-parallel size) and placement checks free devices as well as memory.
    With 0 (no devices declared) only memory is checked."""

    worker_id: WorkerId
    hardware: HardwareKind
    memory_gb: float
    usd_per_hour: float
    location: str = "local"
    num_devices: int = 0
    asleep: tuple[AsleepHolder, ...] = ()
    """Replicas asleep here, in the order they fell asleep (oldest first); set by the executors
    (`fleet.sleep.reflect_asleep`)."""


@fast_init
@dataclasses.dataclass(frozen=True, slots=True)
class EngineCapacity:
    """What one replica can hold at once, as its engine reports it."""

    max_num_seqs: int
    """Sequences decoded together (continuous batching)."""
    tokens_per_s: float
    """Aggregate decode throughput at a full batch."""
    kv_capacity_tokens: int
    """Tokens of KV cache that fit beside the weights."""


@dataclasses.dataclass(frozen=True, slots=True)
class ServingEstimate:
    """Predicted behaviour of one expert on one hardware kind (from the perf model or from measurements).

    The latency model is deliberately linear so policies can invert it cheaply:
    TTFT = (tokens queued ahead + own prompt) / prefill rate; TPOT interpolates between batch 1 and a full batch.
    """

    expert_id: ExpertId
    hardware: HardwareKind
    memory_gb: float
    """Memory a replica reserves on its worker: weights plus its KV cache."""
    cold_start_s: Seconds
    """From start decision to first servable token: process spawn + model load (+ scheduling delay)."""
    prefill_tokens_per_s: float
    decode_step_s_batch_1: Seconds
    decode_step_s_full_batch: Seconds
    max_num_seqs: int
    kv_capacity_tokens: int
    num_devices: int = 0
    """Whole devices a replica takes on a worker that declares devices (the perf model's tensor-parallel size);
    0 for an engine that takes none (the llama.cpp worker: a CPU process)."""
    wake_s: Seconds | None = None
    """From asleep (the sleep tier: engine process kept, weights off the accelerator) to servable on this kind;
    None: unknown, or the engine cannot sleep."""
    asleep_worker_ids: tuple[WorkerId, ...] = ()
    """Workers of this kind where a replica of this expert is asleep now (the executor's sleep tier): a start on
    one of them wakes it, and `cold_start_s` is then that wake (`fleet.sleep.price_wakes`)."""
    cold_start_elsewhere_s: Seconds | None = None
    """While `cold_start_s` is a wake (`asleep_worker_ids` set): the cold start on a worker of this kind where
    none sleeps. None otherwise."""

    def start_s_on(self, worker_id: WorkerId) -> Seconds:
        """Expected start of a replica on `worker_id`: the wake where one of this expert sleeps there, else the
        cold start."""
        if self.cold_start_elsewhere_s is None or worker_id in self.asleep_worker_ids:
            return self.cold_start_s
        return self.cold_start_elsewhere_s

    def unpriced(self) -> "ServingEstimate":
        """This estimate without the sleep tier's pricing (the cold start everywhere, nothing asleep)."""
        if self.cold_start_elsewhere_s is None and not self.asleep_worker_ids:
            return self
        cold_s = self.cold_start_s if self.cold_start_elsewhere_s is None else self.cold_start_elsewhere_s
        return dataclasses.replace(self, cold_start_s=cold_s, asleep_worker_ids=(), cold_start_elsewhere_s=None)

    @property
    def capacity(self) -> EngineCapacity:
        return EngineCapacity(
            max_num_seqs=self.max_num_seqs,
            tokens_per_s=self.max_num_seqs / self.decode_step_s_full_batch,
            kv_capacity_tokens=self.kv_capacity_tokens,
        )

    def ttft_s(self, num_prompt_tokens: int, num_tokens_ahead: int = 0) -> Seconds:
        """Predicted time to first token for a prompt behind `num_tokens_ahead` queued prompt tokens."""
        return (num_tokens_ahead + num_prompt_tokens) / self.prefill_tokens_per_s + self.decode_step_s_batch_1

    def tpot_s(self, num_seqs: int) -> Seconds:
        """Predicted time per output token when `num_seqs` sequences share the batch (clamped to [1, max])."""
        if self.max_num_seqs <= 1:
            return self.decode_step_s_batch_1
        batch = min(max(num_seqs, 1), self.max_num_seqs)
        frac = (batch - 1) / (self.max_num_seqs - 1)
        return self.decode_step_s_batch_1 + frac * (self.decode_step_s_full_batch - self.decode_step_s_batch_1)


# --------------------------------------------------------------------------------------------- experts


@dataclasses.dataclass(frozen=True, slots=True)
class ExpertSpec:
    """An expert as the control plane sees it: price and latency targets."""

    expert_id: ExpertId
    params_b: float
    usd_per_mtok: float
    """Blended (input+output)/2 price the router trades quality against."""
    ttft_slo_s: Seconds = 2.0
    tpot_slo_s: Seconds = 0.2
    is_external: bool = False
    """An upstream API (the `openai` backend): always warm, never placed, started or stopped."""


# --------------------------------------------------------------------------------------------- requests & load


@fast_init
@dataclasses.dataclass(frozen=True, slots=True)
class QueuedRequest:
    """A request that has not started yet (no prefill began); only these may be migrated or reordered."""

    request_id: RequestId
    expert_id: ExpertId
    arrived_at: Seconds
    num_prompt_tokens: int
    num_output_tokens_expected: int
    """Predicted output length if a predictor is available, else the request's max_tokens."""
    ttft_slo_s: Seconds = 2.0
    prefix_key: str = ""
    """Hash of the conversation prefix for prefix affinity ('' = none)."""
    is_background: bool = False
    """A batch's request (docs/api.md "Batches"): every queue order starts live requests before it."""

    @property
    def num_tokens(self) -> int:
        return self.num_prompt_tokens + self.num_output_tokens_expected

    @property
    def deadline_at(self) -> Seconds:
        """The latest time its first token may appear and still meet its SLO."""
        return self.arrived_at + self.ttft_slo_s


@fast_init
@dataclasses.dataclass(frozen=True, slots=True)
class ReplicaLoad:
    """Outstanding work on one replica: running sequences plus the queue of not-yet-started requests."""

    num_running: int = 0
    num_running_tokens: int = 0
    """Tokens still to be processed by the running sequences (remaining prompt + expected remaining output)."""
    queue: tuple[QueuedRequest, ...] = ()
    num_running_background: int = 0
    """Of `num_running`, a batch's requests (`QueuedRequest.is_background`): work a live request waits for but is
    not refused for (policies/admission.py). 0 where the feeder does not tell them apart (the simulator's)."""
    num_running_background_tokens: int = 0
    """Of `num_running_tokens`, theirs."""
    # Sums over the (immutable) queue, computed on first use; `evolve` resets them.
    _queued_tokens: tuple[int, int, int, int] | None = dataclasses.field(default=None, init=False, repr=False,
                                                                         compare=False)

    def _queue_sums(self) -> tuple[int, int, int, int]:
        """(tokens, prompt tokens, live requests, live requests' prompt tokens) of the queue."""
        sums = self._queued_tokens
        if sums is None:
            prompt = total = num_live = live_prompt = 0
            for r in self.queue:
                prompt += r.num_prompt_tokens
                total += r.num_prompt_tokens + r.num_output_tokens_expected
                if not r.is_background:
                    num_live += 1
                    live_prompt += r.num_prompt_tokens
            sums = (total, prompt, num_live, live_prompt)
            object.__setattr__(self, "_queued_tokens", sums)
        return sums

    @property
    def num_queued(self) -> int:
        return len(self.queue)

    @property
    def num_queued_tokens(self) -> int:
        return self._queue_sums()[0]

    @property
    def num_queued_prompt_tokens(self) -> int:
        return self._queue_sums()[1]

    @property
    def num_live_queued(self) -> int:
        """Queued requests that are not a batch's: the only ones every queue order starts before a live one."""
        return self._queue_sums()[2]

    @property
    def num_live_queued_prompt_tokens(self) -> int:
        return self._queue_sums()[3]

    @property
    def num_outstanding_requests(self) -> int:
        return self.num_running + len(self.queue)

    @property
    def num_outstanding_tokens(self) -> int:
        return self.num_running_tokens + self.num_queued_tokens


# --------------------------------------------------------------------------------------------- replicas


@dataclasses.dataclass(frozen=True, slots=True)
class Replica:
    """One running (or starting, or retired) copy of an expert on a worker."""

    replica_id: ReplicaId
    expert_id: ExpertId
    worker_id: WorkerId
    hardware: HardwareKind
    memory_gb: float
    capacity: EngineCapacity
    state: ReplicaState = ReplicaState.COLD
    num_devices: int = 0
    """Whole devices it holds while live (0 on a worker that declares none)."""
    state_since_at: Seconds = 0.0
    created_at: Seconds = 0.0
    expected_warm_at: Seconds = 0.0
    """For a starting replica: when it is predicted to serve (start time + cold start)."""
    last_busy_at: Seconds = 0.0
    """Last time it had outstanding work (or became warm), for idle-based scale-down."""
    load: ReplicaLoad = ReplicaLoad()
    transitions: tuple[Transition, ...] = ()
    _memo: dict | None = dataclasses.field(default=None, init=False, repr=False, compare=False)

    def memo(self) -> dict:
        """A dict for memoizing what policies derive from this replica (it is immutable; `evolve` gives the
        changed copy a fresh memo). A value that also depends on something else must be stored with that
        something, to be checked on use (e.g. the snapshot's `estimates` mapping, by identity)."""
        memo = self._memo
        if memo is None:
            memo = {}
            object.__setattr__(self, "_memo", memo)
        return memo

    @property
    def is_live(self) -> bool:
        """Holds memory on its worker."""
        return self.state in LIVE_STATES

    @property
    def is_accepting(self) -> bool:
        return self.state in ACCEPTING_STATES

    @property
    def is_warm(self) -> bool:
        return self.state is ReplicaState.WARM

    def locate(self, request_id: RequestId) -> RequestLocation:
        """Where a not-yet-started request waits (a scan of the queues: for per-request use, not hot loops)."""
        for replica_id, request in self.iter_requests():
            if request.request_id == request_id:
                if replica_id is None:
                    return RequestLocation(Whereabouts.UNPLACED)
                return RequestLocation(Whereabouts.QUEUED, replica_id)
        return RequestLocation(Whereabouts.ABSENT)

    @property
    def num_cold_starts(self) -> int:
        return sum(1 for t in self.transitions if t.to_state is ReplicaState.STARTING)

    def idle_for_s(self, now_s: Seconds) -> Seconds:
        return 0.0 if self.load.num_outstanding_requests else max(0.0, now_s - self.last_busy_at)

    def wait_until_warm_s(self, now_s: Seconds) -> Seconds:
        """Seconds until it can serve: 0 when warm, the predicted remainder when starting."""
        if self.state is ReplicaState.STARTING:
            return max(0.0, self.expected_warm_at - now_s)
        return 0.0

    def transition(self, to_state: ReplicaState, at_s: Seconds, *, cold_start_s: Seconds = 0.0) -> "Replica":
        """This replica in `to_state` from `at_s`; raises `IllegalTransition` if the life cycle forbids it.

        `cold_start_s` (for → starting) sets `expected_warm_at`.
        """
        record = check_transition(self.replica_id, self.state, to_state, self.state_since_at, at_s)
        changes: dict = {"state": to_state, "state_since_at": at_s, "transitions": self.transitions + (record,)}
        if to_state is ReplicaState.STARTING:
            changes["expected_warm_at"] = at_s + cold_start_s
        if to_state is ReplicaState.WARM:
            changes["last_busy_at"] = at_s  # idle time counts from when it could first serve
        return evolve(self, **changes)

    def with_load(self, load: ReplicaLoad, now_s: Seconds) -> "Replica":
        busy = load.num_outstanding_requests > 0 or self.load.num_outstanding_requests > 0
        return _evolve_replica(self, load=load, last_busy_at=now_s if busy else self.last_busy_at)


# --------------------------------------------------------------------------------------------- the snapshot


def _swapped(group: tuple[Replica, ...], replica: Replica) -> tuple[Replica, ...]:
    """`group` with the replica of the same id replaced by `replica` (unchanged if it has none)."""
    replica_id = replica.replica_id
    for index, r in enumerate(group):
        if r.replica_id == replica_id:
            return group[:index] + (replica,) + group[index + 1:]
    return group


def _groups(live: list[Replica], accepting: list[Replica], warm: list[Replica]) -> tuple[tuple[Replica, ...], ...]:
    """An expert's (live, accepting, warm) index entry. Each group is a subset of the one before it in the same
    (id) order, so a group as long as the one before it is equal to it: it is then the same tuple, which lets a
    load update swap the replica once for both (when all of an expert's replicas are warm, its usual state)."""
    live_t = tuple(live)
    accepting_t = live_t if len(accepting) == len(live) else tuple(accepting)
    warm_t = accepting_t if len(warm) == len(accepting) else tuple(warm)
    return live_t, accepting_t, warm_t


TransitionKey = tuple[ReplicaState, ReplicaState]
_DECLARES_DEVICES_KEY = "state.declares_devices"
_NO_REPLICA_SETS: tuple[tuple, tuple, tuple] = ((), (), ())
_MAPPING_FIELDS = frozenset({"workers", "experts", "estimates", "replicas", "activity", "transition_counts"})


class Whereabouts(str, enum.Enum):
    QUEUED = "queued"
    """In a replica's queue, not started."""
    UNPLACED = "unplaced"
    ABSENT = "absent"
    """Not waiting anywhere: started, finished, rejected, or never seen."""


@dataclasses.dataclass(frozen=True, slots=True)
class RequestLocation:
    whereabouts: Whereabouts
    replica_id: ReplicaId = ReplicaId("")
    """The replica whose queue holds it (only when `QUEUED`)."""


@dataclasses.dataclass(frozen=True, slots=True)
class FleetSnapshot:
    """Everything a policy may look at, at time `now_s`. Mappings are read-only views.

    `unplaced` holds requests admitted for an expert that has no accepting replica yet (the control step
    assigns them to the replica it starts). `transition_counts` counts every life-cycle change in the fleet
    since it began, including those of replicas since removed.
    """

    now_s: Seconds
    workers: Mapping[WorkerId, Worker]
    experts: Mapping[ExpertId, ExpertSpec]
    estimates: Mapping[tuple[ExpertId, HardwareKind], ServingEstimate]
    replicas: Mapping[ReplicaId, Replica] = dataclasses.field(default_factory=dict)
    activity: Mapping[ExpertId, ExpertActivity] = dataclasses.field(default_factory=dict)
    unplaced: tuple[QueuedRequest, ...] = ()
    transition_counts: Mapping[TransitionKey, int] = dataclasses.field(default_factory=dict)

    # Derived indexes, built on first use (a snapshot is immutable, so they never go stale; `evolve` resets them).
    _live_by_expert: dict | None = dataclasses.field(default=None, init=False, repr=False, compare=False)
    _memory_used: dict | None = dataclasses.field(default=None, init=False, repr=False, compare=False)
    _devices_used: dict | None = dataclasses.field(default=None, init=False, repr=False, compare=False)
    _max_free_by_hardware: dict | None = dataclasses.field(default=None, init=False, repr=False, compare=False)
    _rooms_by_hardware: dict | None = dataclasses.field(default=None, init=False, repr=False, compare=False)
    # Memo dicts shared by related snapshots (see `catalog_memo` / `layout_memo`).
    _catalog_memo: dict | None = dataclasses.field(default=None, init=False, repr=False, compare=False)
    _layout_memo: dict | None = dataclasses.field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in _MAPPING_FIELDS:
            object.__setattr__(self, name, _frozen_mapping(getattr(self, name)))

    def evolve(self, **changes) -> "FleetSnapshot":
        """This snapshot with some fields replaced (mappings are wrapped read-only, as in the constructor).

        Indexes and memos carry over when the fields they derive from are unchanged.
        """
        for name in changes:
            if name in _MAPPING_FIELDS:
                changes[name] = _frozen_mapping(changes[name])
        return self._evolved(changes)

    def evolve_taking(self, **changes) -> "FleetSnapshot":
        """`evolve` for the update functions of `fleet.ops`: a mapping argument must be a fresh `dict` that the
        snapshot takes over (wrapped read-only without a copy); the caller must not keep or change it."""
        for name in changes:
            if name in _MAPPING_FIELDS:
                changes[name] = types.MappingProxyType(changes[name])
        return self._evolved(changes)

    def at(self, now_s: Seconds) -> "FleetSnapshot":
        """`evolve(now_s=now_s)`, the most frequent update (every event that touches the fleet moves the clock)."""
        return _evolve_snapshot_keeping_indexes(self, now_s=now_s)

    def _evolved(self, changes: dict) -> "FleetSnapshot":
        if "replicas" in changes:
            return _evolve_snapshot(self, **changes)
        if "workers" in changes:
            new = _evolve_snapshot(self, **changes)
            # The replica index depends on the replicas alone (workers change as replicas sleep and wake).
            object.__setattr__(new, "_live_by_expert", self._live_by_expert)
            return new
        new = _evolve_snapshot_keeping_indexes(self, **changes)
        if "experts" in changes or "estimates" in changes:
            object.__setattr__(new, "_catalog_memo", None)
            object.__setattr__(new, "_layout_memo", None)
        return new

    def with_replicas_updated(
        self, updated: tuple[Replica, ...], replicas: dict, activity: dict | None = None, *,
        now_s: Seconds | None = None,
    ) -> "FleetSnapshot":
        """`evolve_taking(replicas=replicas)` where `replicas` (a fresh dict, taken over) differs from ours only
        by `updated` (new or replaced); with `activity` (a fresh dict, taken over) and the clock (`now_s`) as
        well, in the same update.

        When every updated replica existed before in the same state, on the same worker with the same memory,
        the indexes are patched instead of rebuilt and the memos carried over: the common case of a load
        change, which the simulator makes several times per request.
        """
        changes: dict = {"replicas": types.MappingProxyType(replicas)}
        if activity is not None:
            changes["activity"] = types.MappingProxyType(activity)
        if now_s is not None:
            changes["now_s"] = now_s
        old = self.replicas
        for replica in updated:
            before = old.get(replica.replica_id)
            if (before is None or before.state is not replica.state or before.worker_id != replica.worker_id
                    or before.memory_gb != replica.memory_gb):
                return _evolve_snapshot(self, **changes)
        # Memory use depends only on which replicas are live where, which such an update keeps.
        new = _evolve_snapshot_keeping_indexes(self, **changes)
        index = self._live_by_expert
        if index is not None:
            patched = dict(index)
            for replica in updated:
                sets = patched.get(replica.expert_id)
                if sets is None or replica.state not in LIVE_STATES:
                    continue
                live, accepting, warm = sets
                # Same state as before: it sits in exactly the groups its state puts it in. A group that is the
                # same tuple as the one before it (`_groups`) holds it too, and stays shared.
                new_live = _swapped(live, replica)
                if replica.state in ACCEPTING_STATES:
                    new_accepting = new_live if accepting is live else _swapped(accepting, replica)
                else:
                    new_accepting = accepting
                if replica.state is ReplicaState.WARM:
                    new_warm = new_accepting if warm is accepting else _swapped(warm, replica)
                else:
                    new_warm = warm
                patched[replica.expert_id] = (new_live, new_accepting, new_warm)
            object.__setattr__(new, "_live_by_expert", patched)
        return new

    def catalog_memo(self) -> dict:
        """A dict for memoizing values that are pure functions of `workers`, `experts` and `estimates` alone
        (e.g. per-expert hardware options). Every snapshot evolved from this one without changing those three
        shares it, so a value computed once serves them all. Key entries by what they mean, with a
        module-specific prefix; never store anything that depends on replicas, load or time."""
        memo = self._catalog_memo
        if memo is None:
            memo = {}
            object.__setattr__(self, "_catalog_memo", memo)
        return memo

    def layout_memo(self) -> dict:
        """Like `catalog_memo`, for values that may also depend on the replicas' placement — which replica is
        on which worker, in which life-cycle state, holding how much memory (e.g. where a new replica would
        fit) — but not on their load or on the time. Shared by the snapshots evolved from this one by load,
        queue, activity and clock changes."""
        memo = self._layout_memo
        if memo is None:
            memo = {}
            object.__setattr__(self, "_layout_memo", memo)
        return memo

    def _index_replicas(self) -> dict[ExpertId, tuple[tuple[Replica, ...], ...]]:
        # Per expert: (live, accepting, warm) replicas, each in id order.
        by_expert: dict[ExpertId, tuple[list[Replica], list[Replica], list[Replica]]] = {}
        for replica_id in sorted(self.replicas):
            replica = self.replicas[replica_id]
            if replica.state in LIVE_STATES:
                live, accepting, warm = by_expert.setdefault(replica.expert_id, ([], [], []))
                live.append(replica)
                if replica.state in ACCEPTING_STATES:
                    accepting.append(replica)
                if replica.state is ReplicaState.WARM:
                    warm.append(replica)
        index = {e: _groups(*lists) for e, lists in by_expert.items()}
        object.__setattr__(self, "_live_by_expert", index)
        return index

    def _index_memory(self) -> None:
        used: dict[WorkerId, float] = {}
        devices: dict[WorkerId, int] = {}
        for replica in self.replicas.values():
            if replica.state in LIVE_STATES:
                used[replica.worker_id] = used.get(replica.worker_id, 0.0) + replica.memory_gb
                if replica.num_devices:
                    devices[replica.worker_id] = devices.get(replica.worker_id, 0) + replica.num_devices
        max_free: dict[HardwareKind, float] = {}
        for worker in self.workers.values():
            free = worker.memory_gb - used.get(worker.worker_id, 0.0)
            max_free[worker.hardware] = max(free, max_free.get(worker.hardware, free))
        object.__setattr__(self, "_memory_used", used)
        object.__setattr__(self, "_devices_used", devices)
        object.__setattr__(self, "_max_free_by_hardware", max_free)

    # ---- queries

    def _replica_sets(self, expert_id: ExpertId) -> tuple[tuple[Replica, ...], ...]:
        index = self._live_by_expert
        if index is None:
            index = self._index_replicas()
        return index.get(expert_id, _NO_REPLICA_SETS)

    def replicas_of(self, expert_id: ExpertId) -> tuple[Replica, ...]:
        """Live replicas of an expert, in id order (deterministic for tie-breaking)."""
        return self._replica_sets(expert_id)[0]

    def accepting_replicas_of(self, expert_id: ExpertId) -> tuple[Replica, ...]:
        """Starting or warm replicas, in id order."""
        return self._replica_sets(expert_id)[1]

    def warm_replicas_of(self, expert_id: ExpertId) -> tuple[Replica, ...]:
        return self._replica_sets(expert_id)[2]

    def is_warm(self, expert_id: ExpertId) -> bool:
        """Can serve without a cold start: external, or has a warm replica."""
        spec = self.experts.get(expert_id)
        return (spec is not None and spec.is_external) or bool(self.warm_replicas_of(expert_id))

    def activity_of(self, expert_id: ExpertId) -> ExpertActivity:
        return self.activity.get(expert_id) or ExpertActivity(expert_id)

    def memory_used_gb(self, worker_id: WorkerId) -> float:
        if self._memory_used is None:
            self._index_memory()
        return self._memory_used.get(worker_id, 0.0)

    def memory_free_gb(self, worker_id: WorkerId) -> float:
        return self.workers[worker_id].memory_gb - self.memory_used_gb(worker_id)

    def declares_devices(self) -> bool:
        """Whether any worker declares devices (else placement checks memory only)."""
        memo = self.catalog_memo()
        found = memo.get(_DECLARES_DEVICES_KEY)
        if found is None:
            found = memo[_DECLARES_DEVICES_KEY] = any(w.num_devices for w in self.workers.values())
        return found

    def devices_free(self, worker_id: WorkerId) -> int:
        """Devices of `worker_id` that neither a live replica nor an asleep one holds (0 on a worker that declares
        none: check `Worker.num_devices` first)."""
        if self._devices_used is None:
            self._index_memory()
        worker = self.workers[worker_id]
        asleep = sum(h.num_devices for h in worker.asleep) if worker.asleep else 0
        return worker.num_devices - self._devices_used.get(worker_id, 0) - asleep

    def rooms_by_hardware(self) -> Mapping[HardwareKind, tuple[tuple[float, float], ...]]:
        """Per hardware kind, the distinct (free memory GB, devices a start may take) of its workers: the devices
        no live replica holds (an asleep one's included: placement may evict it), infinite on a worker that
        declares none. For "could a replica go anywhere of this kind" without a loop over every worker."""
        rooms = self._rooms_by_hardware
        if rooms is None:
            if self._devices_used is None:
                self._index_memory()
            found: dict[HardwareKind, set[tuple[float, float]]] = {}
            for worker in self.workers.values():
                devices = (worker.num_devices - self._devices_used.get(worker.worker_id, 0)) if worker.num_devices \
                    else float("inf")
                found.setdefault(worker.hardware, set()).add((self.memory_free_gb(worker.worker_id), devices))
            rooms = {hw: tuple(sorted(pairs)) for hw, pairs in found.items()}
            object.__setattr__(self, "_rooms_by_hardware", rooms)
        return rooms

    def max_free_gb_by_hardware(self) -> Mapping[HardwareKind, float]:
        """Per hardware kind present in the fleet, the most free memory on one worker of that kind."""
        if self._max_free_by_hardware is None:
            self._index_memory()
        return self._max_free_by_hardware

    def estimate(self, expert_id: ExpertId, hardware: HardwareKind) -> ServingEstimate | None:
        return self.estimates.get((expert_id, hardware))

    def unplaced_of(self, expert_id: ExpertId) -> tuple[QueuedRequest, ...]:
        if not self.unplaced:  # the usual case, asked per expert at every control step
            return ()
        return tuple(r for r in self.unplaced if r.expert_id == expert_id)

    def iter_requests(self) -> Iterator[tuple[ReplicaId | None, QueuedRequest]]:
        """Every not-yet-started request with where it waits (None = unplaced)."""
        for r in self.unplaced:
            yield None, r
        for rid, replica in sorted(self.replicas.items()):
            for r in replica.load.queue:
                yield rid, r

    def locate(self, request_id: RequestId) -> RequestLocation:
        """Where a not-yet-started request waits (a scan of the queues: for per-request use, not hot loops)."""
        for replica_id, request in self.iter_requests():
            if request.request_id == request_id:
                if replica_id is None:
                    return RequestLocation(Whereabouts.UNPLACED)
                return RequestLocation(Whereabouts.QUEUED, replica_id)
        return RequestLocation(Whereabouts.ABSENT)

    @property
    def num_cold_starts(self) -> int:
        return self.transition_counts.get((ReplicaState.COLD, ReplicaState.STARTING), 0)


# Compiled once, like the dataclass machinery above (a few lines of generated code, no I/O).
_evolve_replica = evolver_of(Replica)
_evolve_snapshot = evolver_of(FleetSnapshot)
_evolve_snapshot_keeping_indexes = evolver_of(FleetSnapshot, keep_caches=True)
