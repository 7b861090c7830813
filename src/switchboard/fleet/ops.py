"""Pure updates of a `FleetSnapshot`: each returns a new snapshot and leaves its argument untouched.

The live control plane and the simulator both apply actions and engine events through these, so both keep
the same invariants: transitions are legal and counted, a request is in exactly one queue, memory is
accounted per worker.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from switchboard.fleet.state import (
    ExpertActivity,
    evolve,
    FleetSnapshot,
    QueuedRequest,
    Replica,
    ReplicaLoad,
    ServingEstimate,
    Worker,
)
from switchboard.frozen import evolver_of
from switchboard.types import ExpertId, ReplicaId, ReplicaState, RequestId, Seconds, WorkerId


class UnknownReplica(KeyError):
    pass


def at_time(snapshot: FleetSnapshot, now_s: Seconds) -> FleetSnapshot:
    """The same fleet seen at a later time; raises ValueError if time would go backwards."""
    if now_s < snapshot.now_s:
        raise ValueError(f"time went backwards: {now_s} < {snapshot.now_s}")
    return snapshot.at(now_s)


def _copy(mapping: Mapping) -> dict:
    """A fresh dict of one of the snapshot's mappings. They are read-only views of dicts, whose `copy()` copies
    the dict whole (`dict(view)` would look up every key through the view: ~8× slower on the fleet's hot path)."""
    return mapping.copy()


def _replace_replicas(snapshot: FleetSnapshot, *replicas: Replica) -> FleetSnapshot:
    merged = _copy(snapshot.replicas)
    for replica in replicas:
        merged[replica.replica_id] = replica
    return snapshot.with_replicas_updated(replicas, merged)


def _get(snapshot: FleetSnapshot, replica_id: ReplicaId) -> Replica:
    try:
        return snapshot.replicas[replica_id]
    except KeyError:
        raise UnknownReplica(replica_id) from None


def add_replica(
    snapshot: FleetSnapshot, replica_id: ReplicaId, estimate: ServingEstimate, worker_id: WorkerId
) -> FleetSnapshot:
    """A new cold replica of `estimate.expert_id` on a worker; raises ValueError if the id is taken or the
    worker lacks the memory or, where it declares devices, the free devices (placement must never over-commit
    nor double-book a device). The replica holds `estimate.num_devices` devices on such a worker, none elsewhere."""
    if replica_id in snapshot.replicas:
        raise ValueError(f"replica id {replica_id} already exists")
    worker = snapshot.workers[worker_id]
    if worker.hardware != estimate.hardware:
        raise ValueError(f"estimate is for {estimate.hardware}, worker {worker_id} is {worker.hardware}")
    if estimate.memory_gb > snapshot.memory_free_gb(worker_id) + 1e-9:
        raise ValueError(
            f"worker {worker_id} has {snapshot.memory_free_gb(worker_id):.1f} GB free, replica needs {estimate.memory_gb:.1f}"
        )
    num_devices = estimate.num_devices if worker.num_devices else 0
    if num_devices and num_devices > snapshot.devices_free(worker_id):
        raise ValueError(f"worker {worker_id} has {snapshot.devices_free(worker_id)} of {worker.num_devices} devices "
                         f"free, replica needs {num_devices}")
    now_s = snapshot.now_s
    replica = Replica(
        replica_id=replica_id, expert_id=estimate.expert_id, worker_id=worker_id, hardware=worker.hardware,
        memory_gb=estimate.memory_gb, capacity=estimate.capacity, state=ReplicaState.COLD, state_since_at=now_s,
        created_at=now_s, expected_warm_at=now_s + estimate.cold_start_s, last_busy_at=now_s, num_devices=num_devices,
    )
    return _replace_replicas(snapshot, replica)


def wake_asleep(snapshot: FleetSnapshot, expert_id: ExpertId, worker_id: WorkerId) -> FleetSnapshot:
    """A start of `expert_id` on `worker_id` wakes the replica of it asleep there that fell asleep last (if any,
    before its `until_s`): it leaves the worker's `asleep` list, its devices going to the start (the executor's
    `AsleepReplicas.take` takes the same one)."""
    worker = snapshot.workers[worker_id]
    now_s = snapshot.now_s
    for index in range(len(worker.asleep) - 1, -1, -1):
        if worker.asleep[index].wakes_for(expert_id, now_s):
            return _without_asleep(snapshot, worker, index)
    return snapshot


def evict_asleep(snapshot: FleetSnapshot, worker_id: WorkerId, replica_id: ReplicaId) -> FleetSnapshot:
    """The asleep replica `replica_id` leaves `worker_id` (evicted: stopped, its devices free); raises KeyError if
    it is not asleep there."""
    worker = snapshot.workers[worker_id]
    for index, holder in enumerate(worker.asleep):
        if holder.replica_id == replica_id:
            return _without_asleep(snapshot, worker, index)
    raise KeyError(f"{replica_id} is not asleep on {worker_id}")


def _without_asleep(snapshot: FleetSnapshot, worker: Worker, index: int) -> FleetSnapshot:
    workers = _copy(snapshot.workers)
    workers[worker.worker_id] = evolve(worker, asleep=worker.asleep[:index] + worker.asleep[index + 1:])
    return snapshot.evolve_taking(workers=workers)


def transition(
    snapshot: FleetSnapshot, replica_id: ReplicaId, to_state: ReplicaState, *, cold_start_s: Seconds = 0.0
) -> FleetSnapshot:
    """Move a replica to `to_state` at `snapshot.now_s` and count it; raises `IllegalTransition`.

    Stopping a replica that still has queued requests moves them to `unplaced`, never drops them.
    """
    replica = _get(snapshot, replica_id)
    moved = replica.transition(to_state, snapshot.now_s, cold_start_s=cold_start_s)
    key = (replica.state, to_state)
    counts = _copy(snapshot.transition_counts)
    counts[key] = counts.get(key, 0) + 1
    unplaced = snapshot.unplaced
    if to_state is ReplicaState.STOPPED and moved.load.queue:
        unplaced = unplaced + moved.load.queue
        moved = evolve(moved, load=evolve(moved.load, queue=()))
    return _replace_replicas(snapshot, moved).evolve_taking(transition_counts=counts, unplaced=unplaced)


def prune_stopped(snapshot: FleetSnapshot) -> FleetSnapshot:
    """Forget stopped replicas (their transitions stay counted in `transition_counts`)."""
    kept = {rid: r for rid, r in snapshot.replicas.items() if r.state is not ReplicaState.STOPPED}
    return snapshot.evolve_taking(replicas=kept)


def set_load(snapshot: FleetSnapshot, replica_id: ReplicaId, load: ReplicaLoad) -> FleetSnapshot:
    replica = _get(snapshot, replica_id)
    return _replace_replicas(snapshot, replica.with_load(load, snapshot.now_s))


def enqueue(snapshot: FleetSnapshot, request: QueuedRequest, replica_id: ReplicaId | None) -> FleetSnapshot:
    """Put a request at the tail of a replica's queue, or in `unplaced` when `replica_id` is None."""
    if replica_id is None:
        return snapshot.evolve(unplaced=snapshot.unplaced + (request,))
    return _replace_replicas(snapshot, enqueued(_get(snapshot, replica_id), request, snapshot.now_s))


def enqueued(replica: Replica, request: QueuedRequest, now_s: Seconds) -> Replica:
    """The replica after `enqueue` of `request` on it at `now_s` (for `apply_changes`)."""
    load = replica.load
    return replica.with_load(ReplicaLoad(load.num_running, load.num_running_tokens, load.queue + (request,),
                                         load.num_running_background, load.num_running_background_tokens), now_s)


def remove_request(snapshot: FleetSnapshot, request_id: RequestId) -> tuple[FleetSnapshot, QueuedRequest]:
    """Take a not-yet-started request out of whichever queue holds it; raises KeyError if none does."""
    for index, request in enumerate(snapshot.unplaced):
        if request.request_id == request_id:
            unplaced = snapshot.unplaced[:index] + snapshot.unplaced[index + 1:]
            return snapshot.evolve(unplaced=unplaced), request
    for replica in snapshot.replicas.values():
        for index, request in enumerate(replica.load.queue):
            if request.request_id == request_id:
                queue = replica.load.queue[:index] + replica.load.queue[index + 1:]
                load = evolve(replica.load, queue=queue)
                return _replace_replicas(snapshot, replica.with_load(load, snapshot.now_s)), request
    raise KeyError(request_id)


def start_request(snapshot: FleetSnapshot, replica_id: ReplicaId, request_id: RequestId) -> FleetSnapshot:
    """The engine began `request_id` on `replica_id`: it leaves the queue and joins the running set."""
    return start_requests(snapshot, replica_id, (request_id,))


def start_requests(snapshot: FleetSnapshot, replica_id: ReplicaId, request_ids: Sequence[RequestId]) -> FleetSnapshot:
    """`start_request` for each of `request_ids` (one prefill batch), as one update; raises KeyError if one
    of them is not queued on `replica_id`."""
    return _replace_replicas(snapshot, started(_get(snapshot, replica_id), request_ids, snapshot.now_s))


def started(replica: Replica, request_ids: Sequence[RequestId], now_s: Seconds) -> Replica:
    """The replica after `start_requests` at `now_s` (for `apply_changes`); raises KeyError like it."""
    load = replica.load
    num_running, num_running_tokens, queue = load.num_running, load.num_running_tokens, load.queue
    num_background, num_background_tokens = load.num_running_background, load.num_running_background_tokens
    for request_id in request_ids:
        for index, request in enumerate(queue):
            if request.request_id == request_id:
                num_running += 1
                num_running_tokens += request.num_tokens
                if request.is_background:
                    num_background += 1
                    num_background_tokens += request.num_tokens
                queue = queue[:index] + queue[index + 1:]
                break
        else:
            raise KeyError(f"request {request_id} is not queued on {replica.replica_id}")
    load = ReplicaLoad(num_running=num_running, num_running_tokens=num_running_tokens, queue=queue,
                       num_running_background=num_background, num_running_background_tokens=num_background_tokens)
    return replica.with_load(load, now_s)


def record_arrival(
    snapshot: FleetSnapshot, expert_id: ExpertId, num_prompt_tokens: int = 0, num_output_tokens: int = 0
) -> FleetSnapshot:
    """A request for `expert_id` arrived (with its prompt and expected output tokens, for the demand estimate)."""
    activity = _copy(snapshot.activity)
    activity[expert_id] = snapshot.activity_of(expert_id).on_arrival(snapshot.now_s, num_prompt_tokens,
                                                                      num_output_tokens)
    return snapshot.evolve_taking(activity=activity)


def record_finish(snapshot: FleetSnapshot, expert_id: ExpertId) -> FleetSnapshot:
    """A request of `expert_id` finished, failed or was rejected (any end after `record_arrival`)."""
    activity = _copy(snapshot.activity)
    activity[expert_id] = snapshot.activity_of(expert_id).on_finish(snapshot.now_s)
    return snapshot.evolve_taking(activity=activity)


def empty_fleet(
    now_s: Seconds,
    workers: Iterable[Worker],
    experts: Iterable,
    estimates: Iterable[ServingEstimate],
) -> FleetSnapshot:
    """A fleet with workers and experts but no replicas. `experts` are `ExpertSpec`s."""
    expert_list = list(experts)
    return FleetSnapshot(
        now_s=now_s,
        workers={w.worker_id: w for w in workers},
        experts={e.expert_id: e for e in expert_list},
        estimates={(e.expert_id, e.hardware): e for e in estimates},
        activity={e.expert_id: ExpertActivity(e.expert_id, idle_since_at=now_s) for e in expert_list},
    )


def finish_request(snapshot: FleetSnapshot, replica_id: ReplicaId, num_tokens: int,
                   is_background: bool = False) -> FleetSnapshot:
    """A running request of `num_tokens` (as counted by `start_request`) left the replica; `is_background`: it was a
    batch's (`QueuedRequest.is_background`), counted apart while it ran."""
    replica = _get(snapshot, replica_id)
    load = _finished_load(replica, (num_tokens,), (num_tokens,) if is_background else ())
    return _replace_replicas(snapshot, replica.with_load(load, snapshot.now_s))


def end_requests(snapshot: FleetSnapshot, replica_id: ReplicaId, num_tokens: Sequence[int]) -> FleetSnapshot:
    """Running requests of the replica's expert, of `num_tokens` each, finished: `finish_request` then
    `record_finish` for each, in order, as one update."""
    replica = _get(snapshot, replica_id)
    activities = _copy(snapshot.activity)
    activities[replica.expert_id] = finished(snapshot.activity_of(replica.expert_id), num_tokens, snapshot.now_s)
    updated = ended(replica, num_tokens, snapshot.now_s)
    replicas = _copy(snapshot.replicas)
    replicas[updated.replica_id] = updated
    return snapshot.with_replicas_updated((updated,), replicas, activities)


def ended(replica: Replica, num_tokens: Sequence[int], now_s: Seconds) -> Replica:
    """The replica after `end_requests` at `now_s` (for `apply_changes`); raises ValueError like it."""
    return replica.with_load(_finished_load(replica, num_tokens), now_s)


def finished(activity: ExpertActivity, num_tokens: Sequence[int], now_s: Seconds) -> ExpertActivity:
    """The expert's activity after `end_requests` of `num_tokens` at `now_s` (for `apply_changes`)."""
    for _ in num_tokens:
        activity = activity.on_finish(now_s)
    return activity


def apply_changes(
    snapshot: FleetSnapshot, now_s: Seconds, replicas: Mapping[ReplicaId, Replica],
    activity: Mapping[ExpertId, ExpertActivity],
) -> FleetSnapshot:
    """The fleet at `now_s` (`at_time`) with the load changes of `replicas` and the `activity` entries, as one
    update: for a caller that applies many engine events between two policy decisions.

    Each replica must be the snapshot's own replica after `enqueued` / `started` / `ended` (any number, in
    event order, each at its event's time ≤ `now_s`) and each activity the snapshot's after `finished`, so that
    the result equals applying `enqueue` / `start_requests` / `end_requests` one by one at those times and then
    `at_time(now_s)`: those updates read nothing but the replica and activity they change, and the clock only
    for the times they record.
    """
    if now_s < snapshot.now_s:
        raise ValueError(f"time went backwards: {now_s} < {snapshot.now_s}")
    merged = _copy(snapshot.replicas)
    merged.update(replicas)
    activities = None
    if activity:
        activities = _copy(snapshot.activity)
        activities.update(activity)
    return snapshot.with_replicas_updated(tuple(replicas.values()), merged, activities, now_s=now_s)


def _finished_load(replica: Replica, num_tokens: Sequence[int], background_tokens: Sequence[int] = ()) -> ReplicaLoad:
    """The load once running requests of `num_tokens` left, of which those of `background_tokens` were a batch's
    (taken off its counts); the batch's counts are then kept within the running ones (a feeder that does not tell
    its ends apart, the simulator's, never has a batch's requests)."""
    load = replica.load
    num_running, num_running_tokens = load.num_running, load.num_running_tokens
    for n in num_tokens:
        if num_running <= 0:
            raise ValueError(f"replica {replica.replica_id} has no running request to finish")
        num_running, num_running_tokens = num_running - 1, max(0, num_running_tokens - n)
    # The queue is unchanged, and with it the sums the load caches over it: they carry over.
    if not load.num_running_background:  # the common case (and the simulator's only one): nothing else to keep
        return _evolve_load_keeping_queue_sums(load, num_running=num_running, num_running_tokens=num_running_tokens)
    num_background = min(max(0, load.num_running_background - len(background_tokens)), num_running)
    background_left = min(max(0, load.num_running_background_tokens - sum(background_tokens)), num_running_tokens)
    return _evolve_load_keeping_queue_sums(load, num_running=num_running, num_running_tokens=num_running_tokens,
                                           num_running_background=num_background,
                                           num_running_background_tokens=background_left)


_evolve_load_keeping_queue_sums = evolver_of(ReplicaLoad, keep_caches=True)
