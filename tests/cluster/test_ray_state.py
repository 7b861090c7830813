"""What the control actor knew survives its restart (docs/ray.md, "What survives a restart"; issue 17): kill the
actor, then the node holding it, under keyed load from three gateways, and check that the restarted actor has
the keep-alive histograms from before (compared as state) and that one key's rpm and another's USD budget hold
across the restart. Its own cluster (this module's): a CPU head, two `l4` nodes, two nodes for the control actor."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading

import httpx
import openai
import pytest

from switchboard.config import parse_config
from switchboard.gateway import requests as rq
from switchboard.gateway.app import build_app
from switchboard.testing.fleet_view import wait_for
from switchboard.testing.servers import serve_in_thread

from .test_ray_limits import new_key

pytestmark = [pytest.mark.ray]

ADMIN_KEY = "admin-" + "z" * 40
RPM = 90
BUDGET_ESTIMATES = 12.5
"""The budget key's USD per day, in requests' estimates (each served request costs its whole estimate)."""
NUM_GATEWAYS = 3
NUM_CONCURRENT = 4  # per gateway and key
MAX_TOKENS = 8
MESSAGES = [{"role": "user", "content": "hi"}]


def state_config(address: str, db_url: str):
    # A window far longer than the test: every request counts against the same quota, however slow the machine.
    return parse_config(f"""
cluster: {{kind: ray, address: "{address}", namespace: switchboard-test-state, control_actor: switchboard-state,
           inventory_interval_s: 0.5, gateway_timeout_s: 30, control_resources: {{"switchboard/control": 0.001}}}}
experts:
  - id: metered
    backend: {{kind: simulated, hardware: l4, time_scale: 0.02, default_output_tokens: 4096}}
    params_b: 1
    warm_at_start: true
    usd_per_mtok_input: 100.0
    usd_per_mtok_output: 200.0
  - id: quiet
    backend: {{kind: simulated, hardware: l4, time_scale: 0.02, default_output_tokens: 2}}
    params_b: 1
    warm_at_start: true
router: {{enabled: false}}
storage: {{url: "{db_url}", flush_interval_s: 0.05}}
auth: {{enabled: true, refresh_interval_s: 0.1, rate_window_s: 3600}}
control_plane: {{step_interval_s: 0.2, startup_wait_s: 60}}
""")


def wait_until_known(urls: list[str], secret: str) -> None:
    """Waits until every gateway knows a new key (they read keys from the database every `refresh_interval_s`)."""
    for url in urls:
        wait_for(lambda: httpx.get(url + "/v1/models", headers={"authorization": f"Bearer {secret}"}, timeout=10).status_code != 401,
                 30, "the gateways to know a new key")


def usd_estimate(app) -> float:
    parsed, _ = rq.parse_chat(json.dumps({"model": "metered", "messages": MESSAGES}).encode())
    num_prompt_tokens = rq.estimate_tokens(rq.chat_prompt_text(parsed), len(parsed.messages))
    return app.state.tenants.usd_estimate("metered", num_prompt_tokens, MAX_TOKENS)


@pytest.fixture(scope="module")
def gateways(ray_cluster, control_nodes, tmp_path_factory):
    """(urls of three gateways sharing one control actor, config, db url, one request's USD estimate)."""
    from switchboard.cluster.ray_control import stop_control_actor

    db_url = f"sqlite:///{tmp_path_factory.mktemp('state') / 'switchboard.db'}"
    config = state_config(ray_cluster[1], db_url)
    new_key(db_url, "bootstrap")  # the schema, before the gateways read keys
    apps = [build_app(config, environ={"SWITCHBOARD_ADMIN_KEY": ADMIN_KEY}) for _ in range(NUM_GATEWAYS)]
    try:
        with contextlib.ExitStack() as stack:
            urls = [stack.enter_context(serve_in_thread(app, startup_timeout_s=120)) for app in apps]
            yield urls, config, db_url, usd_estimate(apps[0])
    finally:
        stop_control_actor(config.cluster)


def control_actor(config):
    import ray

    return ray.get_actor(config.cluster.control_actor, namespace=config.cluster.namespace)


def ask(config, method: str, *args):
    """Calls the control actor; while Ray restarts it, asks again."""
    import ray
    from ray.exceptions import ActorUnavailableError

    return wait_for(lambda: _answer_or_none(lambda: ray.get(getattr(control_actor(config), method).remote(*args), timeout=60),
                                            ActorUnavailableError), 60, f"the control actor to answer {method}")[0]


def _answer_or_none(call, unavailable: type[Exception]):
    try:
        return (call(),)
    except unavailable:
        return None


class Load:
    """Requests of two keys (one limited by rpm, one by a USD budget) through every gateway at once, from a thread
    of its own, until `stopping` is set; `outcomes[key]` lists each answer's status (200 or the refusal's)."""

    def __init__(self, urls: list[str], secrets: dict[str, str]) -> None:
        self.urls, self.secrets = urls, secrets
        self.outcomes: dict[str, list[int]] = {name: [] for name in secrets}
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def count(self, name: str, status: int) -> int:
        return sum(s == status for s in self.outcomes[name])

    async def _run(self) -> None:
        async def keep_sending(url: str, name: str) -> None:
            async with openai.AsyncOpenAI(base_url=url + "/v1", api_key=self.secrets[name], max_retries=0, timeout=120) as client:
                while not self.stopping.is_set():
                    try:
                        await client.chat.completions.create(model="metered", messages=MESSAGES, max_tokens=MAX_TOKENS)
                        self.outcomes[name].append(200)
                    except openai.APIStatusError as exc:
                        self.outcomes[name].append(exc.status_code)
                        await asyncio.sleep(0.02)  # refused: no need to spin

        await asyncio.gather(*(keep_sending(url, name) for url in self.urls for name in self.secrets
                               for _ in range(NUM_CONCURRENT)))


def idle_gaps(url: str, secret: str, config, expert_id: str, num_gaps: int) -> None:
    """Gives `expert_id` `num_gaps` idle gaps (requests one after another, through the gateway at `url`), and
    waits until its keep-alive histogram has them."""
    client = openai.OpenAI(base_url=url + "/v1", api_key=secret, max_retries=0, timeout=60)
    before = sum(ask(config, "keepalive_histograms").get(expert_id, (0, (), 0))[1])

    def num_served() -> int:
        expert = next(e for e in ask(config, "snapshot")["experts"] if e["id"] == expert_id)
        return sum(r["num_served"] for r in expert["replicas"])

    for _ in range(num_gaps + 1):
        served = num_served()
        client.chat.completions.create(model=expert_id, messages=MESSAGES, max_tokens=2)
        # Counted by the control actor before the next is sent: a gateway reports its requests in batches, and
        # requests in one batch count as overlapping (no idle gap between them).
        wait_for(lambda: num_served() > served, 30, f"the control actor to count a request to {expert_id}")
    wait_for(lambda: sum(ask(config, "keepalive_histograms")[expert_id][1]) >= before + num_gaps, 30,
             f"{expert_id}'s histogram to count its idle gaps")


@pytest.mark.parametrize("kill", ["actor", "node"])
def test_the_restarted_control_actor_keeps_histograms_rpm_and_budget(ray_cluster, control_nodes, gateways, kill):
    import ray

    cluster, _ = ray_cluster
    urls, config, db_url, estimate = gateways
    rpm_id, rpm_secret = new_key(db_url, f"rpm-{kill}", rpm=RPM)
    secrets = {"rpm": rpm_secret,
               "budget": new_key(db_url, f"budget-{kill}", usd_per_day=BUDGET_ESTIMATES * estimate)[1]}
    gaps_secret = new_key(db_url, f"gaps-{kill}")[1]
    for secret in (*secrets.values(), gaps_secret):
        wait_until_known(urls, secret)
    idle_gaps(urls[0], gaps_secret, config, "quiet", 3)
    wait_for(lambda: ask(config, "checkpoint_status")[1], 30, "the checkpoint to hold the histograms")
    histograms = ask(config, "keepalive_histograms")
    incarnation = ask(config, "snapshot")["version"][0]

    load = Load(urls, secrets)
    load.thread.start()
    try:
        # Killed mid-minute, mid-budget: what the dead actor counted must still count.
        wait_for(lambda: load.count("rpm", 200) >= RPM // 3 and load.count("budget", 200) >= BUDGET_ESTIMATES // 3, 60,
                 "half the quotas used")
        if kill == "actor":
            ray.kill(control_actor(config), no_restart=False)
        else:
            node_id = ask(config, "node_id")
            (node,) = [n for n in control_nodes if n.node_id == node_id]
            cluster.remove_node(node, allow_graceful=False)
        wait_for(lambda: ask(config, "snapshot")["version"][0] != incarnation, 60, "Ray to restart the control actor")
        # Every gateway exhausts both keys against the restarted actor.
        num_refused_at_restart = {name: len(load.outcomes[name]) - load.count(name, 200) for name in secrets}
        wait_for(lambda: all(len(load.outcomes[n]) - load.count(n, 200) >= num_refused_at_restart[n] + 4 * NUM_GATEWAYS * NUM_CONCURRENT
                             for n in secrets), 60, "both keys refused through every gateway after the restart")
    finally:
        load.stopping.set()
        load.thread.join(timeout=120)
    assert not load.thread.is_alive()

    is_restored, _ = ask(config, "checkpoint_status")
    assert is_restored
    # (a) The keep-alive policy's learned state is the one from before (the quiet expert had no traffic since).
    assert ask(config, "keepalive_histograms")["quiet"] == histograms["quiet"]
    # (b) One count across the restart: never more than the key's rpm in its window, and not much less.
    granted = load.count("rpm", 200)
    refused = {s for s in load.outcomes["rpm"] if s != 200}
    assert refused <= {429, 503}, refused  # 503: a request that needed the actor while it was away
    assert 0.9 * RPM <= granted <= RPM, (granted, ask(config, "key_usage", rpm_id))
    # (c) The budget: never over by more than one request's estimate per gateway.
    served = load.count("budget", 200)
    print(f"kill {kill}: rpm {RPM} granted {granted}; budget of {BUDGET_ESTIMATES} estimates served {served}")
    assert {s for s in load.outcomes["budget"] if s != 200} <= {402, 503}
    assert BUDGET_ESTIMATES - NUM_GATEWAYS <= served <= BUDGET_ESTIMATES + NUM_GATEWAYS, served
