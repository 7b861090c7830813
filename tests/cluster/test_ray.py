"""Switchboard on a real local Ray cluster: placement pins replicas to nodes of the right hardware kind, tokens
stream from replica actors through the gateway, and a lost node's replicas are re-placed with every in-flight
request either completed or failed cleanly. Run with `pytest -m ray tests/cluster` (docs/ray.md)."""

from __future__ import annotations

import concurrent.futures
import uuid

import httpx
import openai
import pytest

from switchboard.config import parse_config
from switchboard.gateway.app import build_app
from switchboard.testing.fleet_view import fleet_view, replicas_of, wait_for
from switchboard.testing.servers import serve_in_process, serve_in_thread

pytestmark = [pytest.mark.ray, pytest.mark.llamacpp]

LONG_ANSWER_TOKENS = 16000
"""Long enough (about 7 s of modelled decoding at small-l4's time scale) that a request is still running when a
test removes its node or kills its gateway, however slow the machine; short enough to retry in full."""


def ray_config(address: str):
    return parse_config(f"""
cluster: {{kind: ray, address: "{address}", namespace: switchboard-test, inventory_interval_s: 0.5, gateway_timeout_s: 3,
           control_resources: {{"node:__internal_head__": 0.001}}}}  # not on the l4 node a test removes
experts:
  - id: smollm2
    backend: {{kind: llamacpp, n_threads: 1, hardware: cpu}}
    params_b: 0.135
    context_tokens: 512
    max_output_tokens: 64
  - id: small-l4
    backend: {{kind: simulated, hardware: l4, time_scale: 0.05, default_output_tokens: 16}}
    params_b: 1
    context_tokens: 24576
    max_output_tokens: 20000
router: {{enabled: false}}
storage: {{enabled: false}}
control_plane: {{step_interval_s: 0.5, startup_wait_s: 60}}
""")


@pytest.fixture(scope="module")
def gateway(ray_cluster):
    """A gateway on the cluster; the shared control actor it creates is stopped (with its replicas) at the end."""
    from switchboard.cluster.ray_control import stop_control_actor

    _, address = ray_cluster
    config = ray_config(address)
    app = build_app(config)
    try:
        with serve_in_thread(app, startup_timeout_s=120) as url:
            yield url, config
    finally:
        stop_control_actor(config.cluster)


def warm_replica(url: str, expert_id: str) -> dict:
    """A warm replica of `expert_id` that has just answered a request (started for it if there was none), as
    `/admin/fleet` shows it: each test makes its own instead of relying on an earlier test's."""
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    raw = client.chat.completions.with_raw_response.create(model=expert_id, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    replica_id = raw.headers["x-switchboard-replica"]
    # The gateway refreshed its view when the lease showed the fleet had changed: no waiting needed.
    (replica,) = [r for r in replicas_of(fleet_view(url), expert_id) if r["replica_id"] == replica_id]
    return replica


def hardware_of_node(node_id: str) -> str:
    import ray

    node = next(n for n in ray.nodes() if n["NodeID"] == node_id)
    return next(k.split(":", 1)[1] for k in node["Resources"] if k.startswith("switchboard/hw:"))


def actor_node(replica: dict) -> str:
    """The node the replica's actor really runs on, asked from the actor itself."""
    import ray

    actor = next(a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].endswith("/" + replica["replica_id"]))
    return ray.get(ray.get_actor(actor["name"], namespace=actor["namespace"]).node_id.remote(), timeout=30)


def test_experts_land_on_their_hardware_and_answer(gateway, ray_cluster):
    url, _ = gateway
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    answer = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Say hello."}], max_tokens=8)
    assert answer.choices[0].message.content.strip() and "[simulated" not in answer.choices[0].message.content
    answer = client.chat.completions.create(model="small-l4", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
    assert answer.choices[0].message.content == "[simulated small-l4: 5 tokens]"

    view = fleet_view(url)
    if ray_cluster[0] is not None:  # this module's cluster names its l4 nodes with the `switchboard/worker-id` label
        assert {"l4-a", "l4-b"} <= {w["worker_id"] for w in view["workers"]}
    (smol,) = replicas_of(view, "smollm2")
    (small,) = replicas_of(view, "small-l4")
    assert (smol["hardware"], small["hardware"]) == ("cpu", "l4")
    # The actors really run on nodes of those kinds, the ones placement chose.
    assert actor_node(smol) == smol["node"] and hardware_of_node(smol["node"]) == "cpu"
    assert actor_node(small) == small["node"] and hardware_of_node(small["node"]) == "l4"
    # The gateway's metrics and dashboard read the shared fleet too.
    metrics = httpx.get(url + "/metrics", timeout=10).text
    assert 'switchboard_replicas{expert="small-l4",hardware="l4",state="warm"} 1.0' in metrics
    assert 'switchboard_workers{hardware="l4"} 2.0' in metrics


def test_tokens_stream_from_the_replica_actor(gateway):
    url, _ = gateway
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    for model in ("small-l4", "smollm2"):
        chunks = list(client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Count to ten."}],
                                                     max_tokens=12, stream=True))
        texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
        assert len(texts) > 2, f"{model}: one token per chunk, not one whole answer: {texts}"
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    # Every call on the request path went over the gateway's direct connection to the replica, none by Ray.
    import ray

    for replica in fleet_view(url)["experts"]:
        for r in replica["replicas"]:
            actor = next(a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].endswith("/" + r["replica_id"]))
            counts = ray.get(ray.get_actor(actor["name"], namespace=actor["namespace"]).call_counts.remote(), timeout=30)
            assert counts["direct_connections"] >= 1 and counts["opened"] >= 1, counts
            assert counts["direct_calls"] == counts["open_calls"] + counts["take_calls"], counts


def test_the_responses_api_is_served_on_the_cluster(gateway):
    """`/v1/responses` is the chat path underneath: on a Ray fleet too, whole and streamed (storage is off here,
    so nothing is stored)."""
    url, _ = gateway
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    whole = client.responses.create(model="smollm2", input="Say hello.", max_output_tokens=8)
    assert whole.output_text.strip() and "[simulated" not in whole.output_text and whole.store is False
    events = list(client.responses.create(model="small-l4", input="hi", max_output_tokens=5, stream=True))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "[simulated small-l4: 5 tokens]"
    assert events[-1].type == "response.incomplete" and events[-1].response.usage.output_tokens == 5


def test_node_loss_replaces_replicas_and_ends_requests_cleanly(gateway, ray_cluster, add_l4_node):
    cluster, _ = ray_cluster
    if cluster is None:
        pytest.skip("removes a node: only on the cluster this module starts")
    url, _ = gateway
    lost = warm_replica(url, "small-l4")
    # A fresh l4 node first: the replacement needs somewhere to go, and later tests keep two l4 nodes.
    fresh_id = f"l4-{uuid.uuid4().hex[:6]}"
    add_l4_node(fresh_id)
    wait_for(lambda: fresh_id in {w["worker_id"] for w in fleet_view(url)["workers"]}, 60, f"the fleet to see worker {fresh_id}")
    node = next(n for n in cluster.worker_nodes if n.node_id == lost["node"])
    messages = [{"role": "user", "content": "hi"}]

    def stream_all() -> str:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        try:
            for _ in client.chat.completions.create(model="small-l4", messages=messages, max_tokens=LONG_ANSWER_TOKENS, stream=True):
                pass
        except openai.APIError as exc:
            return f"error: {exc.message}"
        return "ok"

    def whole() -> str:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        try:
            raw = client.chat.completions.with_raw_response.create(model="small-l4", messages=messages, max_tokens=LONG_ANSWER_TOKENS)
        except openai.APIError as exc:
            return f"error: {exc.message}"
        return "ok on " + raw.headers["x-switchboard-replica"]

    def running_on_lost() -> int:
        return sum(r["num_running"] for r in replicas_of(fleet_view(url), "small-l4") if r["replica_id"] == lost["replica_id"])

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        running = [pool.submit(stream_all), pool.submit(stream_all), pool.submit(whole), pool.submit(whole)]
        wait_for(lambda: running_on_lost() == 4, 30, f"the four requests running together on {lost['replica_id']}")
        cluster.remove_node(node, allow_graceful=False)
        outcomes = [r.result(timeout=90) for r in running]  # none hangs

    # Each completed or failed with an error that says what happened; none vanished.
    for outcome in outcomes:
        assert outcome.startswith("ok") or ("lost" in outcome and "small-l4" in outcome), outcome
    # The two that had no answer yet were retried on another replica and answered in full.
    assert all(o.startswith("ok on") and not o.endswith(lost["replica_id"]) for o in outcomes[2:]), outcomes

    # The lost replica was stopped and, in the same step, its replacement started on another l4 node.
    decisions = fleet_view(url)["decisions"]
    assert any(d["action"] == "StopReplica" and d["replica"] == lost["replica_id"] and d["code"] in ("worker-lost", "engine-lost")
               for d in decisions), decisions
    replacing = [d["replica"] for d in decisions if d["action"] == "StartReplica" and d["code"] == "replace-lost"]
    assert replacing, decisions
    (replacement,) = wait_for(lambda: [r for r in replicas_of(fleet_view(url), "small-l4") if r["replica_id"] in replacing], 60,
                              "the replacement replica to become warm")
    assert replacement["node"] != lost["node"] and hardware_of_node(replacement["node"]) == "l4"
    assert actor_node(replacement) == replacement["node"]
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
    answer = client.chat.completions.create(model="small-l4", messages=messages, max_tokens=3)
    assert answer.choices[0].message.content == "[simulated small-l4: 3 tokens]"


def second_gateway(config, tmp_path):
    """Another `switchboard serve --ray` process on the same cluster and config; yields (url, process)."""
    return serve_in_process(config, tmp_path, "--ray", config.cluster.address)


def test_two_gateway_processes_share_one_fleet(gateway, tmp_path):
    """A second `switchboard serve --ray` process joins the same control actor: both gateways show one fleet,
    and requests through the second are served by the replicas the first one sees."""
    url, config = gateway
    warm_replica(url, "small-l4")
    with second_gateway(config, tmp_path) as (other, _):
        def warm(view: dict) -> dict[str, tuple[str, str]]:
            return {r["replica_id"]: (r["worker"], r["node"]) for e in view["experts"] for r in e["replicas"] if r["state"] == "warm"}

        def served(view: dict) -> int:
            return sum(r["num_served"] for r in replicas_of(view, "small-l4"))

        shared = wait_for(lambda: (w := warm(fleet_view(url))) and warm(fleet_view(other)) == w and w, 30,
                          "both gateways to show the same warm replicas")
        num_served = served(fleet_view(url))
        client = openai.OpenAI(base_url=other + "/v1", api_key="unused", max_retries=0, timeout=60)
        for _ in range(3):
            raw = client.chat.completions.with_raw_response.create(model="small-l4", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
            assert raw.headers["x-switchboard-replica"] in shared
        wait_for(lambda: served(fleet_view(url)) == num_served + 3, 30, "the first gateway to see the second one's requests")
    # The shared fleet outlives a gateway that leaves.
    answer = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60).chat.completions.create(
        model="small-l4", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert answer.choices[0].message.content == "[simulated small-l4: 2 tokens]"


def test_a_gateway_killed_mid_stream_does_not_leave_its_replica_busy(gateway, tmp_path):
    """SIGKILL a gateway while it streams: the control actor hears no more from it and, after
    `cluster.gateway_timeout_s`, releases its lease, so the replica no longer counts the dead request."""
    url, config = gateway
    warm_replica(url, "small-l4")

    def running() -> int:
        return sum(r["num_running"] for r in replicas_of(fleet_view(url), "small-l4"))

    with second_gateway(config, tmp_path) as (other, process):
        client = openai.OpenAI(base_url=other + "/v1", api_key="unused", max_retries=0, timeout=60)
        stream = client.chat.completions.create(model="small-l4", messages=[{"role": "user", "content": "hi"}],
                                                max_tokens=LONG_ANSWER_TOKENS, stream=True)
        next(iter(stream))  # streaming: the lease is held
        wait_for(lambda: running() == 1, 30, "the streaming request to show as running")
        process.kill()
        process.wait()
        wait_for(lambda: running() == 0, config.cluster.gateway_timeout_s + 30, "the dead gateway's lease to be released")
    counters = fleet_view(url)["counters"]
    assert counters["leases_reclaimed_from_silent_gateways"] >= 1
