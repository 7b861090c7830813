"""A Responses API request → the equivalent chat completion body, or the 400 saying what cannot be translated.

The mapping (OpenAI's own correspondence between the two APIs):

- `instructions` → a leading system message; `input` (a string, or a list of items) → messages: `message` items
  keep their role (`input_text` / `output_text` / `refusal` parts become text parts — one alone, its string —,
  `input_image` an image part);
  consecutive `function_call` items become one assistant message's `tool_calls` (joined to the assistant message
  just before them); a `function_call_output` becomes a `tool` message; `reasoning` items are dropped (no expert
  here takes them back).
- `max_output_tokens` → `max_completion_tokens`; `text.format` → `response_format`; function `tools` and
  `tool_choice` → their chat forms; `reasoning.effort` → `reasoning_effort` (experts that cannot honour it say so).
- A stream asks for usage (`stream_options.include_usage`), which the final `response.completed` event carries.

Anything with no chat equivalent (hosted tools, background runs) is refused by name, never dropped.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Union

from switchboard.gateway.errors import ApiError
from switchboard.gateway.requests import chat_prompt_text, estimate_tokens, parse_json_object, validate
from switchboard.gateway.responses_api.schemas import ResponsesRequest
from switchboard.gateway.schemas import ChatCompletionRequest


@dataclasses.dataclass(frozen=True)
class Translated:
    """The chat body to serve, the request as the Response object echoes it, and the conversation's input items
    (a previous response's, then this request's: what a stored Response keeps)."""

    chat: dict[str, Any]
    request: ResponsesRequest
    stream: bool
    input_items: list[dict[str, Any]]
    num_earlier: int = 0  # of `input_items`, those from before this request (a previous response's, a conversation's)

    @property
    def new_items(self) -> list[dict[str, Any]]:
        """This request's own input items."""
        return self.input_items[self.num_earlier:]


_LOGPROBS_INCLUDE = "message.output_text.logprobs"
# OpenAI's other `include` values add data to items no expert here produces (reasoning, hosted tools' calls, input
# images echoed back): with nothing to add they change nothing, and clients that always send one (Codex asks for
# "reasoning.encrypted_content") work.
_NO_OP_INCLUDES = frozenset({"reasoning.encrypted_content", "message.input_image.image_url", "computer_call_output.output.image_url",
                             "file_search_call.results", "web_search_call.results", "web_search_call.action.sources",
                             "code_interpreter_call.outputs"})


def parse(raw: bytes) -> ResponsesRequest:
    """Validates a raw Responses body (a 400 `ApiError` naming the first problem)."""
    return parse_body(parse_json_object(raw))


def parse_body(body: dict[str, Any]) -> ResponsesRequest:
    request = validate(ResponsesRequest, body)
    assert isinstance(request, ResponsesRequest)
    _refuse_unsupported(request)
    return request


def translate(request: ResponsesRequest, earlier_items: list[dict[str, Any]] | None = None) -> Translated:
    """The chat completion for `request`, continuing the conversation of `earlier_items` (the previous response's
    input and output items; its `instructions` are not carried over, as OpenAI's are not). A 400 for what has no
    chat equivalent."""
    earlier = list(earlier_items or ())
    items = [*earlier, *([{"type": "message", "role": "user", "content": request.input}] if isinstance(request.input, str) else request.input)]
    chat: dict[str, Any] = {"model": request.model, "messages": _messages(request.instructions, items, len(earlier))}
    if request.max_output_tokens is not None:
        chat["max_completion_tokens"] = request.max_output_tokens
    for name in ("temperature", "top_p", "parallel_tool_calls", "user", "routing", "prompt_cache_key", "safety_identifier"):
        value = getattr(request, name)
        if value is not None:
            chat[name] = value.model_dump(exclude_none=True) if name == "routing" else value
    if request.tools:
        chat["tools"] = [_tool(i, t) for i, t in enumerate(request.tools)]
    if request.tool_choice is not None:
        chat["tool_choice"] = _tool_choice(request.tool_choice)
    if (fmt := _response_format(request.text)) is not None:
        chat["response_format"] = fmt
    if request.reasoning is not None and request.reasoning.get("effort") is not None:
        chat["reasoning_effort"] = request.reasoning["effort"]
    unknown = set(request.include or ()) - {_LOGPROBS_INCLUDE, *_NO_OP_INCLUDES}
    if unknown:
        raise ApiError(400, f"include: {sorted(unknown)} not known (OpenAI's values are; only '{_LOGPROBS_INCLUDE}' changes anything here)",
                       param="include", code="unsupported_value")
    if wants_text_logprobs(request):
        chat["logprobs"] = True
        if request.top_logprobs:
            chat["top_logprobs"] = request.top_logprobs
    if request.stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return Translated(chat, request, bool(request.stream), items, len(earlier))


def conversation_id(request: ResponsesRequest) -> str | None:
    """The id of the conversation the request continues (`conversation`: its id, or `{"id": ...}`), if any."""
    value = request.conversation
    if value is None:
        return None
    found = value if isinstance(value, str) else value.get("id")
    if not isinstance(found, str) or not found:
        raise ApiError(400, "conversation must be a conversation id or {\"id\": ...}", param="conversation", code="invalid_value")
    return found


def estimate_chat_tokens(chat: dict[str, Any]) -> int:
    """The gateway's estimate of a translated chat body's prompt tokens (what it uses before an expert counts)."""
    parsed = validate(ChatCompletionRequest, chat)
    assert isinstance(parsed, ChatCompletionRequest)
    return estimate_tokens(chat_prompt_text(parsed), len(parsed.messages))


def wants_text_logprobs(request: ResponsesRequest) -> bool:
    """Whether the output text carries logprobs (OpenAI: `include` names them, or `top_logprobs` asks for some)."""
    return bool(request.top_logprobs) or _LOGPROBS_INCLUDE in (request.include or ())


# Fields naming features that live on OpenAI's side, refused when set: what each is.
_OPENAI_SIDE = {"prompt": "a reusable prompt stored at OpenAI", "context_management": "OpenAI's server-side context compaction",
                "moderation": "OpenAI's moderation of input and output", "image": "OpenAI's request-level image options",
                "access_programs": "OpenAI's domain-specific access programs"}


def _refuse_unsupported(request: ResponsesRequest) -> None:
    for name, what in _OPENAI_SIDE.items():
        if getattr(request, name) is not None:
            raise ApiError(400, f"{name} is not supported here: it is {what}, which no expert behind this gateway has", param=name,
                           code="unsupported_parameter")
    if request.conversation is not None and request.previous_response_id is not None:
        raise ApiError(400, "conversation and previous_response_id cannot both be given: a response continues one or the other",
                       param="conversation", code="invalid_value")
    if request.background:
        raise ApiError(400, "background responses are not supported: stream the response instead", param="background", code="unsupported_parameter")
    if request.truncation == "auto":
        raise ApiError(400, "truncation 'auto' is not supported: the request is refused when it does not fit the expert's context",
                       param="truncation", code="unsupported_value")
    if request.max_tool_calls is not None:
        raise ApiError(400, "max_tool_calls is not supported (experts here make at most one round of calls per response)",
                       param="max_tool_calls", code="unsupported_parameter")


def _messages(instructions: str | None, items: list[dict[str, Any]], num_earlier: int) -> list[dict[str, Any]]:
    """Chat messages for `items`, of which the first `num_earlier` were stored (and checked) with an earlier response."""
    messages: list[dict[str, Any]] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    for i, item in enumerate(items):
        kind = item.get("type", "message")
        where = f"input[{i - num_earlier}]"
        if kind == "message":
            messages.append(_message(item, where))
        elif kind == "function_call":
            call = {"id": _text_field(item, "call_id", where), "type": "function",
                    "function": {"name": _text_field(item, "name", where), "arguments": _text_field(item, "arguments", where)}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":  # one assistant turn: its text and its calls
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            content = output if isinstance(output, str) else _plain(_parts(output, f"{where}.output")) if isinstance(output, list) else None
            if content is None:
                raise ApiError(400, f"{where}.output must be a string or a list of content parts", param=f"{where}.output", code="invalid_value")
            messages.append({"role": "tool", "tool_call_id": _text_field(item, "call_id", where), "content": content})
        elif kind == "reasoning":
            continue  # a reasoning model's own summary of its thinking: nothing here consumes it
        else:
            raise ApiError(400, f"{where}: input items of type '{kind}' are not supported here (message, function_call, "
                                "function_call_output and reasoning are)", param=f"{where}.type", code="unsupported_value")
    if not messages:
        raise ApiError(400, "input has no messages", param="input", code="invalid_value")
    return messages


def _message(item: dict[str, Any], where: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in ("user", "assistant", "system", "developer"):
        raise ApiError(400, f"{where}.role must be one of user, assistant, system, developer (got {role!r})", param=f"{where}.role",
                       code="invalid_value")
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise ApiError(400, f"{where}.content must be a string or a list of content parts", param=f"{where}.content", code="invalid_value")
    parts = _parts(content, f"{where}.content")
    if role == "assistant":  # chat takes an assistant's turn as text
        return {"role": role, "content": "".join(p["text"] for p in parts if p["type"] == "text")}
    return {"role": role, "content": _plain(parts)}


def _plain(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """One text part as the string it is (every server takes a string; some reject parts: llama-cpp-python's
    own server answers them with a 500), several parts or an image as parts."""
    return parts[0]["text"] if len(parts) == 1 and parts[0]["type"] == "text" else parts


def _parts(parts: list[Any], where: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for j, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text"):
            out.append({"type": "text", "text": _text_field(part, "text", f"{where}[{j}]")})
        elif kind == "refusal":
            out.append({"type": "text", "text": _text_field(part, "refusal", f"{where}[{j}]")})
        elif kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str):
                raise ApiError(400, f"{where}[{j}]: only images given by image_url are supported (file_id needs stored files)",
                               param=f"{where}[{j}].image_url", code="unsupported_value")
            out.append({"type": "image_url", "image_url": {"url": url, "detail": part.get("detail") or "auto"}})
        else:
            raise ApiError(400, f"{where}[{j}]: content parts of type {kind!r} are not supported here (input_text, output_text, refusal "
                                "and input_image are)", param=f"{where}[{j}].type", code="unsupported_value")
    return out


def _text_field(item: dict[str, Any], name: str, where: str) -> str:
    value = item.get(name)
    if not isinstance(value, str):
        raise ApiError(400, f"missing required parameter: {where}.{name} (a string)", param=f"{where}.{name}", code="missing")
    return value


def _tool(i: int, tool: dict[str, Any]) -> dict[str, Any]:
    if tool.get("type") != "function":
        raise ApiError(400, f"tools[{i}]: tools of type {tool.get('type')!r} are not supported here (function tools are; hosted tools "
                            "such as web search run only on OpenAI's servers)", param=f"tools[{i}].type", code="unsupported_value")
    function = {"name": _text_field(tool, "name", f"tools[{i}]")}
    for name in ("description", "parameters", "strict"):
        if tool.get(name) is not None:
            function[name] = tool[name]
    return {"type": "function", "function": function}


def _tool_choice(choice: Union[str, dict[str, Any]]) -> Union[str, dict[str, Any]]:
    if isinstance(choice, str):
        return choice
    if choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    if choice.get("type") == "allowed_tools" and isinstance(choice.get("tools"), list):
        named = [{"type": "function", "function": {"name": t.get("name")}} if isinstance(t, dict) and t.get("type") == "function" else t
                 for t in choice["tools"]]
        return {"type": "allowed_tools", "allowed_tools": {"mode": choice.get("mode"), "tools": named}}
    raise ApiError(400, "tool_choice must be 'none', 'auto', 'required', {\"type\": \"function\", \"name\": ...} or "
                        "{\"type\": \"allowed_tools\", \"mode\": ..., \"tools\": [...]}", param="tool_choice", code="unsupported_value")


def _response_format(text: dict[str, Any] | None) -> dict[str, Any] | None:
    fmt = (text or {}).get("format")
    if fmt is None or fmt.get("type") == "text":
        return None
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if fmt.get("type") == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "description", "strict") if fmt.get(k) is not None}
        if "schema" not in schema:
            raise ApiError(400, "missing required parameter: text.format.schema", param="text.format.schema", code="missing")
        return {"type": "json_schema", "json_schema": schema}
    raise ApiError(400, f"text.format type {fmt.get('type')!r} is not supported (text, json_object and json_schema are)",
                   param="text.format.type", code="unsupported_value")
