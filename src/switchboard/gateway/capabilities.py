"""Which request fields each kind of engine honours, and the clear 400 for one it cannot.

`openai` experts, and `process` experts (an OpenAI-compatible server the control plane runs: vLLM, SGLang,
TGI, llama.cpp's server), take every field (pass-through: the server decides). Local engines (llama.cpp, simulated)
take the common subset listed here; anything else — a field they do not know, or a value they cannot honour
(`logprobs: true` on an engine that reports none) — is a 400 naming the field, never silently ignored. A fallback
expert that cannot honour a request is no fallback for it.

Pure: a table and one function of (request kind, expert, body).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from switchboard.config.schema import ExpertConfig
from switchboard.engines.base import RequestKind
from switchboard.engines.llamacpp import tools
from switchboard.gateway.errors import ApiError

_ANY: Callable[[Any], bool] = lambda value: True  # noqa: E731


def _off(value: Any) -> bool:
    """The field asks for nothing (absent, null, false, zero, empty)."""
    return value is None or value is False or value == 0 or value == {} or value == [] or value == ""


def _one(value: Any) -> bool:
    return value is None or value == 1


def _text_format(value: Any) -> bool:
    return value is None or (isinstance(value, dict) and value.get("type") == "text")


def _json_format(value: Any) -> bool:
    return _text_format(value) or (isinstance(value, dict) and value.get("type") in ("json_object", "json_schema"))


def _no_tools_asked(value: Any) -> bool:
    return value is None or value in ("none", "auto")


def _function_tools(value: Any) -> bool:
    """Function tools (their shape is checked with `tool_choice` by `tools.plan`, after the field loop)."""
    return True


# What every engine takes: the gateway's own fields and ones that only describe the request.
_GATEWAY: dict[str, Callable[[Any], bool]] = {
    "model": _ANY, "messages": _ANY, "prompt": _ANY, "max_tokens": _ANY, "max_completion_tokens": _ANY, "stream": _ANY,
    "stream_options": _ANY, "routing": _ANY, "user": _ANY, "metadata": _ANY, "store": _ANY,
    # Hints that change no answer: the cache key routes (gateway/affinity.py), the others only describe the
    # request; OpenAI's standard tier is the only one a local engine has.
    "prompt_cache_key": _ANY, "safety_identifier": _ANY, "service_tier": lambda value: value in (None, "auto", "default"),
    "modalities": lambda value: value in (None, ["text"]),  # text out is all a local engine makes
    "n": _one, "best_of": _one, "logprobs": _off, "top_logprobs": _off, "echo": _off, "suffix": _off,
    "response_format": _text_format, "tools": _off, "tool_choice": _no_tools_asked, "parallel_tool_calls": _ANY,
    "logit_bias": _off,
}
_SAMPLING = {name: _ANY for name in ("temperature", "top_p", "seed", "stop", "presence_penalty", "frequency_penalty", "top_k", "min_p")}
# `n` > 1 on local engines: the gateway makes the choices (gateway/choices.py). Not (yet) for local engines, so a
# 400 names them: suffix, best_of > 1; on the simulated engine echo and tools (a timing model has no prompt
# logprobs to echo and no calls to make).


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """An engine kind's accepted fields, each with the test its value must pass. `passes_everything` engines
    (openai upstreams) forward whatever the client sent."""

    description: str
    fields: Mapping[str, Callable[[Any], bool]] = dataclasses.field(default_factory=dict)
    passes_everything: bool = False
    token_prompts: bool = False  # a legacy completion's prompt may be token ids (of the engine's own vocabulary)


CAPABILITIES: dict[str, Capabilities] = {
    "openai": Capabilities("an OpenAI-compatible upstream", passes_everything=True),
    # engines/process.py relays its traffic through the openai engine: the server answers n, tools, logprobs,
    # images or its own 400, as it would without the gateway.
    "process": Capabilities("an OpenAI-compatible server", passes_everything=True),
    # A timing model answering placeholder text: sampling fields change nothing in it and are accepted.
    "simulated": Capabilities("a simulated engine", {**_GATEWAY, **_SAMPLING, "n": _ANY}, token_prompts=True),
    # engines/llamacpp/worker.py: json_object/json_schema through llama.cpp grammars, penalties, logit bias,
    # logprobs (the schema bounds top_logprobs to 0-20 and the legacy logprobs to 0-5, as OpenAI does), `echo`
    # (with logprobs, the prompt's too), token-id prompts, function tools (engines/llamacpp/tools.py:
    # grammar-made calls for `required` and a named function).
    "llamacpp": Capabilities("a llama.cpp engine", {**_GATEWAY, **_SAMPLING, "n": _ANY, "repetition_penalty": _ANY, "logit_bias": _ANY,
                                                     "response_format": _json_format, "logprobs": _ANY, "top_logprobs": _ANY, "echo": _ANY,
                                                     "tools": _function_tools, "tool_choice": _ANY}, token_prompts=True),
}
_LOCAL_DEFAULT = Capabilities("a local engine", {**_GATEWAY, **_SAMPLING})


def capabilities_of(expert: ExpertConfig) -> Capabilities:
    return CAPABILITIES.get(expert.backend.kind, _LOCAL_DEFAULT)


def takes_token_prompts(expert: ExpertConfig) -> bool:
    """Whether a legacy completion's prompt may be token ids for this expert: its server judges them (relays), or
    its engine evaluates them as given (llama.cpp: ids of its GGUF's vocabulary; the simulated engine counts them)."""
    caps = capabilities_of(expert)
    return caps.passes_everything or caps.token_prompts


def relays_everything(expert: ExpertConfig) -> bool:
    """Whether the expert's engine forwards the whole request to an OpenAI-compatible server, which then makes
    its own `n` choices and judges every field and content part itself."""
    return capabilities_of(expert).passes_everything


def unsupported(kind: RequestKind, expert: ExpertConfig, body: Mapping[str, Any]) -> ApiError | None:
    """The 400 for the first field of `body` that `expert`'s engine cannot honour (then, on chat, for
    `top_logprobs` without `logprobs: true`), or None if it can honour them all."""
    caps = capabilities_of(expert)
    if caps.passes_everything:
        return None
    for name, value in body.items():
        accepts = caps.fields.get(name)
        if accepts is None:
            return ApiError(400, f"unrecognized request argument supplied: {name} (expert '{expert.id}' is {caps.description}, which does not "
                                 "take it; only openai experts pass unknown fields on)", param=name, code="unsupported_parameter")
        if not accepts(value):
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            return ApiError(400, f"expert '{expert.id}' is {caps.description} and cannot do {name}={shown}", param=name,
                            code="unsupported_parameter")
    if kind == "chat" and body.get("top_logprobs") is not None and body.get("logprobs") is not True:
        # OpenAI's rule; an openai upstream applies its own.
        return ApiError(400, "top_logprobs requires logprobs: true", param="top_logprobs", code="invalid_value")
    if kind == "chat" and caps.fields.get("tools") is _function_tools and (body.get("tools") or body.get("tool_choice")):
        try:
            tools.plan(dict(body))
        except tools.ToolRequestError as exc:
            return ApiError(400, str(exc), param=exc.param, code="invalid_value")
    return None
