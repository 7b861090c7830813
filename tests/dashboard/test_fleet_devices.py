"""`GET /admin/fleet` shows the device assignment: per worker one cell per declared device (free, or held by a
replica in its state, or `asleep` where a sleeping replica would wake) and per replica its device indices, as
placement books them for simulated GPU experts and for a `process` server that sleeps."""

from __future__ import annotations

import sys

import httpx

from switchboard.config import parse_config
from switchboard.gateway.app import build_app
from switchboard.testing.fleet_view import fleet_view, wait_for
from switchboard.testing.servers import serve_in_thread

# `resident` (8B on H100: one device) stays warm; `wide` (49B on H100: tensor-parallel 2) starts on demand and
# stops 2 s after its last request. The L4 box has devices too; the CPU worker declares none.
SIMULATED = """
workers:
  - {id: h100-box, hardware: h100, memory_gb: 320, usd_per_hour: 16.0, devices: [0, 1, 2, 3]}
  - {id: l4-box, hardware: l4, memory_gb: 24, usd_per_hour: 0.8, devices: [7]}
  - {id: cpu, hardware: cpu, memory_gb: 16}
experts:
  - {id: resident, backend: {kind: simulated, hardware: h100, time_scale: 0}, params_b: 8}
  - {id: wide, backend: {kind: simulated, hardware: h100, time_scale: 0}, params_b: 49, warm_at_start: false, ttft_slo_s: 60}
control_plane:
  step_interval_s: 0.1
  policies:
    keepalive: {kind: fixed, idle_timeout_s: 2}
    autoscale: {min_replicas: 0, max_replicas: 1, downscale_delay_s: 0, min_replicas_by_expert: {resident: 1}}
    prewarm: {kind: none}
storage: {enabled: false}
"""


def cells(view: dict, worker_id: str) -> list[tuple[int, str, str | None]]:
    worker = next(w for w in view["workers"] if w["worker_id"] == worker_id)
    return [(c["index"], c["state"], c["expert"]) for c in worker["devices"]]


def test_devices_show_who_holds_them_and_free_again_when_the_replica_stops():
    with serve_in_thread(build_app(parse_config(SIMULATED))) as url:
        view = wait_for(lambda: (v := fleet_view(url)) and cells(v, "h100-box")[0][1] == "warm" and v, 20, "resident warm")
        assert cells(view, "h100-box") == [(0, "warm", "resident"), (1, "free", None), (2, "free", None), (3, "free", None)]
        assert cells(view, "l4-box") == [(7, "free", None)] and cells(view, "cpu") == []
        cell = next(w for w in view["workers"] if w["worker_id"] == "h100-box")["devices"][0]
        assert cell["hardware"] == "h100" and cell["replica"].startswith("resident#") and cell["asleep"] == []
        (resident,) = next(e for e in view["experts"] if e["id"] == "resident")["replicas"]
        assert resident["devices"] == [0] and resident["replica_id"] == cell["replica"]

        answer = httpx.post(url + "/v1/completions", json={"model": "wide", "prompt": "hi", "max_tokens": 2}, timeout=30)
        assert answer.status_code == 200 and answer.headers["x-switchboard-cold-start"] == "true"
        view = fleet_view(url)
        (wide,) = next(e for e in view["experts"] if e["id"] == "wide")["replicas"]
        assert wide["devices"] == [1, 2]  # the lowest free indices, as many as its tensor-parallel size
        assert [c[2] for c in cells(view, "h100-box")] == ["resident", "wide", "wide", None]

        view = wait_for(lambda: (v := fleet_view(url)) and cells(v, "h100-box")[1][1] == "free" and v, 20, "wide stopped")
        assert cells(view, "h100-box") == [(0, "warm", "resident"), (1, "free", None), (2, "free", None), (3, "free", None)]


# The fake vLLM server implements vLLM's /sleep and /wake_up; idle 2 s, the replica sleeps (keeping its server).
# The worker is of the CPU kind, whose wake time is measured live rather than modelled, so `sleep_after_s` alone
# decides when it sleeps (on a GPU kind keep-alive also weighs the modelled wake against the expected idle time).
SLEEPING = """
workers: [{{id: box, hardware: cpu, memory_gb: 160, devices: [0, 1]}}]
experts:
  - id: vllm
    backend: {{kind: process, command: ["{python}", "-m", "switchboard.testing.fake_vllm", "--port", "{{port}}", "--model", "{{model}}"],
              model: fake-8b, sleep: [POST, "/sleep?level=1"], wake: [POST, /wake_up], cold_start_s: 2, log_dir: "{logs}"}}
    params_b: 0.135
    warm_at_start: false
    ttft_slo_s: 30
control_plane:
  step_interval_s: 0.1
  policies:
    keepalive: {{kind: fixed, idle_timeout_s: 600, sleep_after_s: 2, asleep_keepalive_s: 30}}
    autoscale: {{min_replicas: 0, max_replicas: 1, downscale_delay_s: 0}}
    prewarm: {{kind: none}}
storage: {{enabled: false}}
"""


def test_an_asleep_replica_frees_its_device_and_is_shown_where_it_would_wake(tmp_path):
    app = build_app(parse_config(SLEEPING.format(python=sys.executable, logs=tmp_path)))
    with serve_in_thread(app, startup_timeout_s=60) as url:
        answer = httpx.post(url + "/v1/completions", json={"model": "vllm", "prompt": "hi", "max_tokens": 2}, timeout=60)
        assert answer.status_code == 200
        assert cells(fleet_view(url), "box") == [(0, "warm", "vllm"), (1, "free", None)]

        view = wait_for(lambda: (v := fleet_view(url)) and cells(v, "box")[0][1] == "asleep" and v, 20, "vllm asleep")
        cell = next(w for w in view["workers"] if w["worker_id"] == "box")["devices"][0]
        (asleep,) = next(e for e in view["experts"] if e["id"] == "vllm")["asleep"]
        assert cell["replica"] == asleep["replica"] and cell["asleep"] == [asleep["replica"]] and asleep["devices"] == [0]
        assert next(e for e in view["experts"] if e["id"] == "vllm")["replicas"] == []

        woken = httpx.post(url + "/v1/completions", json={"model": "vllm", "prompt": "hi", "max_tokens": 2}, timeout=60)
        assert woken.status_code == 200 and app.state.gateway.fleet.counters["wakes"] == 1
        assert cells(fleet_view(url), "box") == [(0, "warm", "vllm"), (1, "free", None)]  # woken on its own device
