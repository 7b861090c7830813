"""`process` experts (an OpenAI-compatible server the control plane runs) get the client's request whole, as
`openai` experts do: the gateway neither refuses fields its local engines cannot do (n, logprobs, tools,
unknown ones) nor makes `n` choices itself — the server answers them. Driven by the official openai client
against the fake vLLM server, which shows the last request it received at /stats."""

from __future__ import annotations

import sys

import httpx
import openai

from switchboard.config import parse_config
from switchboard.gateway.app import build_app
from switchboard.testing.servers import serve_in_thread

CONFIG = """
experts:
  - id: vllm
    backend: {{kind: process, command: ["{python}", "-m", "switchboard.testing.fake_vllm", "--port", "{{port}}", "--model", "{{model}}"],
              model: fake-8b, cold_start_s: 2, log_dir: "{logs}"}}
    params_b: 0.135
    ttft_slo_s: 30
  - id: local
    backend: {{kind: simulated}}
    params_b: 0.135
workers: [{{id: local, hardware: cpu, memory_gb: 16}}]
"""

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]


def test_process_expert_receives_every_field_and_makes_its_own_choices(tmp_path):
    config = parse_config(CONFIG.format(python=sys.executable, logs=tmp_path / "logs"))
    app = build_app(config)
    with serve_in_thread(app, startup_timeout_s=60) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        fields = {"n": 2, "logprobs": True, "top_logprobs": 2, "tools": TOOLS, "tool_choice": "auto",
                  "response_format": {"type": "json_object"}, "seed": 7}
        answer = client.chat.completions.create(model="vllm", messages=[{"role": "user", "content": "hi"}], max_tokens=3,
                                                extra_body={"vllm_only_field": {"x": 1}}, **fields)
        assert answer.model == "vllm"
        engine = next(r.engine for r in app.state.gateway.fleet.live.values() if r.expert.id == "vllm")
        received = httpx.get(f"http://127.0.0.1:{engine.port}/stats", timeout=10).json()["last_request"]
        assert {name: received[name] for name in fields} == fields
        assert received["vllm_only_field"] == {"x": 1} and received["model"] == "fake-8b"
        assert received["n"] == 2  # one request with n, not two requests the gateway made itself

        # The same fields on a local engine: a clear 400 naming one, as before.
        try:
            client.chat.completions.create(model="local", messages=[{"role": "user", "content": "hi"}], max_tokens=3, tools=TOOLS)
        except openai.BadRequestError as exc:
            assert exc.body["param"] == "tools"
        else:
            raise AssertionError("a simulated expert took tools")
