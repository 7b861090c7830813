"""The Response object: built from a chat completion (whole answers), or from a stream's accumulated output.

Functions of their arguments, but for the ids of new output items (`new_id`, random, as OpenAI's are).
"""

from __future__ import annotations

from typing import Any

from switchboard.gateway.responses_api.ids import new_id
from switchboard.gateway.responses_api.request import ResponsesRequest, wants_text_logprobs

# A chat finish_reason → the Response's status and, when incomplete, why.
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def usage(chat_usage: dict[str, Any] | None) -> dict[str, Any] | None:
    if not chat_usage:
        return None
    prompt = int(chat_usage.get("prompt_tokens") or 0)
    completion = int(chat_usage.get("completion_tokens") or 0)
    cached = int(((chat_usage.get("prompt_tokens_details") or {}).get("cached_tokens")) or 0)
    reasoning = int(((chat_usage.get("completion_tokens_details") or {}).get("reasoning_tokens")) or 0)
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached}, "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": reasoning}, "total_tokens": prompt + completion}


def text_logprobs(chat_logprobs: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A chat choice's `logprobs.content` in the Responses form (the same fields, `top_logprobs` always a list)."""
    out = []
    for token in (chat_logprobs or {}).get("content") or ():
        top = [{"token": t["token"], "logprob": t["logprob"], "bytes": t.get("bytes") or []} for t in token.get("top_logprobs") or ()]
        out.append({"token": token["token"], "logprob": token["logprob"], "bytes": token.get("bytes") or [], "top_logprobs": top})
    return out


def message_item(item_id: str, text: str, status: str, logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    part: dict[str, Any] = {"type": "output_text", "text": text, "annotations": []}
    if logprobs is not None:
        part["logprobs"] = logprobs
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": [part]}


def function_call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call_id, "name": name, "arguments": arguments}


def status_of(finish_reason: str | None) -> tuple[str, dict[str, Any] | None]:
    """(status, incomplete_details) for a chat finish_reason."""
    reason = _INCOMPLETE.get(finish_reason or "")
    return ("incomplete", {"reason": reason}) if reason else ("completed", None)


def response_object(request: ResponsesRequest, response_id: str, created_at: int, model: str, status: str, output: list[dict[str, Any]],
                    usage_: dict[str, Any] | None = None, incomplete: dict[str, Any] | None = None,
                    error: dict[str, Any] | None = None, store: bool = False) -> dict[str, Any]:
    """The whole Response object, echoing the request's settings as OpenAI does (`store`: whether it is stored)."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": False,
        "error": error,
        "incomplete_details": incomplete,
        "instructions": request.instructions,
        "max_output_tokens": request.max_output_tokens,
        "max_tool_calls": None,
        "model": model,
        "output": output,
        "parallel_tool_calls": request.parallel_tool_calls if request.parallel_tool_calls is not None else True,
        "previous_response_id": request.previous_response_id,
        "reasoning": {"effort": (request.reasoning or {}).get("effort"), "summary": None},
        "service_tier": "default",
        "store": store,
        "temperature": request.temperature if request.temperature is not None else 1.0,
        "text": {"format": (request.text or {}).get("format") or {"type": "text"}},
        "tool_choice": request.tool_choice if request.tool_choice is not None else "auto",
        "tools": request.tools or [],
        "top_logprobs": request.top_logprobs or 0,
        "top_p": request.top_p if request.top_p is not None else 1.0,
        "truncation": "disabled",
        "usage": usage_,
        "user": request.user,
        "metadata": request.metadata or {},
        "conversation": {"id": request.conversation if isinstance(request.conversation, str) else request.conversation.get("id")}
        if request.conversation is not None else None,
    }


def from_chat(request: ResponsesRequest, response_id: str, model: str, chat: dict[str, Any]) -> dict[str, Any]:
    """The Response for a whole chat completion (its first choice: Responses have one) that `model` answered."""
    choices = chat.get("choices") or [{}]
    choice = choices[0]
    message = choice.get("message") or {}
    output: list[dict[str, Any]] = []
    wants_logprobs = wants_text_logprobs(request)
    text = message.get("content")
    if text is None and message.get("refusal"):
        text = message["refusal"]
    if text or not message.get("tool_calls"):
        logprobs = text_logprobs(choice.get("logprobs")) if wants_logprobs else None
        output.append(message_item(new_id("msg"), text or "", "completed", logprobs))
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        output.append(function_call_item(new_id("fc"), call.get("id") or new_id("call"), function.get("name", ""),
                                         function.get("arguments", ""), "completed"))
    status, incomplete = status_of(choice.get("finish_reason"))
    if status == "incomplete":
        for item in output:
            item["status"] = "incomplete"
    return response_object(request, response_id, int(chat.get("created") or 0), model, status, output, usage(chat.get("usage")), incomplete)
