"""Real clients work unchanged: the official openai Python client and the official openai Node client (npm
package `openai`, run with node), each running every case of cases.py against the gateway in front of a
recording upstream. For each case, field by field:

- the upstream received exactly what the client sent, but for `model` (the upstream's name for the expert);
- the client got exactly what the upstream answered, but for `model` (the expert id) — whole answers and
  every stream chunk, unknown fields included;
- errors reach each client as its own exception class with the status, and a 429's Retry-After, which the
  client honours when it retries (its retry comes at least Retry-After seconds later).

Cases that need the gateway's pass-through of chat requests (the api helper's work on issue 14) are strict
xfails: they start failing the day they pass, so the marks come off with that work.
"""

from __future__ import annotations

import time
import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from .cases import CASES, EMBEDDING_EXPERT, EXPERT, RETRY_AFTER_S, Case
from .conftest import NODE_DIR, node_case

CLIENTS = ("python", "node")


def run_python(base_url: str, api_key: str, case: Case) -> dict[str, Any]:
    sent: list[Any] = []
    http = httpx.Client(event_hooks={"request": [lambda request: sent.extend([json.loads(request.read())] if request.read() else [])]})
    out: dict[str, Any] = {"sent": sent}
    with openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=case.max_retries, http_client=http, timeout=60) as client:
        try:
            create = {"chat": client.chat.completions.create, "completions": client.completions.create}.get(case.endpoint)
            if create is not None and case.params.get("stream"):
                out["chunks"] = [chunk.to_dict() for chunk in create(**case.params)]
            elif create is not None:
                out["body"] = create(**case.params).to_dict()
            elif case.endpoint == "models":
                listed = [m.to_dict() for m in client.models.list()]
                out["body"] = {"listed": listed, "retrieved": client.models.retrieve(case.params["model"]).to_dict()}
            else:
                out["body"] = client.embeddings.create(**case.params).to_dict()
        except openai.APIStatusError as exc:
            out["error"] = {"class": type(exc).__name__, "status": exc.status_code, "retry_after": exc.response.headers.get("retry-after")}
    return out


def run_node(node: str, base_url: str, api_key: str, case: Case) -> dict[str, Any]:
    spec = {"baseURL": base_url, "apiKey": api_key, "maxRetries": case.max_retries, "endpoint": case.endpoint, "params": case.params}
    return node_case(node, spec)


def _as_upstream_sent(body: Any, model: str) -> Any:
    """What the upstream must receive for `body`: the same, but for `model` (the expert's upstream name) and, on a
    stream, `stream_options.include_usage` — the one field the gateway adds, since it meters by the upstream's
    usage (the usage chunk is then withheld from a client that did not ask for it; docs/api.md)."""
    expected = {**body, "model": model}
    if body.get("stream") and not (body.get("stream_options") or {}).get("include_usage"):
        expected["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    return expected


def _decoded(body: dict[str, Any]) -> dict[str, Any]:
    """An embeddings answer with base64 vectors decoded, as the clients decode them."""
    import base64

    import numpy as np

    data = [{**d, "embedding": np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4").tolist()} if isinstance(d["embedding"], str) else d
            for d in body["data"]]
    return {**body, "data": data}


class UpstreamQuiet:
    """When the gateway will call the recording upstream again: a case answered with a 429 and `retry-after`
    makes the gateway hold that upstream back for so long (issue 14: never inside its Retry-After), which would
    leave the next case's upstream empty."""

    def __init__(self) -> None:
        self.until = 0.0

    def note(self, answers) -> None:
        waits = [float(a.headers["retry-after"]) for a in answers if a.status == 429 and "retry-after" in a.headers]
        if waits:
            self.until = time.monotonic() + max(waits) + 0.05

    def wait(self) -> None:
        time.sleep(max(0.0, self.until - time.monotonic()))


@pytest.fixture(scope="module")
def upstream_quiet() -> UpstreamQuiet:
    return UpstreamQuiet()


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("case", [pytest.param(c, id=c.name, marks=[pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail else []) for c in CASES])
def test_case(case: Case, client: str, request, upstream, upstream_quiet):
    recording, _ = upstream
    recording.clear()
    upstream_quiet.wait()  # the gateway rightly sends nothing upstream inside a Retry-After it was given
    request.addfinalizer(lambda: upstream_quiet.note(case.answers))  # counted from the case's end: an upper bound
    for answer in case.answers:
        recording.queue("/embeddings" if case.endpoint == "embeddings" else "/chat/completions", answer)
    base = (request.getfixturevalue("keyed_gateway") if case.auth else request.getfixturevalue("gateway")) + "/v1"
    api_key = "sk-sb-not-a-key" if case.auth else "unused"
    if client == "python":
        result = run_python(base, api_key, case)
    else:
        result = run_node(request.getfixturevalue("node"), base, api_key, case)

    # What reached the upstream is what the client sent.
    if not case.reaches_upstream:
        assert recording.requests == []
    else:
        assert len(recording.requests) == len(result["sent"]) == case.max_retries + 1
        for sent, received in zip(result["sent"], recording.requests):
            assert received.body == _as_upstream_sent(sent, case.upstream_model)

    if case.error is not None:
        assert "error" in result, f"expected {case.error}, the client got an answer"
        assert (result["error"]["class"], result["error"]["status"]) == case.error
        if case.retry_after is not None:
            assert result["error"]["retry_after"] == case.retry_after
        return
    assert "error" not in result, result.get("error")
    if case.max_retries:  # the client retried after the 429, and not before its Retry-After
        first, retry = recording.requests
        assert first.answer.status == 429 and retry.received_at - first.received_at >= 0.9 * RETRY_AFTER_S

    # What reached the client is what the upstream answered, but for the model's name.
    answer = recording.requests[-1].answer
    if answer.sse is not None:
        assert result["chunks"] == [{**chunk, "model": case.expert} for chunk in answer.sse]
    elif case.endpoint == "embeddings":
        assert result["body"] == _decoded({**answer.json, "model": case.expert})
    else:
        assert result["body"] == {**answer.json, "model": case.expert}


@pytest.mark.parametrize("client", CLIENTS)
def test_models_list_and_retrieve(client: str, request, gateway):
    """`models.list()` and `models.retrieve()` as each client makes them: every listed model retrieves as listed,
    and an unknown one is the client's NotFoundError."""
    def run(model: str) -> dict[str, Any]:
        case = Case(f"models_{model}", "models", {"model": model})
        if client == "python":
            return run_python(gateway + "/v1", "unused", case)
        return run_node(request.getfixturevalue("node"), gateway + "/v1", "unused", case)

    found = run(EXPERT)
    assert "error" not in found, found.get("error")
    listed = {m["id"]: m for m in found["body"]["listed"]}
    assert set(listed) == {"auto", EXPERT, EMBEDDING_EXPERT}
    assert found["body"]["retrieved"] == listed[EXPERT] and found["sent"] == []
    missing = run("no-such-model")
    assert (missing["error"]["class"], missing["error"]["status"]) == ("NotFoundError", 404)


def test_the_node_client_is_the_pinned_official_package(node):
    lock = json.loads((NODE_DIR / "package-lock.json").read_text())
    installed = json.loads((NODE_DIR / "node_modules" / "openai" / "package.json").read_text())
    assert installed["name"] == "openai" and installed["version"] == lock["packages"]["node_modules/openai"]["version"]
    assert Path(node).name.startswith("node")
