"""`GET /admin/fleet` shows the device assignment: per worker one cell per declared device (free, or held by a
replica in its state, or `asleep` where a sleeping replica keeps it) and per replica its device indices, as
placement books them for simulated GPU experts and for a `process` server that sleeps."""

from __future__ import annotations

import sys

import httpx

from switchboard.config import parse_config
from switchboard.gateway.app import build_app
from switchboard.testing.fleet_view import fleet_view, wait_for
from switchboard.testing.servers import serve_in_thread

from .conftest import SIMULATED, SLEEPING


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


def test_an_asleep_replica_keeps_its_device_and_wakes_on_it(tmp_path):
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
