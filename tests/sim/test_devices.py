"""Devices in the simulator: its workers declare `devices_per_worker` devices (`Worker.num_devices`) and its
replicas go through the same placement as the live fleet's, so a replica never lands on a worker without enough
free devices, and an asleep replica keeps its devices until a start evicts it (`EvictAsleep`), as live."""

from __future__ import annotations

import numpy as np

from switchboard.policies.control import ControlSettings
from switchboard.sim.cluster import ClusterSpec, ExpertSimSpec, PoolSpec, SloSpec, resolve_cluster
from switchboard.sim.planes import ServerlessPlane, quality_only_choices
from switchboard.sim.runner import RoutingInputs, Simulation
from switchboard.sim.workload import Workload

# On an H100 an 8B model takes one device and a 49B one two (tensor-parallel 2).
EXPERTS = (ExpertSimSpec(id="one", params_b=8, usd_per_mtok=0.2), ExpertSimSpec(id="wide", params_b=49, usd_per_mtok=0.9))
SPEC = ClusterSpec(name="one-box", pools=[PoolSpec(hardware="h100", workers=1, devices_per_worker=2)],
                   experts=list(EXPERTS), slo=SloSpec(ttft_s=120.0, tpot_s=1.0))


def simulate(arrivals: list[tuple[float, str, int]], policies: dict | None = None):
    """Runs pinned requests (arrival s, expert, output tokens) on `SPEC`; returns (result, plane, simulation)."""
    cluster = resolve_cluster(SPEC)
    names = cluster.expert_ids
    n = len(arrivals)
    workload = Workload.from_arrays([a[0] for a in arrivals], [200] * n, [a[2] for a in arrivals],
                                    pinned_expert=np.array([names.index(a[1]) for a in arrivals], dtype=np.int32),
                                    expert_names=names)
    predicted = np.full((n, len(names)), 0.5)
    price = np.array([e.usd_per_mtok for e in cluster.experts])
    plane = ServerlessPlane("devices", ControlSettings.model_validate(policies or {}), names, price,
                            quality_only_choices(names, predicted, price, 0.0), control_interval_s=1.0, keep_log=True)
    simulation = Simulation(cluster, workload, plane, RoutingInputs(predicted, np.zeros((0, 0))))
    return simulation.run(), plane, simulation


def test_the_simulators_workers_declare_their_devices_and_replicas_take_their_tensor_parallel_size():
    cluster = resolve_cluster(SPEC)
    (worker,) = cluster.workers
    assert worker.num_devices == 2
    assert {e.expert_id: e.num_devices for e in cluster.estimates} == {"one": 1, "wide": 2}


def test_a_two_device_replica_is_not_placed_on_a_worker_with_one_device_free():
    # `one` is busy on one of the box's two devices (a long answer) when `wide`'s request comes: placement finds
    # no worker with two free devices, so it is refused, not started on a device `one` holds.
    result, plane, _ = simulate([(0.0, "one", 4000), (30.0, "wide", 10)])
    assert not result.rejected[0] and result.rejected[1]
    assert [r.expert_id for r in result.replicas] == ["one"]
    assert not [e for e in plane.loop.log if e.kind == "StartReplica" and e.subject.startswith("wide")]
    # Once `one` has stopped (a 5 s keep-alive), the box is free and `wide` starts there.
    later, _, _ = simulate([(0.0, "one", 10), (300.0, "wide", 10)],
                           {"keepalive": {"kind": "fixed", "idle_timeout_s": 5.0}, "prewarm": {"kind": "none"}})
    assert not later.rejected.any() and [r.expert_id for r in later.replicas] == ["one", "wide"]


def test_an_asleep_replica_keeps_its_device_until_a_start_evicts_it():
    # `one` answers a request a minute: once keep-alive knows its gaps it sleeps 5 s after each (keeping its
    # device) and the next request wakes it. `wide` needs both devices: its start evicts the sleeper first
    # (`EvictAsleep`, right before the start), and `one`'s next request is a cold start, not a wake.
    tier = {"keepalive": {"sleep_after_s": 5.0, "asleep_keepalive_s": 1800.0}, "prewarm": {"kind": "none"}}
    arrivals = [(60.0 * i, "one", 10) for i in range(14)] + [(820.0, "wide", 10), (1000.0, "one", 10)]
    result, plane, simulation = simulate(sorted(arrivals), tier)
    log = [e for e in plane.loop.log if e.kind in ("StartReplica", "EvictAsleep")]
    (evict_at,) = [i for i, e in enumerate(log) if e.kind == "EvictAsleep"]
    evicted, start = log[evict_at], log[evict_at + 1]
    assert evicted.subject.startswith("one#") and start.kind == "StartReplica" and start.subject.startswith("wide#")
    assert simulation.asleep.num_evicted == 1 and simulation.asleep.num_woken >= 1
    last = max((r for r in result.replicas if r.expert_id == "one"), key=lambda r: r.created_at)
    assert last.created_at == 1000.0 and not last.is_wake
    assert not result.rejected.any()
