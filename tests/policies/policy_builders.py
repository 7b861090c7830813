"""Fleet builders for policy tests. Time is whatever `now_s` a test gives the snapshot: an injected clock."""

from __future__ import annotations

import dataclasses

from switchboard.fleet import ExpertSpec, QueuedRequest, ReplicaLoad, ServingEstimate, Worker
from switchboard.fleet import ops
from switchboard.fleet.state import FleetSnapshot
from switchboard.types import ExpertId, HardwareKind, ReplicaId, ReplicaState, RequestId, WorkerId

CPU, L4, H100 = HardwareKind("cpu"), HardwareKind("l4"), HardwareKind("h100")


def estimate(expert: str, hardware: HardwareKind, *, memory_gb=10.0, cold_start_s=20.0, prefill=4000.0,
             step1=0.02, step_full=0.05, seqs=16, kv=50_000) -> ServingEstimate:
    return ServingEstimate(ExpertId(expert), hardware, memory_gb, cold_start_s, prefill, step1, step_full, seqs, kv)


def fleet(
    experts=("a",),
    workers=(("w0", L4, 24.0, 0.8),),
    estimates=None,
    now_s: float = 0.0,
    external=(),
    ttft_slo_s: float = 2.0,
) -> FleetSnapshot:
    ws = [Worker(WorkerId(w), hw, mem, usd) for w, hw, mem, usd in workers]
    specs = [ExpertSpec(ExpertId(e), 7.0, 0.2, ttft_slo_s=ttft_slo_s, is_external=e in external) for e in experts]
    if estimates is None:
        kinds = sorted({w.hardware for w in ws})
        estimates = [estimate(e, hw) for e in experts for hw in kinds]
    return ops.empty_fleet(now_s, ws, specs, estimates)


def request(i, expert="a", at_s=0.0, prompt=200, output=100, slo=2.0, prefix="") -> QueuedRequest:
    return QueuedRequest(RequestId(f"q{i}"), ExpertId(expert), at_s, prompt, output, slo, prefix)


def with_replica(s: FleetSnapshot, replica_id: str, expert="a", worker="w0", state=ReplicaState.WARM,
                 load: ReplicaLoad | None = None) -> FleetSnapshot:
    """A replica already in `state` (walked there through legal transitions at `s.now_s`)."""
    worker_hw = s.workers[WorkerId(worker)].hardware
    s = ops.add_replica(s, ReplicaId(replica_id), s.estimate(ExpertId(expert), worker_hw), WorkerId(worker))
    path = {ReplicaState.COLD: [], ReplicaState.STARTING: [ReplicaState.STARTING],
            ReplicaState.WARM: [ReplicaState.STARTING, ReplicaState.WARM],
            ReplicaState.DRAINING: [ReplicaState.STARTING, ReplicaState.WARM, ReplicaState.DRAINING]}[state]
    for step in path:
        cold = s.estimate(ExpertId(expert), worker_hw).cold_start_s
        s = ops.transition(s, ReplicaId(replica_id), step, cold_start_s=cold)
    if load is not None:
        s = ops.set_load(s, ReplicaId(replica_id), load)
    return s


def at(s: FleetSnapshot, now_s: float) -> FleetSnapshot:
    return ops.at_time(s, now_s)


def all_request_ids(s: FleetSnapshot) -> list[str]:
    return sorted(r.request_id for _, r in s.iter_requests())


def replace_spec(s: FleetSnapshot, expert: str, **changes) -> FleetSnapshot:
    experts = dict(s.experts)
    experts[ExpertId(expert)] = dataclasses.replace(experts[ExpertId(expert)], **changes)
    return dataclasses.replace(s, experts=experts)
