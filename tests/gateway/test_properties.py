"""Generated bodies thrown at every endpoint: the answer is always JSON with a 2xx or 4xx status.

Bodies are written with the stdlib encoder, which also emits big integers and Infinity: the gateway must
refuse those cleanly too.
"""

from __future__ import annotations

import json
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from switchboard.config import parse_config
from switchboard.gateway.app import build_app

CONFIG = """
experts:
  - id: small
    backend: {kind: simulated, time_scale: 0}
    context_tokens: 512
    max_output_tokens: 64
"""

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant", "tool", "bogus"]), "content": st.one_of(st.text(max_size=50), st.none(), json_values)}
    ),
    max_size=3,
)
chat_bodies = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["small", "auto", "missing", ""]) | json_values,
        "messages": messages | json_values,
        "max_tokens": st.integers(min_value=-5, max_value=5000) | json_values,
        "temperature": st.floats(allow_nan=False, min_value=-1, max_value=3),
        "stream": st.booleans(),
        "stop": st.lists(st.text(max_size=3), max_size=6) | st.text(max_size=3),
        "routing": json_values,
        "n": st.integers(min_value=0, max_value=3),
    },
)
completion_bodies = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["small", "auto"]) | json_values,
        "prompt": st.text(max_size=100) | st.lists(st.text(max_size=5), max_size=3) | json_values,
        "max_tokens": st.integers(min_value=-5, max_value=5000),
        "stream": st.booleans(),
    },
)


@pytest.fixture(scope="module")
def client():
    with TestClient(build_app(parse_config(CONFIG)), raise_server_exceptions=False) as c:
        yield c


def _check(response) -> None:
    assert response.status_code < 500, response.text
    if response.headers["content-type"].startswith("text/event-stream"):
        assert response.status_code == 200
        assert response.text.endswith("data: [DONE]\n\n")
    else:
        body = response.json()
        if response.status_code >= 400:
            assert set(body["error"]) == {"message", "type", "param", "code"}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=chat_bodies)
def test_chat_never_answers_5xx(client, body):
    _check(client.post("/v1/chat/completions", content=json.dumps(body).encode()))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=completion_bodies)
def test_completions_never_answer_5xx(client, body):
    _check(client.post("/v1/completions", content=json.dumps(body).encode()))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_arbitrary_bytes_never_answer_5xx(client, raw):
    _check(client.post("/v1/chat/completions", content=raw))
