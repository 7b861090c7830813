"""Ray mode books GPUs as placement does: on a node that declares GPUs (here a fake 2-GPU `h100` node), a replica
actor requests `num_gpus` equal to its tensor-parallel size, `/admin/fleet` shows the GPU ids Ray gave it, and
placement never starts a replica there without enough free GPUs (Ray would leave its actor pending). Run with
`pytest -m ray tests/cluster` (docs/ray.md)."""

from __future__ import annotations

import httpx
import pytest

from switchboard.config import parse_config
from switchboard.gateway.app import build_app
from switchboard.testing.fleet_view import fleet_view, replicas_of
from switchboard.testing.servers import serve_in_thread

from .conftest import NODE_ARGS

pytestmark = [pytest.mark.ray]


def ray_config(address: str):
    # On an H100 a 49B model is tensor-parallel 2 and an 8B one takes one device.
    return parse_config(f"""
cluster: {{kind: ray, address: "{address}", namespace: switchboard-gpus, inventory_interval_s: 0.5,
           control_resources: {{"node:__internal_head__": 0.001}}}}
experts:
  - {{id: wide, backend: {{kind: simulated, hardware: h100, time_scale: 0}}, params_b: 49, warm_at_start: false, ttft_slo_s: 60}}
  - {{id: one, backend: {{kind: simulated, hardware: h100, time_scale: 0}}, params_b: 8, warm_at_start: false, ttft_slo_s: 60}}
router: {{enabled: false}}
storage: {{enabled: false}}
control_plane: {{step_interval_s: 0.2, policies: {{evict_idle_for_memory: false, prewarm: {{kind: none}}}}}}
""")


@pytest.fixture(scope="module")
def gpu_gateway(ray_cluster):
    from switchboard.cluster.ray_control import stop_control_actor

    cluster, address = ray_cluster
    if cluster is None:
        pytest.skip("adds a GPU node: only on the cluster this module starts")
    cluster.add_node(**NODE_ARGS, num_gpus=2, resources={"switchboard/hw:h100": 2},
                     labels={"switchboard/worker-id": "h100-gpus"})
    cluster.wait_for_nodes()
    config = ray_config(address)
    try:
        with serve_in_thread(build_app(config), startup_timeout_s=120) as url:
            yield url
    finally:
        stop_control_actor(config.cluster)


def ask(url: str, model: str) -> httpx.Response:
    return httpx.post(url + "/v1/completions", json={"model": model, "prompt": "hi", "max_tokens": 2}, timeout=120)


def test_a_replica_actor_takes_its_tensor_parallel_gpus_and_the_fleet_shows_them(gpu_gateway):
    import ray

    url = gpu_gateway
    answer = ask(url, "wide")
    assert answer.status_code == 200, answer.text
    view = fleet_view(url)
    (worker,) = [w for w in view["workers"] if w["worker_id"] == "h100-gpus"]
    assert worker["num_devices"] == 2
    (wide,) = replicas_of(view, "wide")
    assert wide["worker"] == "h100-gpus" and sorted(wide["devices"]) == [0, 1]
    # Ray itself booked them: the node has no GPU left.
    assert ray.available_resources().get("GPU", 0) == 0

    # `one` needs one GPU; both are held by `wide`, so placement does not start it (its actor would wait forever
    # for a GPU), and the request is refused at once.
    refused = ask(url, "one")
    assert refused.status_code == 503 and "no worker can host a replica now" in refused.text
    assert replicas_of(fleet_view(url), "one", "starting") == [] and replicas_of(fleet_view(url), "one") == []
