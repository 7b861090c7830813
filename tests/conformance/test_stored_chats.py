"""OpenAI's stored chat completions (`store: true`, then `chat.completions.retrieve` / `list` / `update` /
`messages.list` / `delete`) through the gateway, judged by the official Python and Node clients: whole answers and
streams through each client's stream helper, relayed from an upstream (whose own ids the stored answer does not
keep: it is the gateway's)."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from .cases import STREAMED_TOOL_CALLS, TOOL_CALLS, TOOLS, USAGE, USER, _completion, _message
from .conftest import node_case

CLIENTS = ("python", "node")


def run_python(base_url: str, params: dict[str, Any]) -> dict[str, Any]:
    """What run.mjs's `chat_stored` does, with the Python client."""
    out: dict[str, Any] = {}
    with openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60, http_client=httpx.Client()) as client:
        completions = client.chat.completions
        try:
            params = dict(params)
            if params.pop("stream", False):
                with completions.stream(**params) as stream:
                    created = stream.get_final_completion()
            else:
                created = completions.create(**params)
            retrieved = completions.retrieve(created.id)
            listed = [c.id for c in completions.list(metadata=params["metadata"], limit=1)]
            updated = completions.update(created.id, metadata={"reviewed": "yes"})
            messages = [m.to_dict() for m in completions.messages.list(created.id)]
            deleted = completions.delete(created.id)
            out["body"] = {"created": created.to_dict(), "retrieved": retrieved.to_dict(), "listed": listed, "updated": updated.to_dict(),
                           "messages": messages, "deleted": deleted.to_dict()}
            completions.retrieve(created.id)
        except openai.APIStatusError as exc:
            out["error"] = {"class": type(exc).__name__, "status": exc.status_code, "message": exc.message}
    return out


def run(client: str, request, params: dict[str, Any], base: str) -> dict[str, Any]:
    if client == "python":
        return run_python(base + "/v1", params)
    spec = {"baseURL": base + "/v1", "apiKey": "unused", "maxRetries": 0, "endpoint": "chat_stored", "params": params}
    return node_case(request.getfixturevalue("node"), spec)


def _calls(message: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in message.get("tool_calls") or []]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("client", CLIENTS)
def test_a_stored_tool_call_is_retrieved_listed_updated_and_deleted(client, stream, request, upstream, storing_gateway):
    recording, _ = upstream
    recording.clear()
    recording.queue("/chat/completions", STREAMED_TOOL_CALLS if stream else
                    _completion({"index": 0, "message": _message(None, tool_calls=TOOL_CALLS), "logprobs": None, "finish_reason": "tool_calls"}))
    tag = f"{client}-{'streamed' if stream else 'whole'}"
    params = {"model": "rec", "messages": [{"role": "system", "content": "Be brief."}, *USER], "tools": TOOLS, "store": True,
              "metadata": {"case": tag}, "stream": stream}
    result = run(client, request, params, storing_gateway)
    assert (result["error"]["class"], result["error"]["status"]) == ("NotFoundError", 404)  # retrieved after its deletion
    body = result["body"]
    created, retrieved = body["created"], body["retrieved"]
    assert created["id"].startswith("chatcmpl-") and created["id"] != "chatcmpl-up"  # the gateway's id, under which it is stored
    assert retrieved["id"] == created["id"] and retrieved["object"] == "chat.completion" and retrieved["model"] == "rec"
    assert retrieved["metadata"] == {"case": tag} and retrieved["usage"] == USAGE
    [choice] = retrieved["choices"]
    assert choice["finish_reason"] == "tool_calls" and _calls(choice["message"]) == _calls(created["choices"][0]["message"])
    assert _calls(choice["message"]) == [("call_1", "get_weather", "{\"city\":\"Paris\"}"), ("call_2", "get_time", "{\"tz\":\"CET\"}")]
    assert body["listed"] == [created["id"]]  # this case's metadata: one completion, found through the client's paging
    assert body["updated"]["metadata"] == {"reviewed": "yes"} and body["updated"]["id"] == created["id"]
    assert [(m["role"], m["content"]) for m in body["messages"]] == [("system", "Be brief."), ("user", USER[0]["content"])]
    assert all(m["id"] for m in body["messages"])
    assert body["deleted"] == {"id": created["id"], "object": "chat.completion.deleted", "deleted": True}
    assert recording.last.body["store"] is True  # sent on to the upstream as the client sent it
