"""OpenAI chat messages in the shape a GGUF's chat template can render.

The templates llama.cpp runs (Jinja, from the GGUF) are written for Hugging Face's plain messages: `content` is a
string, concatenated into the prompt. The OpenAI API also allows `content` as a list of parts and `null` content
on an assistant turn that only called tools — both sent by the official clients and by frameworks built on them.
Handed to a template as they are, they raise inside it ("can only concatenate str (not "list") to str"), which
once came back as the replica's 500 and opened its circuit breaker for everyone. So the worker and the gateway's
token counter render the same plain messages:

- a list of text parts becomes their texts joined by newlines (vLLM's rule for text-only chat templates, its
  "string" content format), so two parts never run together into one word; an assistant turn's `refusal` part
  counts as its text;
- `null` content becomes "" (the tool calls themselves stay in `tool_calls`, for templates that render them);
- the `developer` role becomes `system`: OpenAI's new name for the same message, which no GGUF template knows
  (SmolLM2's would print "developer" as a role the model never saw; a stricter template raises).

Non-text parts never reach here: the gateway refuses them for llama.cpp experts (400, `unsupported_content`).
"""

from __future__ import annotations

from typing import Any


def template_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`messages` with every `content` a string and no `developer` role (see the module's rules); the others are
    returned as they are, and nothing is changed in place."""
    return [_plain(m) if not isinstance(m.get("content"), str) or m.get("role") == "developer" else m for m in messages]


def _plain(message: dict[str, Any]) -> dict[str, Any]:
    if message.get("role") == "developer":
        message = {**message, "role": "system"}
    content = message.get("content")
    if content is None:
        return {**message, "content": ""}
    if isinstance(content, list):
        texts = [p.get(p["type"], "") for p in content if isinstance(p, dict) and p.get("type") in ("text", "refusal")]
        return {**message, "content": "\n".join(texts)}
    return message  # anything else is the template's to judge (the gateway's schema allows no other type)
