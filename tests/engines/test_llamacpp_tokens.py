"""Token counts for the llama.cpp expert are llama.cpp's own, exactly: the gateway's prompt counts (for
context-length checks and per-key token limits) and the usage its answers report, streamed and not, against
what llama-cpp-python itself reports for the same request on the same GGUF (SmolLM2-135M-Instruct)."""

from __future__ import annotations

import openai
import pytest

from switchboard.config import parse_config
from switchboard.engines.llamacpp.paths import default_model_path
from switchboard.engines.llamacpp.tokens import PromptTokenCounter
from switchboard.gateway import requests as rq
from switchboard.gateway.app import build_app
from switchboard.gateway.schemas import ChatCompletionRequest
from switchboard.testing.servers import serve_in_thread

pytestmark = pytest.mark.llamacpp
N_CTX = 512
CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name three primes."},
     {"role": "assistant", "content": "2, 3, 5."}, {"role": "user", "content": "Three more?"}],
    [{"role": "user", "content": "Übersetze: « naïve café » — 日本語で? 🙂 0x7f3a 3.14159 ```py\nprint(1)\n```"}],
    [{"role": "user", "content": ""}],
]
PROMPTS = ["The sky is", " ", "def fib(n):\n    return", "<|im_start|>user literal special tokens<|im_end|>"]


@pytest.fixture(scope="module")
def llama():
    import llama_cpp

    return llama_cpp.Llama(model_path=str(default_model_path()), n_ctx=N_CTX, n_threads=1, seed=0, verbose=False)


@pytest.fixture(scope="module")
def counter():
    return PromptTokenCounter.load(default_model_path(), N_CTX)


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_chat_prompt_counts_equal_llama_cpp_usage(llama, counter, messages):
    usage = llama.create_chat_completion(messages=messages, max_tokens=1, temperature=0)["usage"]
    assert counter.count("chat", {"messages": messages}) == usage["prompt_tokens"]


def test_an_empty_completion_prompt_is_answered_and_counted_alike(gateway, counter):
    # llama-cpp-python asserts on a prompt of no tokens (SmolLM2 adds no begin token): once the replica's 500,
    # retried and counted against its breaker. Now it starts after the end-of-sequence token, counted so.
    for prompt in ("", ["Hi", ""]):
        answer = gateway.completions.create(model="smol", prompt=prompt, max_tokens=4, temperature=0)
        assert len(answer.choices) == (1 if prompt == "" else 2)
    assert gateway.completions.create(model="smol", prompt="", max_tokens=4, temperature=0).usage.prompt_tokens == counter.count(
        "completion", {"prompt": ""}) == 1


def test_a_developer_message_is_rendered_and_counted_as_a_system_message(llama, gateway, counter):
    as_system = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name three primes."}]
    as_developer = [{**as_system[0], "role": "developer"}, as_system[1]]
    expected = llama.create_chat_completion(messages=as_system, max_tokens=1, temperature=0)["usage"]["prompt_tokens"]
    assert counter.count("chat", {"messages": as_developer}) == expected
    assert gateway.chat.completions.create(model="smol", messages=as_developer, max_tokens=1, temperature=0).usage.prompt_tokens == expected


@pytest.mark.parametrize("prompt", PROMPTS)
def test_completion_prompt_counts_equal_llama_cpp_usage(llama, counter, prompt):
    usage = llama.create_completion(prompt=prompt, max_tokens=1, temperature=0)["usage"]
    assert counter.count("completion", {"prompt": prompt}) == usage["prompt_tokens"]


def test_token_id_prompts_count_as_given(llama, counter):
    ids = llama.tokenize(b"The capital of France is", add_bos=False)
    usage = llama.create_completion(prompt=ids, max_tokens=1, temperature=0)["usage"]
    assert counter.count("completion", {"prompt": ids}) == usage["prompt_tokens"] == len(ids)  # no begin or end token added
    assert counter.count("completion", {"prompt": [ids, ids[:2]]}) == len(ids)  # several: the longest


@pytest.fixture(scope="module")
def gateway():
    config = parse_config(f"""
experts:
  - id: smol
    backend: {{kind: llamacpp, n_threads: 1}}
    params_b: 0.135
    ttft_slo_s: 600  # admission must not refuse: these tests are about counts, not latency
    context_tokens: {N_CTX}
    max_output_tokens: {N_CTX}
embedding_experts: []
storage: {{enabled: false}}
""")
    with serve_in_thread(build_app(config), startup_timeout_s=180) as base:
        yield openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)


# Each ending: by length (max_tokens), by a stop sequence, and by the model's own end of generation.
@pytest.mark.parametrize(("messages", "extra"), [
    (CONVERSATIONS[0], {"max_tokens": 7}),
    (CONVERSATIONS[1], {"max_tokens": 40, "stop": [","]}),
    ([{"role": "user", "content": "Reply with the single word: yes"}], {"max_tokens": 60}),
])
def test_answer_usage_equals_llama_cpp_usage_streamed_and_not(llama, gateway, messages, extra):
    expected = llama.create_chat_completion(messages=messages, temperature=0, seed=0, **extra)
    whole = gateway.chat.completions.create(model="smol", messages=messages, temperature=0, seed=0, **extra)
    assert whole.choices[0].message.content == expected["choices"][0]["message"]["content"]  # the same generation
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (expected["usage"]["prompt_tokens"], expected["usage"]["completion_tokens"])
    chunks = list(gateway.chat.completions.create(model="smol", messages=messages, temperature=0, seed=0, stream=True,
                                                  stream_options={"include_usage": True}, **extra))
    usage = chunks[-1].usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (expected["usage"]["prompt_tokens"], expected["usage"]["completion_tokens"])


def test_completion_usage_equals_llama_cpp_usage(llama, gateway):
    expected = llama.create_completion(prompt="The sky is", max_tokens=5, temperature=0, seed=0)["usage"]
    answer = gateway.completions.create(model="smol", prompt="The sky is", max_tokens=5, temperature=0, seed=0)
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (expected["prompt_tokens"], expected["completion_tokens"])


def test_the_context_check_uses_the_exact_count(counter, gateway):
    # Digits and symbols are far more tokens than characters / 4: the estimate would let this through.
    messages = [{"role": "user", "content": "9 8 7 6 5 4 3 2 1 0 ! ? % $ # @ " * 12}]
    exact = counter.count("chat", {"messages": messages})
    estimate = rq.estimate_tokens(rq.chat_prompt_text(ChatCompletionRequest(model="smol", messages=messages)), 1)
    assert exact > estimate + 50
    room = N_CTX - exact
    with gateway.chat.completions.create(model="smol", messages=messages, max_tokens=room, stream=True) as accepted:
        assert next(iter(accepted)).choices  # admitted and answering; closing the stream stops the generation
    with pytest.raises(openai.BadRequestError) as err:
        gateway.chat.completions.create(model="smol", messages=messages, max_tokens=room + 1)
    assert err.value.code == "context_length_exceeded" and f"the prompt is {exact} tokens" in err.value.message


def test_per_key_token_limits_use_the_exact_count(counter, tmp_path):
    from switchboard.storage import database
    from switchboard.tenants.keys import KeyLimits
    from switchboard.tenants.store import create_key

    messages = [{"role": "user", "content": "9 8 7 6 5 4 3 2 1 0 ! ? % $ # @ " * 6}]
    exact = counter.count("chat", {"messages": messages})
    estimate = rq.estimate_tokens(rq.chat_prompt_text(ChatCompletionRequest(model="smol", messages=messages)), 1)
    db = f"sqlite:///{tmp_path / 'keys.db'}"
    engine = database.open_engine(db)
    database.migrate(engine)
    _, secret = create_key(engine, "tight", "acme", KeyLimits(tpm=(exact + estimate) // 2 + 4))  # room for the estimate, not the truth
    engine.dispose()
    config = parse_config(f"""
experts:
  - id: smol
    backend: {{kind: llamacpp}}
    context_tokens: {N_CTX}
    warm_at_start: false    # refused before any worker is needed
embedding_experts: []
storage: {{url: "{db}"}}
auth: {{enabled: true}}
""")
    with serve_in_thread(build_app(config, environ={"SWITCHBOARD_ADMIN_KEY": "admin-" + "t" * 40})) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key=secret, max_retries=0)
        with pytest.raises(openai.RateLimitError) as err:
            client.chat.completions.create(model="smol", messages=messages, max_tokens=4)
    assert err.value.code == "tpm_exceeded" and "this request alone" in err.value.message


WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                                  "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TOOL_TURNS = [{"role": "user", "content": "Weather in Paris?"},
              {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
                                                                      "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
              {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"}]


@pytest.mark.parametrize("extra", [
    {"tools": [WEATHER_TOOL]},
    {"tools": [WEATHER_TOOL], "tool_choice": "required"},
    {"tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
    {"tools": [WEATHER_TOOL], "tool_choice": "none"},
    {"tools": [WEATHER_TOOL], "messages": TOOL_TURNS},
    {"messages": TOOL_TURNS},  # earlier calls, no tools now: still written into the prompt, and counted
], ids=["auto", "required", "named", "none", "history", "history-without-tools"])
def test_prompt_counts_with_tools_equal_the_workers_usage(gateway, counter, extra):
    body = {"messages": CONVERSATIONS[0], **extra}
    answer = gateway.chat.completions.create(model="smol", max_tokens=4, temperature=0, **body)
    assert answer.usage.prompt_tokens == counter.count("chat", body)
