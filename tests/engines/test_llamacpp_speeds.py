"""The llama.cpp worker times its answers (llama.cpp's `timings`) and the embedded fleet measures the expert's
speed by them (runtime/speeds.py): its estimate and its replicas' capacity take the measured rates in place of
the roofline's guess. Real worker, real gateway, the official openai client as the caller."""

from __future__ import annotations

import time

import openai
import pytest

from switchboard.config import parse_config
from switchboard.gateway.app import build_app
from switchboard.testing.servers import serve_in_thread

pytestmark = pytest.mark.llamacpp

CONFIG = """
experts:
  - id: smol
    params_b: 0.135
    backend: {kind: llamacpp, n_threads: 1}
    context_tokens: 1024
    warm_at_start: true
    ttft_slo_s: 300             # a loaded test machine must not turn answers into 429s
storage: {enabled: false}
"""


def test_answers_measure_the_experts_prefill_and_decode_rates():
    app = build_app(parse_config(CONFIG))
    with serve_in_thread(app, startup_timeout_s=180) as url:
        fleet = app.state.gateway.fleet
        (key,) = [k for k in fleet.model.estimates if k[0] == "smol"]
        roofline = fleet.model.estimates[key]
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
        walls = []
        for i, stream in enumerate([False, False, True]):
            # A different prompt each time, so most of it is evaluated afresh (not served from the KV cache).
            messages = [{"role": "user", "content": f"Question {i}: name {i + 3} animals that live in cold places, and say why."}]
            started = time.perf_counter()
            answer = client.chat.completions.create(model="smol", messages=messages, max_tokens=16, temperature=0, stream=stream)
            if stream:
                list(answer)
            walls.append(time.perf_counter() - started)
        speed = fleet.measured_speeds[key]
        measured = fleet.model.estimates[key]
        (replica,) = [r for r in fleet.model.replicas.values() if r.expert_id == "smol"]

    assert speed.num_answers == 3 and speed.prefill_s_per_token is not None and speed.decode_s_per_token is not None
    assert measured.decode_step_s_batch_1 == measured.decode_step_s_full_batch == speed.decode_s_per_token
    assert measured.prefill_tokens_per_s == pytest.approx(1 / speed.prefill_s_per_token)
    assert measured.decode_step_s_batch_1 != roofline.decode_step_s_batch_1
    assert replica.capacity == measured.capacity
    # The worker's own timing of an answer fits inside what the client waited for it (15 decoded tokens each).
    assert speed.decode_s_per_token * 15 < max(walls)
