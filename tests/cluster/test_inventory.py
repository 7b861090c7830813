"""The Ray node inventory as workers: a pure function of `ray.nodes()`'s answer (no Ray needed)."""

from __future__ import annotations

from switchboard.cluster.ray_inventory import workers_from_nodes
from switchboard.perf.hardware import GB, get_hardware


def node(node_id: str, resources: dict, labels: dict | None = None, alive: bool = True) -> dict:
    return {"NodeID": node_id, "Alive": alive, "Resources": {"CPU": 2.0, **resources}, "Labels": labels or {},
            "NodeManagerAddress": "10.0.0.7"}


def test_nodes_declaring_hardware_become_workers_priced_from_the_catalog():
    l4 = get_hardware("l4")
    (worker,) = workers_from_nodes([node("b" * 56, {"switchboard/hw:l4": 2.0})])
    assert worker.node_id == "b" * 56
    assert worker.worker.worker_id == "ray-" + "b" * 12
    assert worker.worker.hardware == "l4"
    assert worker.worker.memory_gb == 2 * l4.memory_bytes / GB
    assert worker.worker.usd_per_hour == 2 * l4.usd_per_hour
    assert worker.worker.location == "10.0.0.7"
    assert worker.worker.num_devices == 0  # no Ray GPUs: memory only, its actors request none


def test_a_node_with_ray_gpus_declares_them_as_devices_placement_books():
    (worker,) = workers_from_nodes([node("d" * 56, {"switchboard/hw:h100": 4.0, "GPU": 4.0})])
    assert worker.worker.num_devices == 4


def test_labels_and_overrides():
    (worker,) = workers_from_nodes([node("c" * 56, {"switchboard/memory_gb": 12.0, "switchboard/usd_per_hour": 0.05},
                                        {"switchboard/hw": "cpu", "switchboard/worker-id": "laptop"})])
    assert (worker.worker.worker_id, worker.worker.hardware, worker.worker.memory_gb, worker.worker.usd_per_hour) == ("laptop", "cpu", 12.0, 0.05)


def test_dead_undeclared_unknown_and_ambiguous_nodes_host_nothing():
    nodes = [
        node("1" * 56, {"switchboard/hw:l4": 1.0}, alive=False),
        node("2" * 56, {}),
        node("3" * 56, {"switchboard/hw:tpu9": 1.0}),
        node("4" * 56, {"switchboard/hw:l4": 1.0, "switchboard/hw:a10g": 1.0}),
        node("5" * 56, {"switchboard/hw:a10g": 1.0}),
    ]
    assert [w.worker.hardware for w in workers_from_nodes(nodes)] == ["a10g"]

