"""Turning a raw HTTP body into a validated request, or an `ApiError` that says exactly what is wrong."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from switchboard.gateway.errors import ApiError
from switchboard.gateway.schemas import ChatCompletionRequest, CompletionRequest

CHARS_PER_TOKEN = 4
MAX_GENERATIONS = 128
"""Choices one request may ask for, prompts × n (OpenAI's own limit on `n`)."""
"""Rough characters per token for pre-checks; engines report exact counts in `usage`."""

MESSAGE_OVERHEAD_TOKENS = 4
"""Template tokens a chat format adds per message (role markers, separators)."""


def parse_json_object(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise ApiError(400, "the request body is empty; expected a JSON object", code="invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc.msg} (at character {exc.pos})", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, not {type(body).__name__}", code="invalid_json")
    return body


def validate(model: type[BaseModel], body: dict[str, Any]) -> BaseModel:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise _api_error(exc) from None


def _api_error(exc: ValidationError) -> ApiError:
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    param = _dotted(first["loc"])
    kind = first["type"]
    if kind == "extra_forbidden":
        message = f"unrecognized request argument supplied: {param}"
    elif kind == "missing":
        message = f"missing required parameter: {param}"
    else:
        message = f"invalid value for {param}: {first['msg']}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return ApiError(400, message, param=param or None, code=kind)


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("TextPart", "OtherPart", "str", "list[ContentPart]", "list[str]", "[key]"):
            continue  # pydantic's union-branch labels (and its mark of a bad mapping key) mean nothing to a client
        else:
            out += f".{part}" if out else str(part)
    return out


def parse_chat(raw: bytes) -> tuple[ChatCompletionRequest, dict[str, Any]]:
    body = parse_json_object(raw)
    request = validate(ChatCompletionRequest, body)
    assert isinstance(request, ChatCompletionRequest)
    _check_stop(request.stop)
    return request, body


def parse_completion(raw: bytes) -> tuple[CompletionRequest, dict[str, Any]]:
    body = parse_json_object(raw)
    request = validate(CompletionRequest, body)
    assert isinstance(request, CompletionRequest)
    if request.max_tokens == 0 and request.echo is not True:
        raise ApiError(400, "max_tokens must be at least 1; 0 only with echo (the prompt scored, nothing generated)", param="max_tokens",
                       code="invalid_value")
    if isinstance(request.prompt, list):
        n = request.n or 1
        tokens = token_prompts(request.prompt)
        num_prompts = len(request.prompt) if tokens is None or isinstance(request.prompt[0], list) else 1
        if not request.prompt or num_prompts * n > MAX_GENERATIONS or (tokens is not None and not all(tokens)):
            raise ApiError(400, f"prompt must be a string or a list of 1 to {MAX_GENERATIONS // n} non-empty prompts (with n={n}: at "
                                f"most {MAX_GENERATIONS} choices in all)", param="prompt", code="invalid_value")
    _check_stop(request.stop)
    return request, body


def token_prompts(prompt: Any) -> list[list[int]] | None:
    """A completion's prompts as token-id lists when it gave token ids (one list, or a list of lists), else None."""
    if isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, list) for p in prompt):
        return prompt
    return None


def _check_stop(stop: Any) -> None:
    if isinstance(stop, list) and len(stop) > 4:
        raise ApiError(400, "stop may hold at most 4 sequences", param="stop", code="invalid_value")


def chat_prompt_text(request: ChatCompletionRequest) -> str:
    """The text of all messages, joined: what token estimates count."""
    parts: list[str] = []
    for message in request.messages:
        content = message.content
        if isinstance(content, str):
            parts.append(content)
        elif content:
            parts.extend(p.text for p in content if getattr(p, "type", None) == "text")
    return "\n".join(parts)


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(p.text for p in content or () if getattr(p, "type", None) == "text")


def last_user_text(request: ChatCompletionRequest) -> str:
    """The latest user turn: what the request log stores and feedback learns from."""
    for message in reversed(request.messages):
        if message.role == "user" and (isinstance(message.content, str) or message.content):
            return _message_text(message.content)
    return chat_prompt_text(request)


def routing_text(request: ChatCompletionRequest) -> str:
    """What the router reads: the latest user turn, then a bounded slice of the system prompt and earlier user
    turns (`switchboard.router.conversation`); the latest user turn alone for a one-turn chat."""
    from switchboard.router.conversation import Turn, routing_text as conversation_text

    return conversation_text([Turn(m.role, _message_text(m.content)) for m in request.messages])


def has_non_text_content(request: ChatCompletionRequest) -> bool:
    """Whether some message holds a part other than text (an assistant turn's `refusal` part is text too)."""
    return any(
        isinstance(m.content, list) and any(getattr(p, "type", None) not in ("text", "refusal") for p in m.content)
        for m in request.messages
    )


def estimate_tokens(text: str, num_messages: int = 0) -> int:
    return (len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN + MESSAGE_OVERHEAD_TOKENS * num_messages
