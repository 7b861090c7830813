"""OpenAI's Files and Batch APIs (`client.files`, `client.batches`) through the gateway, judged by the official Python
and Node clients: a JSONL file uploaded (multipart, as each client frames it), run as a batch of chat completions
and of embeddings, its output and error files read back and parsed, files and batches paged by the client, the input
deleted; and a batch answered by the real engine (SmolLM2 on llama.cpp)."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import openai
import pytest

from .cases import EMBEDDING_EXPERT, EXPERT
from .conftest import node_case

CLIENTS = ("python", "node")
FINAL = ("completed", "failed", "cancelled", "expired")


def run_python(base_url: str, params: dict[str, Any]) -> dict[str, Any]:
    """What run.mjs's `batches` does, with the Python client."""
    out: dict[str, Any] = {}
    with openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60, http_client=httpx.Client()) as client:
        try:
            upload = client.files.create(file=("requests.jsonl", params["jsonl"].encode()), purpose="batch")
            batch = client.batches.create(input_file_id=upload.id, endpoint=params["batchEndpoint"], completion_window="24h")
            deadline = time.monotonic() + 60
            while batch.status not in FINAL and time.monotonic() < deadline:
                time.sleep(0.05)
                batch = client.batches.retrieve(batch.id)

            def read(file_id: str | None) -> str:
                return client.files.content(file_id).text if file_id else ""
            out["body"] = {"upload": upload.to_dict(), "batch": batch.to_dict(), "output": read(batch.output_file_id),
                           "errors": read(batch.error_file_id), "files": [f.id for f in client.files.list()],
                           "batches": [b.id for b in client.batches.list(limit=1)], "deleted": client.files.delete(upload.id).to_dict()}
            client.files.retrieve(upload.id)
        except openai.APIStatusError as exc:
            out["error"] = {"class": type(exc).__name__, "status": exc.status_code, "message": exc.message}
    return out


def _run(client: str, request, base: str, params: dict[str, Any]) -> dict[str, Any]:
    if client == "python":
        return run_python(base + "/v1", params)
    spec = {"baseURL": base + "/v1", "apiKey": "unused", "maxRetries": 0, "endpoint": "batches", "params": params}
    return node_case(request.getfixturevalue("node"), spec)


def _jsonl(url: str, bodies: list[dict[str, Any]]) -> str:
    return "\n".join(json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": url, "body": body}) for i, body in enumerate(bodies))


@pytest.mark.parametrize("client", CLIENTS)
def test_a_chat_batch_through_each_official_client(client, request, upstream, storing_gateway):
    recording, _ = upstream
    recording.clear()
    bodies = [{"model": EXPERT, "messages": [{"role": "user", "content": f"question {i}"}]} for i in range(3)]
    bodies.append({"model": EXPERT, "messages": "not a list"})
    result = _run(client, request, storing_gateway, {"jsonl": _jsonl("/v1/chat/completions", bodies), "batchEndpoint": "/v1/chat/completions"})
    assert (result["error"]["class"], result["error"]["status"]) == ("NotFoundError", 404)  # the input, read after its deletion
    body = result["body"]
    assert body["upload"]["purpose"] == "batch" and body["upload"]["filename"] == "requests.jsonl"
    batch = body["batch"]
    assert batch["status"] == "completed" and batch["request_counts"] == {"total": 4, "completed": 3, "failed": 1}
    output = [json.loads(line) for line in body["output"].splitlines()]
    assert [line["custom_id"] for line in output] == ["req-0", "req-1", "req-2"]
    assert all(line["response"]["status_code"] == 200 and line["response"]["body"]["object"] == "chat.completion" for line in output)
    assert sorted(r.body["messages"][0]["content"] for r in recording.requests) == ["question 0", "question 1", "question 2"]
    error = json.loads(body["errors"])
    assert error["custom_id"] == "req-3" and error["response"]["status_code"] == 400 and error["response"]["body"]["error"]["param"]
    assert body["upload"]["id"] in body["files"] and batch["output_file_id"] in body["files"]
    assert body["batches"][0] == batch["id"] and body["deleted"] == {"id": body["upload"]["id"], "object": "file", "deleted": True}


@pytest.mark.parametrize("client", CLIENTS)
def test_an_embeddings_batch_through_each_official_client(client, request, storing_gateway):
    bodies = [{"model": EMBEDDING_EXPERT, "input": ["one", "two"]}, {"model": EMBEDDING_EXPERT, "input": "three"}]
    result = _run(client, request, storing_gateway, {"jsonl": _jsonl("/v1/embeddings", bodies), "batchEndpoint": "/v1/embeddings"})
    batch = result["body"]["batch"]
    assert batch["status"] == "completed" and batch["request_counts"]["completed"] == 2 and batch["error_file_id"] is None
    output = [json.loads(line) for line in result["body"]["output"].splitlines()]
    assert [len(line["response"]["body"]["data"]) for line in output] == [2, 1]
    assert batch["usage"]["input_tokens"] > 0 and batch["usage"]["output_tokens"] == 0


def test_a_batch_on_the_real_engine(tmp_path):
    """The packaged SmolLM2 on llama.cpp answers a batch's requests as it answers live ones (logprobs, a JSON
    schema through its grammar), read back with the official client."""
    from switchboard.testing.servers import serve_smol_gateway

    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": False}
    bodies = [{"model": "smol", "messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 8,
               "temperature": 0, "logprobs": True},
              {"model": "smol", "messages": [{"role": "user", "content": "Name a city in Japan, as JSON."}], "max_tokens": 24, "temperature": 0,
               "response_format": {"type": "json_schema", "json_schema": {"name": "city", "schema": schema, "strict": True}}}]
    with serve_smol_gateway(storage_url=f"sqlite:///{tmp_path / 'log.db'}") as base_url:
        result = run_python(base_url, {"jsonl": _jsonl("/v1/chat/completions", bodies), "batchEndpoint": "/v1/chat/completions"})
    batch = result["body"]["batch"]
    assert batch["status"] == "completed" and batch["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
    first, second = (json.loads(line)["response"]["body"] for line in result["body"]["output"].splitlines())
    assert first["model"] == "smol" and first["choices"][0]["message"]["content"] and first["choices"][0]["logprobs"]["content"]
    assert set(json.loads(second["choices"][0]["message"]["content"])) == {"city"}
    assert batch["usage"]["output_tokens"] == first["usage"]["completion_tokens"] + second["usage"]["completion_tokens"] > 0
