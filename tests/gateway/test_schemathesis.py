"""Fuzzing the gateway against its own OpenAPI document (schemathesis): over at least 1,000 generated requests,
valid and invalid, to the real app on a free port with simulated experts answering instantly — no 5xx
answer, and every answer conforms to the document (status code, content type, body schema).

Seeded and derandomized: the same requests every run. Half of the generation requests name a real expert so
the fuzzer gets past model lookup into validation, admission and the engines.
"""

from __future__ import annotations

import collections
import time

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import content_type_conformance, not_a_server_error, response_schema_conformance, status_code_conformance

from switchboard.config import parse_config
from switchboard.gateway.app import build_app
from switchboard.testing.servers import serve_in_thread

CONFIG = """
experts:
  - id: small
    backend: {kind: simulated, time_scale: 0}
    context_tokens: 4096
  - id: large
    backend: {kind: simulated, hardware: h100, time_scale: 0}
storage: {url: "sqlite://", flush_interval_s: 0.2}
"""
EXPERTS = ["small", "large", "auto"]
EMBEDDING_EXPERTS = ["all-minilm-l6-v2", "small"]  # the default local embedding expert, and a model that is not one
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# Chat bodies are the slowest to generate (~10x a completion): fewer of them keeps the test near 30-60 s.
EXAMPLES_PER_MODE = {"POST /v1/chat/completions": 100, "POST /v1/completions": 250, "POST /v1/feedback": 160, "POST /v1/embeddings": 100,
                     "POST /v1/responses": 100}
MIN_REQUESTS = 1000


def _with_real_model(draw_case, model: str, use_it: bool):
    body = draw_case.body
    if use_it and isinstance(body, dict) and "model" in body:
        body["model"] = model
    return draw_case


@pytest.mark.timeout(300)
def test_no_5xx_and_no_schema_violations():
    app = build_app(parse_config(CONFIG))
    sent: collections.Counter[str] = collections.Counter()
    failures: list[str] = []
    call_s = [0.0]
    with serve_in_thread(app) as base, requests.Session() as session:
        schema = schemathesis.openapi.from_url(base + "/openapi.json")
        for result in schema.get_all_operations():
            operation = result.ok()
            label = f"{operation.method.upper()} {operation.path}"
            # Invalid data needs something to be invalid in: a body. GETs, and POSTs without one (a batch's cancel), are fuzzed
            # with valid data only.
            modes = list(GenerationMode) if operation.method.upper() == "POST" and len(operation.body) else [GenerationMode.POSITIVE]
            for mode in modes:
                num_examples = EXAMPLES_PER_MODE.get(label, 20)
                models = EMBEDDING_EXPERTS if operation.path == "/v1/embeddings" else EXPERTS
                strategy = st.builds(_with_real_model, operation.as_strategy(generation_mode=mode), st.sampled_from(models), st.booleans())

                @settings(max_examples=num_examples, derandomize=True, database=None, deadline=None,
                          suppress_health_check=list(HealthCheck), phases=[Phase.generate])
                @given(case=strategy)
                def fuzz(case):
                    started = time.perf_counter()
                    response = case.call(base_url=base, session=session, timeout=30)
                    call_s[0] += time.perf_counter() - started
                    sent[label] += 1
                    try:
                        case.validate_response(response, checks=CHECKS)
                    except (Exception, BaseExceptionGroup) as exc:  # collect them all; report at the end
                        failures.append(f"{label} [{mode.value}] {response.status_code}: {str(exc)[:600]}\n  body: {str(case.body)[:300]}")

                fuzz()
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures[:20])
    print(f"schemathesis: {sum(sent.values())} requests ({call_s[0]:.1f} s in HTTP calls): {dict(sent)}")
    assert sum(sent.values()) >= MIN_REQUESTS, dict(sent)
