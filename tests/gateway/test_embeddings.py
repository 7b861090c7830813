"""`POST /v1/embeddings` through the real gateway with the official openai client: the local default model,
an `openai`-kind upstream passed through field by field (a recording upstream), errors as the client's
exception classes, the request log, and API keys' token limits."""

from __future__ import annotations

import time

import httpx
import numpy as np
import openai
import pytest
from sqlalchemy import create_engine, text

from switchboard.config import parse_config
from switchboard.embeddings.local import default_model_dir
from switchboard.gateway.app import build_app
from switchboard.storage import database
from switchboard.tenants.keys import KeyLimits
from switchboard.tenants.store import create_key
from switchboard.testing.canned_upstream import UNKNOWN_RESPONSE_FIELD, Canned, RecordingUpstream
from switchboard.testing.servers import serve_in_thread

ADMIN_KEY = "admin-" + "y" * 40
CONFIG = """
experts:
  - id: small
    backend: {{kind: simulated, time_scale: 0}}
embedding_experts:
  - id: all-minilm-l6-v2
    backend: {{kind: onnx}}
  - id: te3
    backend: {{kind: openai, base_url: "{upstream}", model: text-embedding-3-small}}
    usd_per_mtok_input: 0.02
  - id: te3-down
    backend: {{kind: openai, base_url: "http://127.0.0.1:9/v1"}}
storage: {{url: "{db}", flush_interval_s: 0.05}}
"""


@pytest.fixture(scope="module")
def recording():
    upstream = RecordingUpstream()
    with serve_in_thread(upstream) as url:
        yield upstream, url + "/v1"


@pytest.fixture
def served(recording, tmp_path):
    upstream, upstream_url = recording
    upstream.clear()
    db = f"sqlite:///{tmp_path / 'requests.db'}"
    with serve_in_thread(build_app(parse_config(CONFIG.format(upstream=upstream_url, db=db)))) as base:
        yield base, upstream, db


def client_for(base: str, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key=kwargs.pop("api_key", "unused"), max_retries=0, **kwargs)


def test_the_local_default_answers_the_official_client_with_sentence_transformers_vectors(served):
    from sentence_transformers import SentenceTransformer

    base, _, _ = served
    client = client_for(base)
    texts = ["What is the capital of France?", "Paris is the capital of France.", "Bananas are yellow."]
    raw = client.embeddings.with_raw_response.create(model="all-minilm-l6-v2", input=texts)  # the client asks for base64
    answer = raw.parse()
    assert raw.headers["x-switchboard-expert"] == "all-minilm-l6-v2" and raw.headers["x-request-id"].startswith("embd-")
    assert answer.model == "all-minilm-l6-v2" and answer.object == "list"
    vectors = np.array([d.embedding for d in answer.data])
    reference = SentenceTransformer(str(default_model_dir()), device="cpu", local_files_only=True).encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(vectors, reference, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]  # the question is nearer its answer than bananas
    floats = client.embeddings.create(model="all-minilm-l6-v2", input=texts[0], encoding_format="float")
    np.testing.assert_allclose(floats.data[0].embedding, vectors[0], atol=1e-7)
    assert answer.usage.prompt_tokens == answer.usage.total_tokens > 3 * 2
    assert {"all-minilm-l6-v2", "te3"} <= {m.id for m in client.models.list().data}


def test_an_openai_upstream_gets_exactly_what_the_client_sent_and_the_client_gets_what_it_answered(served):
    base, upstream, _ = served
    sent: list[bytes] = []
    http = httpx.Client(event_hooks={"request": [lambda r: sent.append(r.read())]})
    client = client_for(base, http_client=http)
    answer = client.embeddings.create(model="te3", input=["a", "b"], dimensions=3, user="u-1", encoding_format="float",
                                      extra_body={"vendor_option": {"x": [1, 2]}})
    import orjson

    received = upstream.last.body
    assert upstream.last.path == "/v1/embeddings"
    assert received == {**orjson.loads(sent[-1]), "model": "text-embedding-3-small"}  # only the model's name changes
    assert received["vendor_option"] == {"x": [1, 2]}
    assert answer.model == "te3"
    assert answer.model_extra == UNKNOWN_RESPONSE_FIELD  # a field the gateway does not know, passed through
    assert [d.embedding for d in answer.data] == [[0.0, 0.5, -0.25], [1.0, 0.5, -0.25]]
    assert answer.usage.prompt_tokens == 6
    client.embeddings.create(model="te3", input=[[1, 2, 3], [4]])  # token ids are the upstream's business
    assert upstream.last.body["input"] == [[1, 2, 3], [4]]


def test_errors_map_to_the_clients_exception_classes(served):
    base, upstream, _ = served
    client = client_for(base)
    with pytest.raises(openai.NotFoundError) as err:
        client.embeddings.create(model="small", input="x")
    assert "not an embedding model" in err.value.message and err.value.body["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="nope", input="x")
    for bad in ([], [""] * 2049):
        with pytest.raises(openai.BadRequestError) as err:
            client.embeddings.create(model="all-minilm-l6-v2", input=bad)
        assert err.value.body["param"] == "input"
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="all-minilm-l6-v2", input=[1, 2])
    assert err.value.code == "unsupported_input"
    upstream.queue("/embeddings", Canned(429, {"error": {"message": "slow down", "type": "requests"}}, headers={"retry-after": "7"}))
    with pytest.raises(openai.RateLimitError) as err:
        client.embeddings.create(model="te3", input="x")
    assert err.value.response.headers["retry-after"] == "7" and "slow down" in err.value.message
    upstream.queue("/embeddings", Canned(400, {"error": {"message": "too long", "type": "invalid_request_error"}}))
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="te3", input="x")
    assert "too long" in err.value.message
    upstream.queue("/embeddings", Canned(500, {"error": {"message": "boom"}}))
    with pytest.raises(openai.InternalServerError) as err:
        client.embeddings.create(model="te3", input="x")
    assert err.value.status_code == 502 and "te3" in err.value.message
    with pytest.raises(openai.InternalServerError) as err:
        client.embeddings.create(model="te3-down", input="x")
    assert err.value.status_code == 503 and "te3-down" in err.value.message


def test_every_request_is_logged_with_its_tokens_and_cost(served):
    base, _, db = served
    client = client_for(base)
    ids = [client.embeddings.with_raw_response.create(model=m, input=["one", "two"]).headers["x-request-id"] for m in ("all-minilm-l6-v2", "te3")]
    engine = create_engine(db)
    deadline = time.monotonic() + 10
    while True:
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT id, kind, expert, tokens_in, tokens_out, usd_cost, status FROM requests ORDER BY created_at")).all()
        if len(rows) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    engine.dispose()
    assert [(r.id, r.kind, r.expert, r.tokens_out, r.status) for r in rows] == [(ids[0], "embedding", "all-minilm-l6-v2", 0, 200), (ids[1], "embedding", "te3", 0, 200)]
    assert rows[0].tokens_in == 6 and rows[0].usd_cost == 0  # [CLS] one [SEP], [CLS] two [SEP]
    assert rows[1].tokens_in == 6 and rows[1].usd_cost == pytest.approx(6 * 0.02 / 1e6)


def test_api_keys_token_limits_apply_to_embeddings(recording, tmp_path):
    _, upstream_url = recording
    db = f"sqlite:///{tmp_path / 'keys.db'}"
    engine = database.open_engine(db)
    database.migrate(engine)
    _, secret = create_key(engine, "embedder", "acme", KeyLimits(tpm=40))
    engine.dispose()
    config = parse_config(CONFIG.format(upstream=upstream_url, db=db) + "auth: {enabled: true, refresh_interval_s: 0.1}\n")
    with serve_in_thread(build_app(config, environ={"SWITCHBOARD_ADMIN_KEY": ADMIN_KEY})) as base:
        with pytest.raises(openai.AuthenticationError):
            client_for(base).embeddings.create(model="all-minilm-l6-v2", input="x")
        client = client_for(base, api_key=secret)
        client.embeddings.create(model="all-minilm-l6-v2", input=["word " * 10] * 2)  # 2 x 12 tokens
        with pytest.raises(openai.RateLimitError) as err:
            client.embeddings.create(model="all-minilm-l6-v2", input=["word " * 10] * 2)  # 48 > 40 in the minute
        assert err.value.code == "tpm_exceeded" and err.value.response.headers["x-switchboard-limit"] == "tpm"
