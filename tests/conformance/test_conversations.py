"""OpenAI's Conversations API (`client.conversations`) through the gateway, judged by the official Python and Node
clients: a conversation made with items, a response given it (the upstream receives the items as history), its
items paged by the client, added, read and deleted, the conversation relabelled and deleted."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from .cases import EXPERT, _completion, _message
from .conftest import node_case

CLIENTS = ("python", "node")
ITEMS = [{"role": "user", "content": "My name is Ada."}, {"type": "message", "role": "assistant", "content": "Hello Ada."}]


def run_python(base_url: str, params: dict[str, Any]) -> dict[str, Any]:
    """What run.mjs's `conversations` does, with the Python client."""
    out: dict[str, Any] = {}
    with openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60, http_client=httpx.Client()) as client:
        conversations = client.conversations
        try:
            conversation = conversations.create(items=params["items"], metadata={"case": "python"})
            response = client.responses.create(**params["response"], conversation=conversation.id)
            items = [item.to_dict() for item in conversations.items.list(conversation.id, order="asc", limit=2)]
            added = conversations.items.create(conversation.id, items=[{"type": "message", "role": "user", "content": "Thanks."}])
            read = conversations.items.retrieve(added.data[0].id, conversation_id=conversation.id)
            after_delete = conversations.items.delete(added.data[0].id, conversation_id=conversation.id)
            updated = conversations.update(conversation.id, metadata={"reviewed": "yes"})
            deleted = conversations.delete(conversation.id)
            out["body"] = {k: v.to_dict() if hasattr(v, "to_dict") else v for k, v in {
                "conversation": conversation, "response": response, "items": items, "added": added, "read": read,
                "afterDelete": after_delete, "updated": updated, "deleted": deleted}.items()}
            conversations.retrieve(conversation.id)
        except openai.APIStatusError as exc:
            out["error"] = {"class": type(exc).__name__, "status": exc.status_code, "message": exc.message}
    return out


@pytest.mark.parametrize("client", CLIENTS)
def test_a_conversation_through_each_official_client(client, request, upstream, storing_gateway):
    recording, _ = upstream
    recording.clear()
    recording.queue("/chat/completions", _completion({"index": 0, "message": _message("Your name is Ada."), "logprobs": None, "finish_reason": "stop"}))
    params = {"items": ITEMS, "response": {"model": EXPERT, "input": "What is my name?"}}
    if client == "python":
        result = run_python(storing_gateway + "/v1", params)
    else:
        spec = {"baseURL": storing_gateway + "/v1", "apiKey": "unused", "maxRetries": 0, "endpoint": "conversations", "params": params}
        result = node_case(request.getfixturevalue("node"), spec)
    assert (result["error"]["class"], result["error"]["status"]) == ("NotFoundError", 404)  # read after its deletion
    body = result["body"]
    conversation = body["conversation"]
    assert conversation["id"].startswith("conv_") and conversation["object"] == "conversation" and conversation["metadata"] == {"case": client}
    assert [m["content"] for m in recording.last.body["messages"]] == ["My name is Ada.", "Hello Ada.", "What is my name?"]
    assert body["response"]["conversation"] == {"id": conversation["id"]}
    # the client's paging (2 a page) found the history and the response's turn, oldest first
    assert [(i["role"], i["content"][0]["text"]) for i in body["items"]] == [
        ("user", "My name is Ada."), ("assistant", "Hello Ada."), ("user", "What is my name?"), ("assistant", "Your name is Ada.")]
    [added] = body["added"]["data"]
    assert added["type"] == "message" and body["read"]["id"] == added["id"] and body["read"]["content"][0]["text"] == "Thanks."
    assert body["afterDelete"]["id"] == conversation["id"] and body["updated"]["metadata"] == {"reviewed": "yes"}
    assert body["deleted"] == {"id": conversation["id"], "object": "conversation.deleted", "deleted": True}
