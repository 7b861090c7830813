"""Accelerators as placement resources: a worker's declared devices go to `process` replicas whole (the
perf model's tensor-parallel size), as CUDA_VISIBLE_DEVICES, and never to two replicas at once."""

from __future__ import annotations

import asyncio
import sys
import time

import httpx
import pytest

from switchboard.config import parse_config
from switchboard.gateway.app import build_app
from switchboard.runtime.devices import DeviceBook, DevicesBusy
from switchboard.testing.servers import serve_in_thread


def test_the_book_never_double_books_and_frees_on_release():
    book = DeviceBook({"gpu": [0, 1, 2, 3], "cpu": []})
    assert book.assign("big#1", "gpu", 3) == (0, 1, 2) and book.assign("cpu#1", "cpu", 1) == ()
    with pytest.raises(DevicesBusy, match=r"1 free of devices \[0, 1, 2, 3\].*big#1 holds \[0, 1, 2\]"):
        book.assign("other#1", "gpu", 2)
    assert book.assign("small#1", "gpu", 1) == (3,)
    book.release("big#1")
    with pytest.raises(DevicesBusy):
        book.assign("woken#2", "gpu", 1, exactly=(3,))  # an asleep replica wakes only on its own devices
    assert book.assign("woken#2", "gpu", 2, exactly=(1, 2)) == (1, 2) and book.free("gpu") == (0,)


CONFIG = """
workers: [{{id: box, hardware: h100, memory_gb: 2000, usd_per_hour: 31.4, devices: [0, 1, 2, 3]}}]
experts:
  - id: big
    backend: {{kind: process, command: ["{python}", "-m", "switchboard.testing.fake_vllm", "--port", "{{port}}", "--model", "{{model}}"],
              cold_start_s: 2, log_dir: "{logs}"}}
    params_b: 70
  - id: small
    backend: {{kind: process, command: ["{python}", "-m", "switchboard.testing.fake_vllm", "--port", "{{port}}", "--model", "{{model}}"],
              cold_start_s: 2, log_dir: "{logs}"}}
    params_b: 8
control_plane: {{step_interval_s: 0.1, policies: {{prewarm: {{kind: none}}}}}}
storage: {{enabled: false}}
"""


def test_replicas_get_whole_devices_and_a_start_without_free_ones_evicts_an_idle_replica_first(tmp_path):
    app = build_app(parse_config(CONFIG.format(python=sys.executable, logs=tmp_path)))
    with serve_in_thread(app, startup_timeout_s=60) as url:
        deadline = time.monotonic() + 30
        while True:
            view = httpx.get(url + "/admin/fleet").json()
            replicas = {e["id"]: e["replicas"] for e in view["experts"]}
            if [r["state"] for r in replicas["big"]] == ["warm"]:
                break
            assert time.monotonic() < deadline, view
            time.sleep(0.1)
        assert replicas["big"][0]["devices"] == [0, 1, 2, 3]  # 70B on H100: tensor-parallel 4
        engine = next(r.engine for r in app.state.gateway.fleet.live.values() if r.expert.id == "big")
        assert httpx.get(f"http://127.0.0.1:{engine.port}/stats").json()["cuda_visible_devices"] == "0,1,2,3"
        # `small` fits the box's memory but none of its devices is free: placement does not start it on busy
        # devices (a start that would fail); its waiting request evicts the idle `big` first, then it takes a device.
        answer = httpx.post(url + "/v1/completions", json={"model": "small", "prompt": "hi", "max_tokens": 2}, timeout=30)
        assert answer.status_code == 200
        view = httpx.get(url + "/admin/fleet").json()
        replicas = {e["id"]: e["replicas"] for e in view["experts"]}
        assert replicas["big"] == [] and [r["devices"] for r in replicas["small"]] == [[0]]
        codes = [(d["action"], d["code"]) for d in view["decisions"]]
        assert ("StopReplica", "evicted-for-memory") in codes and not [c for c in codes if c[1] == "start-failed"]


# Simulated GPU engines on a box with plenty of memory: only its devices can run out. On an H100 an 8B expert takes
# one device and a 49B one two. Idle replicas are not evicted for a start here, so a refusal shows the devices.
SIMULATED_BOX = """
workers: [{id: box, hardware: h100, memory_gb: 2000, usd_per_hour: 8, devices: [0, 1]}]
experts:
  - {id: one, backend: {kind: simulated, hardware: h100, time_scale: 0}, params_b: 8}
  - {id: wide, backend: {kind: simulated, hardware: h100, time_scale: 0}, params_b: 49, warm_at_start: false, ttft_slo_s: 60}
control_plane:
  step_interval_s: 0.1
  policies: {evict_idle_for_memory: false, prewarm: {kind: none}, autoscale: {min_replicas_by_expert: {one: 1}}}
storage: {enabled: false}
"""


def test_a_two_device_replica_is_not_placed_on_a_worker_with_one_device_free():
    from switchboard.testing.fleet_view import fleet_view, replicas_of, wait_for

    app = build_app(parse_config(SIMULATED_BOX))
    with serve_in_thread(app) as url:
        view = wait_for(lambda: (v := fleet_view(url)) and replicas_of(v, "one") and v, 20, "one warm")
        assert replicas_of(view, "one")[0]["devices"] == [0]
        answer = httpx.post(url + "/v1/completions", json={"model": "wide", "prompt": "hi", "max_tokens": 2}, timeout=30)
        assert answer.status_code == 503 and "no worker can host a replica now" in answer.text  # admission sees it
        view = fleet_view(url)
        assert next(e for e in view["experts"] if e["id"] == "wide")["replicas"] == []
        (box,) = view["workers"]
        assert [(c["index"], c["state"], c["expert"]) for c in box["devices"]] == [(0, "warm", "one"), (1, "free", None)]
        assert box["num_devices"] == 2 and app.state.gateway.fleet.counters["cold_starts"] == 1


BURST = """
workers: [{id: box, hardware: h100, memory_gb: 2000, usd_per_hour: 8, devices: [0, 1, 2, 3]}]
experts:
EXPERTS
control_plane:
  step_interval_s: 0.1
  policies: {evict_idle_for_memory: false, prewarm: {kind: none}}
storage: {enabled: false}
"""


def test_a_burst_of_starts_never_double_books_a_device():
    """Requests for six experts at once (eight devices' worth on a four-device box): the starts that fit get
    disjoint devices, the rest are refused by placement — none is started on a busy device (no failed start)."""
    from switchboard.testing.fleet_view import fleet_view

    experts = [(f"e{i}", 8) for i in range(4)] + [("w0", 49), ("w1", 49)]
    lines = "\n".join(f"  - {{id: {e}, backend: {{kind: simulated, hardware: h100, time_scale: 0.05}}, params_b: {p}, "
                      f"warm_at_start: false, ttft_slo_s: 60}}" for e, p in experts)
    app = build_app(parse_config(BURST.replace("EXPERTS", lines)))
    with serve_in_thread(app) as url:
        async def burst():
            async with httpx.AsyncClient(timeout=60) as client:
                return await asyncio.gather(*(client.post(url + "/v1/completions", json={
                    "model": e, "prompt": "hi", "max_tokens": 2}) for e, _ in experts for _ in range(2)))

        answers = asyncio.run(burst())
        assert {a.status_code for a in answers} <= {200, 503} and 200 in {a.status_code for a in answers}
        assert all("no worker can host a replica now" in a.text for a in answers if a.status_code == 503)
        view = fleet_view(url)
        held = [d for e in view["experts"] for r in e["replicas"] for d in r["devices"]]
        assert len(held) == len(set(held)) and set(held) <= {0, 1, 2, 3}
        assert not [d for d in view["decisions"] if d["code"] == "start-failed"]
        served = {e for a, (e, _) in zip(answers, [x for x in experts for _ in range(2)]) if a.status_code == 200}
        assert sum(2 if e.startswith("w") else 1 for e in served) <= 4
