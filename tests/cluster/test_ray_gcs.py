"""The GCS (Ray's head process) dies and comes back under load (docs/ray.md, "A head that survives its GCS"):
with GCS fault tolerance (an external Redis) warm-replica requests through a gateway keep succeeding while it is
away, none is lost or answered twice, and full service, a cold start included, is back soon after it returns.

A replica whose actor dies while the GCS is away (as it would on a node taken for dead across the restart) is
replaced once the GCS is back, and the requests it had or was sent are answered by the replacement.

Its own cluster (this module's): a private `redis-server` (Debian's, installed by `scripts/redis.sh`; the tests
are skipped without one), a CPU head whose GCS stores its tables there (and hosts the cold expert), and one `l4`
node, with the other modules' fast health checks.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import signal
import subprocess
import threading
import time

import openai
import pytest

from switchboard.config import parse_config
from switchboard.gateway.app import build_app
from switchboard.testing.fleet_view import fleet_view, replicas_of, wait_for
from switchboard.testing.servers import free_port, serve_in_thread

from .conftest import FAST_HEALTH_CHECKS, NODE_ARGS
from .test_ray_restart import num_completed, replica_actor

pytestmark = [pytest.mark.ray]

FULL_SERVICE_WITHIN_S = 15.0
OUTAGE_MIN_REQUESTS = 30
OUTAGE_MIN_S = 3.0
"""The GCS is started again once it was away this long and this many warm requests were sent meanwhile."""
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def redis_address(tmp_path_factory):
    """host:port of a private Redis for this module's GCS (stopped at the end)."""
    binary = os.environ.get("SWITCHBOARD_TEST_REDIS_SERVER") or shutil.which("redis-server")
    if binary is None:
        pytest.skip("no redis-server (scripts/redis.sh installs it; `make test` runs it)")
    workdir = tmp_path_factory.mktemp("redis")
    # A port free_port() found free may be taken before redis-server binds it (Ray's processes open ports all the
    # time): redis-server then exits, and another port is tried; a PONG says it is this Redis that listens.
    for _ in range(5):
        port = free_port()
        process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                    "--dir", str(workdir)], stdout=subprocess.DEVNULL)
        wait_for(lambda: process.poll() is not None or _pongs(port), 30, "redis-server to listen or exit")
        if process.poll() is None:
            break
    else:
        pytest.fail("redis-server could not bind a free port in 5 tries")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def _pongs(port: int) -> bool:
    """Whether a Redis answers PING on `port`."""
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="module")
def gcs_cluster(redis_address):
    """(cluster, address) of a head whose GCS keeps its tables in `redis_address`, and one `l4` node."""
    import ray
    from ray.cluster_utils import Cluster

    # Ray reads it when each node starts (`ray._private.node.Node`); the driver and the gateway need it not.
    # The other modules' fast health checks, as a GCS-FT user may tune them: a check fails on a refused
    # connection or after `health_check_timeout_ms` (10 s, unchanged), so a raylet slow to answer the restarted
    # GCS on a loaded machine is not taken for dead (docs/ray.md, "A head that survives its GCS"). Raylets and
    # workers wait this long for the GCS to come back before they exit.
    os.environ["RAY_REDIS_ADDRESS"] = redis_address
    try:
        cluster = Cluster(initialize_head=True, head_node_args={
            **NODE_ARGS, "resources": {"switchboard/hw:cpu": 1},
            "_system_config": {**FAST_HEALTH_CHECKS, "gcs_rpc_server_reconnect_timeout_s": 120}})
        cluster.add_node(**NODE_ARGS, resources={"switchboard/hw:l4": 1}, labels={"switchboard/worker-id": "l4-a"})
    finally:
        del os.environ["RAY_REDIS_ADDRESS"]
    try:
        ray.init(address=cluster.address, namespace="switchboard-test-gcs", include_dashboard=False, log_to_driver=False)
        yield cluster, cluster.address
    finally:
        ray.shutdown()
        cluster.shutdown()


def gcs_config(address: str):
    return parse_config(f"""
cluster: {{kind: ray, address: "{address}", namespace: switchboard-test-gcs, inventory_interval_s: 0.5}}
experts:
  - id: warm-l4
    backend: {{kind: simulated, hardware: l4, time_scale: 0.05, default_output_tokens: 4}}
    params_b: 1
    warm_at_start: true
  - id: cold-cpu
    backend: {{kind: simulated, hardware: cpu, time_scale: 0.05, default_output_tokens: 4}}
    params_b: 1
    warm_at_start: false
router: {{enabled: false}}
storage: {{enabled: false}}
control_plane: {{step_interval_s: 0.5, startup_wait_s: 60}}
""")


def gateway_client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)


def warm_replica(client: openai.OpenAI) -> str:
    """The id of the replica that answers a warm-l4 request (the expert starts warm)."""
    return client.chat.completions.with_raw_response.create(
        model="warm-l4", messages=MESSAGES, max_tokens=2).headers["x-switchboard-replica"]


def keep_sending(url: str, outcomes: list[tuple[float, str]], stop: threading.Event) -> None:
    """Sends warm-l4 requests one after another until `stop`, appending (sent at, "ok on <replica>" or
    "error: ...") to `outcomes`."""
    client = gateway_client(url)
    while not stop.is_set():
        sent_at = time.monotonic()
        try:
            answer = client.chat.completions.with_raw_response.create(model="warm-l4", messages=MESSAGES, max_tokens=4)
            outcomes.append((sent_at, "ok on " + answer.headers["x-switchboard-replica"]))
        except openai.APIError as exc:
            outcomes.append((sent_at, f"error: {exc.message}"))


def test_warm_requests_outlive_the_gcs_and_full_service_returns_after_it(gcs_cluster):
    from ray.experimental import internal_kv

    from switchboard.cluster.ray_checkpoint import KV_NAMESPACE
    from switchboard.cluster.ray_control import stop_control_actor

    cluster, address = gcs_cluster
    config = gcs_config(address)
    try:
        with serve_in_thread(build_app(config), startup_timeout_s=120) as url:
            client = gateway_client(url)
            warm_id = warm_replica(client)
            completed_before = num_completed(warm_id, config)
            # The control actor's checkpoints live in the GCS's key-value store: in Redis, so kept across a restart.
            internal_kv._internal_kv_put("test/sentinel", b"kept", namespace=KV_NAMESPACE)
            outcomes: list[tuple[float, str]] = []  # (sent at, "ok on <replica>" or "error: ...")
            stop = threading.Event()
            with concurrent.futures.ThreadPoolExecutor(3) as pool:
                senders = [pool.submit(keep_sending, url, outcomes, stop) for _ in range(3)]
                try:
                    wait_for(lambda: len(outcomes) >= 10, 60, "requests flowing before the GCS dies")
                    killed_at = time.monotonic()
                    cluster.head_node.kill_gcs_server()
                    wait_for(lambda: time.monotonic() - killed_at >= OUTAGE_MIN_S and len(
                        [o for o in outcomes if o[0] > killed_at]) >= OUTAGE_MIN_REQUESTS, 60, "warm requests while the GCS is away")
                    restarted_at = time.monotonic()
                    cluster.head_node.start_gcs_server()
                    back_at = time.monotonic()
                    # Full service: a request that needs a replica started, sent as soon as the GCS is back.
                    cold = client.chat.completions.create(model="cold-cpu", messages=MESSAGES, max_tokens=3)
                    cold_at = time.monotonic()
                    wait_for(lambda: len([o for o in outcomes if o[0] > cold_at]) >= 10, 60, "warm requests after the GCS is back")
                finally:
                    stop.set()
                for sender in senders:
                    sender.result(timeout=120)  # none hangs

            during = [o for o in outcomes if killed_at <= o[0] <= restarted_at]
            ok_during = [o for o in during if o[1].startswith("ok")]
            assert len(ok_during) >= 0.9 * len(during), [o[1] for o in during if not o[1].startswith("ok")]
            # None lost or answered twice: the replica answered exactly the requests answered ok, each once.
            num_ok = sum(o[1].startswith("ok") for o in outcomes)
            assert all(o[1] == f"ok on {warm_id}" for o in outcomes if o[1].startswith("ok"))
            assert num_completed(warm_id, config) - completed_before == num_ok
            assert internal_kv._internal_kv_get("test/sentinel", namespace=KV_NAMESPACE) == b"kept"
            assert cold.choices[0].message.content == "[simulated cold-cpu: 3 tokens]"
            print(f"GCS away {restarted_at - killed_at:.1f} s ({len(during)} warm requests, {len(ok_during)} ok); "
                  f"restarted in {back_at - restarted_at:.1f} s; cold start answered {cold_at - back_at:.1f} s after")
            assert cold_at - back_at <= FULL_SERVICE_WITHIN_S, f"full service {cold_at - back_at:.1f} s after the GCS is back"
    finally:
        stop_control_actor(config.cluster)


def test_a_replica_whose_actor_dies_while_the_gcs_is_away_is_replaced_and_no_request_is_lost(gcs_cluster):
    """The warm replica's actor process is killed while the GCS is away (as a node marked dead across a GCS
    restart takes its actors): requests keep getting answered — those it was running or was sent are retried on
    its replacement, which the control plane starts as soon as the GCS is back."""
    import ray

    from switchboard.cluster.ray_control import stop_control_actor

    cluster, address = gcs_cluster
    config = gcs_config(address)
    try:
        with serve_in_thread(build_app(config), startup_timeout_s=120) as url:
            warm_id = warm_replica(gateway_client(url))
            actor = replica_actor(warm_id, config)
            pid = ray.get(actor.__ray_call__.remote(lambda self: os.getpid()), timeout=60)
            outcomes: list[tuple[float, str]] = []
            stop = threading.Event()
            with concurrent.futures.ThreadPoolExecutor(3) as pool:
                senders = [pool.submit(keep_sending, url, outcomes, stop) for _ in range(3)]
                try:
                    wait_for(lambda: len(outcomes) >= 10, 60, "requests flowing before the GCS dies")
                    killed_at = time.monotonic()
                    cluster.head_node.kill_gcs_server()
                    wait_for(lambda: len([o for o in outcomes if o[0] > killed_at]) >= 10, 60, "warm requests while the GCS is away")
                    os.kill(pid, signal.SIGKILL)
                    replica_killed_at = time.monotonic()
                    wait_for(lambda: warm_id not in {r["replica_id"] for r in replicas_of(fleet_view(url), "warm-l4")}, 60,
                             "the gateway to see the replica lost while the GCS is away")
                    wait_for(lambda: time.monotonic() - killed_at >= OUTAGE_MIN_S, 60, "the outage to last")
                    cluster.head_node.start_gcs_server()
                    back_at = time.monotonic()
                    wait_for(lambda: [o for o in outcomes if o[0] > back_at and o[1].startswith("ok")], 60,
                             "a request answered after the GCS is back")
                    answered_at = time.monotonic()
                    wait_for(lambda: len([o for o in outcomes if o[0] > answered_at]) >= 10, 60, "warm requests after that")
                finally:
                    stop.set()
                for sender in senders:
                    sender.result(timeout=180)  # none hangs

            failed = [o for o in outcomes if not o[1].startswith("ok")]
            assert not failed, failed
            replacements = {o[1][len("ok on "):] for o in outcomes} - {warm_id}
            assert len(replacements) == 1, replacements
            (replacement,) = replacements
            assert all(o[1] == f"ok on {warm_id}" for o in outcomes if o[0] < killed_at)
            # None answered twice: the replacement answered exactly the requests it was credited with.
            assert num_completed(replacement, config) == sum(o[1] == f"ok on {replacement}" for o in outcomes)
            print(f"replica killed {replica_killed_at - killed_at:.1f} s into a {back_at - killed_at:.1f} s GCS outage; "
                  f"first answer by its replacement {answered_at - back_at:.1f} s after the GCS was back; "
                  f"{len(outcomes)} requests, all answered")
    finally:
        stop_control_actor(config.cluster)
