"""Chat messages a GGUF template can render (engines/llamacpp/messages.py), and a template's refusal as the client's
400 (engines/llamacpp/worker.py): content as a list of text parts and an assistant turn with null content (both sent
by the official clients) once came back as the replica's 500, retried and counted against its circuit breaker."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from switchboard.engines.llamacpp.messages import template_messages


def test_text_parts_are_joined_by_newlines_and_null_content_is_empty():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "What is"}, {"type": "text", "text": "the capital?"}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "Paris"}]},
        {"role": "assistant", "tool_calls": []},
    ]
    plain = template_messages(messages)
    assert [m["content"] for m in plain] == ["Be brief.", "What is\nthe capital?", "", "Paris", ""]
    assert plain[0] is messages[0]  # string content passes untouched
    assert plain[2]["tool_calls"] == messages[2]["tool_calls"] and plain[3]["tool_call_id"] == "c1"
    assert messages[1]["content"][0] == {"type": "text", "text": "What is"} and messages[2]["content"] is None  # not in place


def test_a_refusal_part_is_the_assistants_text():
    messages = [{"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't help with that."}]}]
    assert template_messages(messages)[0]["content"] == "I can't help with that."


def test_the_developer_role_is_the_system_role_for_templates():
    messages = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert template_messages(messages) == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert messages[0]["role"] == "developer"  # not in place


def test_an_empty_part_list_is_an_empty_string():
    assert template_messages([{"role": "user", "content": []}]) == [{"role": "user", "content": ""}]


# A Llama-2/Mistral-style role check (llama-cpp-python's raise_exception raises ValueError, once mislabelled
# context_length_exceeded), and a template doing arithmetic on a message (TypeError, once the replica's 500).
REFUSING_TEMPLATES = {
    "role order": ("{% for m in messages %}{% if m['role'] == 'system' and not loop.first %}"
                   "{{ raise_exception('a system message must come first') }}{% endif %}"
                   "{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:", "a system message must come first"),
    "type error": ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] + (1 if m['role'] == 'system' else '') }}\n"
                   "{% endfor %}assistant:", "TypeError"),
}


@pytest.mark.llamacpp
@pytest.mark.parametrize("case", sorted(REFUSING_TEMPLATES))
def test_a_template_that_refuses_the_request_is_a_400_and_the_replica_serves_on(case):
    """A real llama.cpp model whose chat template raises on one request: the worker answers 400 naming the
    template and why, and its next request generates."""
    import llama_cpp
    from llama_cpp import llama_chat_format

    from switchboard.engines.llamacpp.paths import default_model_path
    from switchboard.engines.llamacpp.worker import _counting, _Generator, build_app

    template, why = REFUSING_TEMPLATES[case]
    handler = llama_chat_format.Jinja2ChatFormatter(template=template, eos_token="</s>", bos_token="<s>").to_chat_handler()
    llm = _counting(llama_cpp.Llama)(model_path=str(default_model_path()), n_ctx=256, n_threads=1, verbose=False,
                                     chat_handler=handler)
    generator = _Generator(lambda: llm)

    async def post(messages: list) -> httpx.Response:
        transport = httpx.ASGITransport(app=build_app(generator, "smol", 256, 0.0))
        async with httpx.AsyncClient(transport=transport, base_url="http://worker") as client:
            return await client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 3, "temperature": 0})

    try:
        refused = asyncio.run(post([{"role": "user", "content": "hi"}, {"role": "system", "content": "late"}]))
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert error["code"] == "invalid_request" and "chat template" in error["message"] and why in error["message"]
        served = asyncio.run(post([{"role": "user", "content": [{"type": "text", "text": "hi"}]}]))
        assert served.status_code == 200, served.text
        assert served.json()["usage"]["completion_tokens"] >= 1
    finally:
        llm.close()
