"""A JSON-ready view of the fleet and the last control step's decisions, for `GET /admin/fleet` and logs."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from switchboard.fleet.state import FleetSnapshot
from switchboard.policies.actions import Action
from switchboard.policies.base import Reason
from switchboard.policies.control import StepResult


def _reason(reason: Reason) -> dict[str, str]:
    return {"code": reason.code.value, "detail": reason.detail}


def describe_action(action: Action) -> dict[str, Any]:
    """`{"action": "StartReplica", ...fields}`; requests are reduced to their id and expert."""
    out: dict[str, Any] = {"action": type(action).__name__}
    for field in dataclasses.fields(action):
        value = getattr(action, field.name)
        if field.name == "request":
            out["request_id"], out["expert_id"] = value.request_id, value.expert_id
        elif isinstance(value, Reason):
            out["reason"] = _reason(value)
        elif isinstance(value, enum.Enum):
            out[field.name] = value.value
        else:
            out[field.name] = value
    return out


def describe_fleet(snapshot: FleetSnapshot, step: StepResult | None = None) -> dict[str, Any]:
    """Workers, replicas, experts and counters at `snapshot.now_s`, plus the decisions of `step` if given."""
    now_s = snapshot.now_s
    workers = [
        {"id": w.worker_id, "hardware": w.hardware, "location": w.location, "usd_per_hour": w.usd_per_hour,
         "memory_gb": w.memory_gb, "memory_used_gb": round(snapshot.memory_used_gb(w.worker_id), 3)}
        for w in snapshot.workers.values()
    ]
    replicas = [
        {"id": r.replica_id, "expert_id": r.expert_id, "worker_id": r.worker_id, "hardware": r.hardware,
         "state": r.state.value, "in_state_s": round(now_s - r.state_since_at, 3),
         "expected_warm_in_s": round(r.wait_until_warm_s(now_s), 3),
         "num_running": r.load.num_running, "num_queued": r.load.num_queued,
         "num_outstanding_tokens": r.load.num_outstanding_tokens, "idle_s": round(r.idle_for_s(now_s), 3),
         "num_cold_starts": r.num_cold_starts,
         "transitions": [{"from": t.from_state.value, "to": t.to_state.value, "at_s": t.at_s} for t in r.transitions]}
        for _, r in sorted(snapshot.replicas.items())
    ]
    experts = []
    for expert_id, spec in snapshot.experts.items():
        activity = snapshot.activity_of(expert_id)
        entry: dict[str, Any] = {
            "id": expert_id, "is_external": spec.is_external, "is_warm": snapshot.is_warm(expert_id),
            "num_replicas": len(snapshot.replicas_of(expert_id)), "num_in_flight": activity.num_in_flight,
            "num_requests": activity.num_arrivals, "idle_s": round(activity.idle_for_s(now_s), 3),
            "num_idle_gaps": activity.num_idle_gaps, "num_unplaced": len(snapshot.unplaced_of(expert_id)),
        }
        if step is not None and expert_id in step.keepalive:
            d = step.keepalive[expert_id]
            entry["keepalive"] = {"action": d.action.value, "at_s": d.at_s, "reason": _reason(d.reason)}
        if step is not None and expert_id in step.scaling:
            d = step.scaling[expert_id]
            entry["autoscale"] = {"num_current": d.num_current, "num_desired": d.num_desired,
                                  "reason": _reason(d.reason)}
        experts.append(entry)
    out: dict[str, Any] = {
        "now_s": now_s,
        "workers": workers,
        "replicas": replicas,
        "experts": experts,
        "num_cold_starts": snapshot.num_cold_starts,
        "transition_counts": {f"{a.value}->{b.value}": n for (a, b), n in sorted(snapshot.transition_counts.items())},
    }
    if step is not None:
        out["last_actions"] = [describe_action(a) for a in step.actions]
    return out
