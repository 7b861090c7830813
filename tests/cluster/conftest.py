"""A small real Ray cluster on this machine: a CPU head node and two `l4` worker nodes (one module-scoped
cluster: starting Ray costs seconds). Replica actors take no Ray CPUs, so one CPU per node is plenty."""

from __future__ import annotations

import os

import pytest

OBJECT_STORE_BYTES = 80 * 1024 * 1024
# Node death is noticed within ~1.5 s instead of Ray's default ~30 s, so the node-loss test stays short.
NODE_ARGS = dict(num_cpus=1, object_store_memory=OBJECT_STORE_BYTES, include_dashboard=False)
FAST_HEALTH_CHECKS = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500, "health_check_failure_threshold": 3}


@pytest.fixture(scope="module")
def ray_cluster():
    """(cluster, address) of a fresh 3-node cluster; this process is its driver.

    Set SWITCHBOARD_TEST_RAY_ADDRESS to run the tests against an existing cluster instead (cluster is then
    None): it must have a `switchboard/hw:cpu` node and a `switchboard/hw:l4` node, and the node-loss test is
    skipped (it removes a node).
    """
    import ray
    from ray.cluster_utils import Cluster

    address = os.environ.get("SWITCHBOARD_TEST_RAY_ADDRESS")
    if address:
        ray.init(address=address, namespace="switchboard-test", include_dashboard=False, log_to_driver=False)
        yield None, address
        ray.shutdown()
        return
    node_args = NODE_ARGS
    cluster = Cluster(initialize_head=True, head_node_args={
        **node_args, "resources": {"switchboard/hw:cpu": 1}, "_system_config": FAST_HEALTH_CHECKS,
    })
    try:
        for name in ("l4-a", "l4-b"):
            cluster.add_node(**node_args, resources={"switchboard/hw:l4": 1}, labels={"switchboard/worker-id": name})
        ray.init(address=cluster.address, namespace="switchboard-test", include_dashboard=False, log_to_driver=False)
        yield cluster, cluster.address
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture
def add_l4_node(ray_cluster):
    """Adds a one-device `l4` node named `worker_id` to this module's cluster (skips on an existing cluster)."""
    cluster, _ = ray_cluster
    if cluster is None:
        pytest.skip("adds nodes: only on the cluster this module starts")

    def add(worker_id: str):
        return cluster.add_node(**NODE_ARGS, resources={"switchboard/hw:l4": 1}, labels={"switchboard/worker-id": worker_id})

    return add


@pytest.fixture(scope="module")
def control_nodes(ray_cluster):
    """Two nodes that may host the control actor (resource `switchboard/control`) and nothing else."""
    cluster, _ = ray_cluster
    if cluster is None:
        pytest.skip("adds and removes nodes: only on the cluster this module starts")
    return [cluster.add_node(**NODE_ARGS, resources={"switchboard/control": 1}) for _ in range(2)]
