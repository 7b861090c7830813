"""llama.cpp's real OpenAI server (`python -m llama_cpp.server`) as a `process` replica behind the gateway,
configured by examples/engines/llamacpp-server.yaml: scale from zero (the answer says it was a cold start),
a streamed answer, a Responses conversation continued by its id, a crash (SIGKILL, as the OOM killer would) detected and replaced by a fresh process, then
scale to zero; every request is in the request log exactly once."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

import httpx
import openai
import pytest
import yaml
from sqlalchemy import create_engine, select

from switchboard.config import parse_config
from switchboard.engines.llamacpp.paths import default_model_path
from switchboard.gateway.app import build_app
from switchboard.storage.models import requests_table
from switchboard.testing.servers import serve_in_thread

pytestmark = pytest.mark.llamacpp

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "engines" / "llamacpp-server.yaml"


def _config_text(tmp_path: Path) -> str:
    config = yaml.safe_load(EXAMPLE.read_text())
    backend = config["experts"][0]["backend"]
    backend["model_path"] = str(default_model_path())
    backend["log_dir"] = str(tmp_path / "logs")
    config["control_plane"] = {"step_interval_s": 0.2, "policies": {
        "keepalive": {"kind": "fixed", "idle_timeout_s": 3}, "prewarm": {"kind": "none"},
        "autoscale": {"min_replicas": 0, "max_replicas": 1, "downscale_delay_s": 0}}}
    config["storage"] = {"url": f"sqlite:///{tmp_path}/requests.db", "flush_interval_s": 0.05}
    return yaml.safe_dump(config)


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for: {what}"
        time.sleep(0.05)


def _running(fleet) -> list:
    return [r for r in fleet.live.values() if getattr(r.engine, "is_running", False)]


def test_llamacpp_server_from_zero_through_a_crash_and_back_to_zero(tmp_path):
    app = build_app(parse_config(_config_text(tmp_path)))
    sent: list[str] = []
    with serve_in_thread(app, startup_timeout_s=180) as url:
        fleet = app.state.gateway.fleet
        http = httpx.Client(timeout=180, event_hooks={"response": [
            lambda r: sent.append(r.headers["x-request-id"]) if "x-request-id" in r.headers else None]})
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, http_client=http)
        assert not fleet.live  # scaled to zero before the first request

        raw = client.chat.completions.with_raw_response.create(
            model="smollm2-server", messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=8, temperature=0)
        assert raw.headers["x-switchboard-cold-start"] == "true"
        answer = raw.parse()
        assert answer.choices[0].message.content.strip() and 0 < answer.usage.completion_tokens <= 8
        first = _running(fleet)[0]
        assert first.engine.log_path.parent == tmp_path / "logs" and first.engine.log_path.stat().st_size > 0

        chunks = list(client.chat.completions.create(
            model="smollm2-server", messages=[{"role": "user", "content": "Say hello."}], max_tokens=6, stream=True,
            stream_options={"include_usage": True}))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()

        # The Responses API on the real server: a stored turn, continued (the server gets the whole history, its
        # messages as plain strings, which this server needs: it answers text parts with its own 500).
        turn = client.responses.create(model="smollm2-server", input=[{"role": "user", "content": [{"type": "input_text", "text": "My name is Ada."}]}],
                                       max_output_tokens=8, temperature=0)
        follow_up = client.responses.create(model="smollm2-server", previous_response_id=turn.id, input="What is my name?", max_output_tokens=8,
                                            temperature=0)
        assert turn.store and turn.output_text.strip() and follow_up.output_text.strip()
        assert follow_up.usage.input_tokens > turn.usage.input_tokens + turn.usage.output_tokens  # the history went with it

        pid = first.engine.process.pid
        os.kill(pid, signal.SIGKILL)
        _wait_for(lambda: first.replica_id not in fleet.live, 15, "the health check to stop the dead replica")
        raw = client.completions.with_raw_response.create(model="smollm2-server", prompt="The sky is", max_tokens=4)
        assert raw.headers["x-switchboard-cold-start"] == "true"
        assert raw.headers["x-switchboard-replica"] != first.replica_id and raw.parse().choices[0].text
        replacement = _running(fleet)[0]
        assert replacement.engine.process.pid != pid

        _wait_for(lambda: not fleet.live, 30, "scale to zero after the idle window")
        process = replacement.engine.process
        assert process is None or process.returncode is not None
        decisions = httpx.get(url + "/admin/fleet").json()["decisions"]
        assert any(d["code"] == "engine-lost" for d in decisions), decisions
        http.close()
    engine = create_engine(f"sqlite:///{tmp_path}/requests.db")
    with engine.connect() as connection:
        counts = Counter(r.id for r in connection.execute(select(requests_table.c.id)))
    engine.dispose()
    assert len(sent) == 5 and all(counts[i] == 1 for i in sent), {i: counts[i] for i in sent}
