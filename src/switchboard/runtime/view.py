"""The operator's view of the live fleet: the JSON behind `GET /admin/fleet`, the dashboard and `switchboard status`.

Replica states, loads and transitions come from the fleet model; what only the engines know (requests served,
measured cold starts, last error) from the live replicas.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from switchboard.config.schema import EmbeddedClusterConfig
from switchboard.fleet.state import FleetSnapshot
from switchboard.runtime.devices import DeviceBook
from switchboard.runtime.lease import LiveReplica
from switchboard.types import ReplicaId


def describe_external(ext: LiveReplica) -> dict[str, Any]:
    """An external (`openai`) expert's pseudo-replica, always warm, served from the gateway itself."""
    return {
        "replica_id": ext.replica_id, "expert": ext.expert.id, "worker": "upstream", "hardware": "remote",
        "state": "warm", "num_running": ext.num_outstanding, "num_queued": 0, "num_served": ext.num_served,
        "num_failed": ext.num_failed,
    }


def describe_devices(book: DeviceBook, worker_id: str, hardware: str, model: FleetSnapshot,
                     asleep: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One cell per device `worker_id` declares, in its order: `state` is the holding replica's state (`starting`,
    `warm`, `draining`), or `asleep` when a replica asleep there holds it (it keeps its devices: it wakes on them,
    and placement gives them to another replica only by evicting it first), else `free`. `replica` and `expert`
    name the holder; `asleep` lists the replica asleep on the device, if any."""
    holders = book.holders(worker_id)
    sleepers = {a["replica"]: a for a in asleep if a["worker"] == worker_id}
    cells = []
    for index in book.declared(worker_id):
        replica_id = holders.get(index)
        held = model.replicas.get(ReplicaId(replica_id)) if replica_id is not None else None
        if replica_id in sleepers:
            state, expert = "asleep", sleepers[replica_id]["expert"]
        elif replica_id is not None:
            # A held device's replica is in the model (the fleet assigns after adding it, releases before pruning
            # it); only while the gateway shuts down does it read `stopped`.
            state, expert = (held.state.value, held.expert_id) if held else ("stopped", replica_id.split("#")[0])
        else:
            state, expert = "free", None
        cells.append({"index": index, "hardware": hardware, "state": state, "replica": replica_id, "expert": expert,
                      "asleep": [replica_id] if state == "asleep" else []})
    return cells


def describe_fleet(fleet: Any, model: FleetSnapshot) -> dict[str, Any]:
    """The view of `fleet` (a `LiveFleet`: its public `config`, `live`, `external`, circuits, counters, decisions
    and `keepalive_decision`) with `model`, its fleet model at the time of the view."""
    by_expert: dict[str, list[dict[str, Any]]] = {e.id: [] for e in fleet.config.experts}
    for replica_id, r in sorted(model.replicas.items()):
        live = fleet.live.get(replica_id)
        by_expert[r.expert_id].append({
            "replica_id": replica_id, "expert": r.expert_id, "worker": r.worker_id, "hardware": r.hardware,
            "state": r.state.value, "state_since": r.state_since_at, "num_running": r.load.num_running,
            "num_queued": r.load.num_queued, "num_outstanding_tokens": r.load.num_outstanding_tokens,
            # Of those, a batch's (docs/api.md "Batches"): work live requests go before and are not refused for.
            "num_running_background": r.load.num_running_background,
            "num_queued_background": r.load.num_queued - r.load.num_live_queued,
            "num_served": live.num_served if live else 0, "num_failed": live.num_failed if live else 0,
            "last_busy_at": r.last_busy_at, "cold_start": live.cold_start if live else None,
            "last_error": live.last_error if live else None, "circuit": fleet.replica_circuits.describe(replica_id),
            "node": getattr(live.engine, "node_id", None) if live else None,  # the Ray node, in Ray mode
            # The devices the fleet booked for it, or (Ray mode) the GPU ids Ray gave its actor.
            "devices": list(fleet.devices.held(replica_id)) or list(getattr(live.engine, "devices", ()) if live else ()),
            "transitions": [{"from": t.from_state.value, "to": t.to_state.value, "at": t.at_s} for t in r.transitions[-10:]],
        })
    for expert_id, ext in fleet.external.items():
        by_expert[expert_id].append(describe_external(ext))
    asleep = fleet.sleep_tier.describe() if getattr(fleet, "sleep_tier", None) is not None else []
    # In Ray mode the workers are Ray nodes, not the config's, and Ray books their GPUs: shown per replica only.
    book = fleet.devices if isinstance(fleet.config.cluster, EmbeddedClusterConfig) else DeviceBook({})
    return {
        "now": model.now_s,
        "workers": [
            {**dataclasses.asdict(w), "devices": describe_devices(book, w.worker_id, w.hardware, model, asleep)}
            for w in model.workers.values()
        ],
        "experts": [
            {
                "id": e.id, "backend": e.backend.kind, "params_b": e.params_b,
                "usd_per_mtok_input": e.usd_per_mtok_input, "usd_per_mtok_output": e.usd_per_mtok_output,
                "context_tokens": e.context_tokens, "replicas": by_expert[e.id],
                "keepalive": fleet.keepalive_decision(e.id), "circuit": fleet.expert_circuits.describe(e.id),
                "asleep": [a for a in asleep if a["expert"] == e.id],  # the sleep tier: engines kept, weights off
            }
            for e in fleet.config.experts
        ],
        "counters": {**fleet.counters, "transitions": {f"{a.value}->{b.value}": n for (a, b), n in model.transition_counts.items()}},
        "decisions": list(fleet.decisions)[-50:],
    }
