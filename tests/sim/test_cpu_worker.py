"""The simulator's CPU worker is the live one: it declares no devices (`Worker.num_devices` 0), so its replicas
take memory only and never sleep, with or without the sleep tier — as the live embedded CPU worker."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from switchboard.config import parse_config
from switchboard.policies.control import ControlSettings
from switchboard.runtime.estimates import live_workers
from switchboard.sim.cluster import ClusterSpec, ExpertSimSpec, PoolSpec, SloSpec, load_cluster, resolve_cluster
from switchboard.sim.planes import ServerlessPlane
from switchboard.sim.runner import RoutingInputs, Simulation
from switchboard.sim.workload import Workload

ROOT = Path(__file__).resolve().parents[2]
SMOL = ExpertSimSpec(id="smol", params_b=0.135, bytes_per_param=0.625)


def _load_fidelity_benchmark():
    # A script, not a package module: loaded by path so the test checks exactly the spec it simulates.
    path = ROOT / "benchmarks" / "sim_fidelity.py"
    spec = importlib.util.spec_from_file_location("sim_fidelity_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_the_fidelity_benchmarks_live_and_simulated_cpu_workers_declare_the_same_devices():
    bench = _load_fidelity_benchmark()
    plan = bench.FidelityPlan()
    calibration = bench.Calibration(decode_tokens_per_s=54.5, prefill_tokens_per_s=157.7, prefill_num_tokens=56,
                                    cold_start_s=0.74, num_shared_prefix_tokens=24, samples={})
    live = live_workers(parse_config(bench.live_config(plan)))
    simulated = resolve_cluster(bench.sim_cluster(calibration)).workers
    assert [(w.hardware, w.num_devices) for w in simulated] == [(w.hardware, w.num_devices) for w in live] \
        == [("cpu", 0)]


def test_a_cpu_pool_declares_no_devices_by_default_and_an_accelerator_pool_one():
    cluster = load_cluster(ROOT / "examples" / "clusters" / "local-cpu.yaml")
    (cpu,) = resolve_cluster(cluster).workers
    assert cpu.num_devices == 0
    # Memory and price are one machine of the kind, as they were with one declared device.
    built = resolve_cluster(ClusterSpec(pools=[PoolSpec(hardware="cpu"), PoolSpec(hardware="cpu", devices_per_worker=1),
                                               PoolSpec(hardware="l4")], experts=[SMOL]))
    assert [w.num_devices for w in built.workers] == [0, 1, 1]
    assert built.workers[0].memory_gb == built.workers[1].memory_gb
    assert built.workers[0].usd_per_hour == built.workers[1].usd_per_hour
    assert built.num_devices == 2
    assert ("smol", "cpu") in built.profiles  # a replica fits a device-less worker by memory


@pytest.mark.parametrize("sleep_after_s", [None, 0.0, 5.0])
def test_a_simulated_cpu_replica_never_sleeps_so_the_tier_leaves_its_cold_starts_alone(sleep_after_s):
    # A request every 40 s for ten minutes, then a 200 s gap: the 60 s keep-alive holds the replica across the
    # 40 s gaps and lets it go in the long one, two cold starts. With the tier on it would sleep in each 40 s gap
    # (and wake for the next request) on a worker that declared a device; on the CPU worker, as live, it stays
    # warm — the same two starts, no wakes, nothing asleep.
    arrivals = [40.0 * i for i in range(16)] + [40.0 * 15 + 200.0 + 10.0 * i for i in range(3)]
    n = len(arrivals)
    spec = ClusterSpec(name="cpu", pools=[PoolSpec(hardware="cpu")], experts=[SMOL],
                       slo=SloSpec(ttft_s=300.0, tpot_s=10.0))
    cluster = resolve_cluster(spec)
    workload = Workload.from_arrays(arrivals, [60] * n, [16] * n, pinned_expert=np.zeros(n, dtype=np.int32),
                                    expert_names=cluster.expert_ids)
    keepalive = {"kind": "fixed", "idle_timeout_s": 60.0}
    if sleep_after_s is not None:
        keepalive["sleep_after_s"] = sleep_after_s
    settings = ControlSettings.model_validate({
        "keepalive": keepalive, "prewarm": {"kind": "none"}, "migration": {"kind": "none"},
        "autoscale": {"min_replicas": 0, "max_replicas": 1, "upscale_delay_s": 0, "downscale_delay_s": 0}})
    plane = ServerlessPlane("cpu", settings, cluster.expert_ids, np.zeros(1), np.zeros(n, dtype=np.int32),
                            control_interval_s=1.0, seed=0)
    simulation = Simulation(cluster, workload, plane, RoutingInputs(np.zeros((n, 1)), np.zeros((n, 1))))
    result = simulation.run()
    assert not result.rejected.any()
    assert len(result.replicas) == 2 and not any(r.is_wake for r in result.replicas)
    assert all(r.num_devices == 0 for r in result.replicas)
