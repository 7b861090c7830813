"""logprobs and top_logprobs on the llama.cpp engine, computed from the last position's logits as the worker's
generation samples (engines/llamacpp/logprobs.py), never with `logits_all`.

- The values are llama.cpp's own: on the same prompt at temperature 0, the worker's numbers, from a model
  loaded without `logits_all`, equal llama-cpp-python's `logits_all` logprobs exactly (float32 for float32).
- Through the real gateway with the official openai client: chat's `choices[].logprobs.content[]` and the
  legacy completions' parallel lists, whole and streamed, tokens that concatenate to the answer; the 400s.
- The alignment of tokens to the emitted text, and the formats, on their own (no model).
"""

from __future__ import annotations

import asyncio

import numpy as np
import openai
import pytest

from switchboard.engines.llamacpp.logprobs import (
    Aligner,
    TokenLogprob,
    chat_logprobs,
    completion_logprobs,
    log_softmax,
    num_top_asked,
    token_logprob,
)

# --- without a model ---------------------------------------------------------------------------------------------


def _tok(piece: bytes, logprob: float = -0.5) -> TokenLogprob:
    return TokenLogprob(piece, logprob, ((piece, logprob),))


def test_log_softmax_is_llama_cpps_arithmetic():
    llama_cpp = pytest.importorskip("llama_cpp")
    logits = np.random.default_rng(0).normal(0, 8, size=49152).astype(np.single)
    ours = log_softmax(logits)
    assert ours.dtype == np.single
    assert np.array_equal(ours, llama_cpp.Llama.logits_to_logprobs(logits))
    assert abs(float(np.exp(ours.astype(np.double)).sum()) - 1.0) < 1e-4


def test_token_logprob_takes_the_sampled_token_and_the_most_likely_first():
    logits = np.array([0.0, 3.0, 1.0, 3.0, -2.0], dtype=np.single)
    piece = lambda i: f"t{i}".encode()  # noqa: E731
    got = token_logprob(logits, 2, 3, piece)
    expected = log_softmax(logits)
    assert got.token_bytes == b"t2" and got.logprob == float(expected[2])
    assert [b for b, _ in got.top] == [b"t1", b"t3", b"t2"]  # a tie goes to the lower id
    assert token_logprob(logits, 2, 0, piece).top == ()
    # One token far above the rest (the others outside the window looked in first), and a flat distribution.
    peaked = np.full(1000, -30.0, dtype=np.single)
    peaked[[7, 9, 11]] = [10.0, -29.0, -28.0]
    assert [b for b, _ in token_logprob(peaked, 7, 3, piece).top] == [b"t7", b"t11", b"t9"]
    flat = token_logprob(np.zeros(1000, dtype=np.single), 0, 20, piece)
    assert len(flat.top) == 20 and all(lp == pytest.approx(-np.log(1000)) for _, lp in flat.top)


def test_tokens_are_handed_out_with_the_text_that_completes_them():
    # "É" is split over two tokens (0xC3 | 0x89 + "t"); llama-cpp-python emits it only once whole.
    tokens = [_tok(b"L"), _tok(b"\xc3"), _tok(b"\x89t"), _tok(b"e!"), _tok(b"STOP"), _tok(b"<eos>")]
    aligner = Aligner(tokens)
    assert [a.token.token_bytes for a in aligner.take("L")] == [b"L"]
    assert aligner.take("") == []
    assert [(a.token.token_bytes, a.text_offset) for a in aligner.take("Ét")] == [(b"\xc3", 1), (b"\x89t", 2)]
    # A stop sequence "!STOP" cut the answer inside the token "e!": the text ends at "e".
    assert aligner.take("e") == []
    assert [(a.token.token_bytes, a.text_offset) for a in aligner.rest()] == [(b"e!", 3)]
    assert aligner.rest() == []  # the stop sequence's and the end-of-generation tokens are not the answer's


def test_the_two_formats():
    aligner = Aligner([TokenLogprob(b" Paris", -0.25, ((b" Paris", -0.25), (b" the", -2.5))), TokenLogprob(b"\xc3", -1.0, ())])
    tokens = aligner.take(" Paris\N{LATIN CAPITAL LETTER E WITH ACUTE}")
    assert chat_logprobs(tokens) == {"refusal": None, "content": [
        {"token": " Paris", "logprob": -0.25, "bytes": list(b" Paris"),
         "top_logprobs": [{"token": " Paris", "logprob": -0.25, "bytes": list(b" Paris")}, {"token": " the", "logprob": -2.5, "bytes": list(b" the")}]},
        {"token": "\N{REPLACEMENT CHARACTER}", "logprob": -1.0, "bytes": [0xC3], "top_logprobs": []}]}
    assert completion_logprobs(tokens) == {"tokens": [" Paris", "\N{REPLACEMENT CHARACTER}"], "token_logprobs": [-0.25, -1.0],
                                           "top_logprobs": [{" Paris": -0.25, " the": -2.5}, {"\N{REPLACEMENT CHARACTER}": -1.0}],
                                           "text_offset": [0, 6]}


@pytest.mark.parametrize(("kind", "body", "expected"), [
    ("chat", {}, None), ("chat", {"logprobs": False, "top_logprobs": 3}, None), ("chat", {"logprobs": True}, 0),
    ("chat", {"logprobs": True, "top_logprobs": 20}, 20), ("completion", {}, None), ("completion", {"logprobs": 0}, 0),
    ("completion", {"logprobs": 5}, 5), ("completion", {"logprobs": None}, None),
])
def test_what_a_request_asks_for(kind, body, expected):
    assert num_top_asked(kind, body) == expected


# --- llama.cpp's own logprobs --------------------------------------------------------------------------------------

PROMPT = "The capital of France is"
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def _worker_tokens(kind: str, body: dict) -> tuple[str, list]:
    """The worker's generation path (engines/llamacpp/worker.py), on a fresh model loaded as the worker loads it."""
    import llama_cpp

    from switchboard.engines.llamacpp.paths import default_model_path
    from switchboard.engines.llamacpp.worker import _counting, _Generator

    llm = _counting(llama_cpp.Llama)(model_path=str(default_model_path()), n_ctx=256, n_threads=1, verbose=False)
    assert llm._logits_all is False

    async def drain() -> list:
        return [event async for event in _Generator(lambda: llm).events(kind, body)]

    events = asyncio.run(drain())
    assert events[-1][0] == "finish", events[-1]
    llm.close()
    return "".join(e[1] for e in events if e[0] == "text"), [t for e in events if e[0] == "text" for t in e[2]]


def _llama_cpp_logits_all():
    import llama_cpp

    from switchboard.engines.llamacpp.paths import default_model_path

    return llama_cpp.Llama(model_path=str(default_model_path()), n_ctx=256, n_threads=1, logits_all=True, verbose=False)


@pytest.mark.llamacpp
def test_completion_logprobs_equal_llama_cpps_logits_all_path():
    text, tokens = _worker_tokens("completion", {"prompt": PROMPT, "max_tokens": 8, "temperature": 0, "logprobs": 3})
    reference = _llama_cpp_logits_all()
    choice = reference.create_completion(PROMPT, max_tokens=8, temperature=0, logprobs=3)["choices"][0]
    reference.close()
    assert text == choice["text"]
    ours = completion_logprobs(tokens)
    want = choice["logprobs"]
    assert len(ours["tokens"]) == 8 and ours["tokens"] == want["tokens"]
    assert ours["token_logprobs"] == [float(v) for v in want["token_logprobs"]]  # exact: the same float32 values
    assert ours["top_logprobs"] == [{k: float(v) for k, v in top.items()} for top in want["top_logprobs"]]
    assert ours["text_offset"] == [o - len(PROMPT) for o in want["text_offset"]]  # llama.cpp counts the prompt in


@pytest.mark.llamacpp
def test_chat_logprobs_equal_llama_cpps_logits_all_path():
    text, tokens = _worker_tokens("chat", {"messages": MESSAGES, "max_tokens": 8, "temperature": 0, "logprobs": True, "top_logprobs": 4})
    reference = _llama_cpp_logits_all()
    choice = reference.create_chat_completion(MESSAGES, max_tokens=8, temperature=0, logprobs=True, top_logprobs=4)["choices"][0]
    reference.close()
    assert text == choice["message"]["content"]
    ours = chat_logprobs(tokens)["content"]
    want = choice["logprobs"]["content"]
    assert len(ours) == len(want) > 0
    assert [(t["token"], t["logprob"]) for t in ours] == [(t["token"], float(t["logprob"])) for t in want]
    # llama-cpp-python's top list holds the sampled token too (its legacy map, converted): the same 4 at greedy.
    assert [[(a["token"], a["logprob"]) for a in t["top_logprobs"]] for t in ours] == \
        [[(a["token"], float(a["logprob"])) for a in t["top_logprobs"]][:4] for t in want]


# --- through the gateway, with the official client -----------------------------------------------------------------

CONFIG = """
experts:
  - id: smol
    backend: {kind: llamacpp, n_threads: 1}
    context_tokens: 1024
    warm_at_start: true
    ttft_slo_s: 300             # a loaded test machine must not turn answers into 429s
storage: {enabled: false}
"""


@pytest.fixture(scope="module")
def client():
    from switchboard.config import parse_config
    from switchboard.gateway.app import build_app
    from switchboard.testing.servers import serve_in_thread

    with serve_in_thread(build_app(parse_config(CONFIG)), startup_timeout_s=180) as url:
        with openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120) as c:
            yield c


def _check_chat(content: str, entries: list, num_top: int) -> None:
    assert entries and "".join(e.token for e in entries) == content
    for entry in entries:
        assert entry.bytes == list(entry.token.encode()) and entry.logprob <= 0
        assert len(entry.top_logprobs) == num_top
        assert [a.logprob for a in entry.top_logprobs] == sorted((a.logprob for a in entry.top_logprobs), reverse=True)
        # Greedy: the sampled token is the most likely one.
        assert (entry.top_logprobs[0].token, entry.top_logprobs[0].logprob) == (entry.token, entry.logprob)


@pytest.mark.llamacpp
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
    # The same tokens; the values differ in the last digits, as llama.cpp's own do, when the second request
    # reuses the first one's prompt from the KV cache (one token evaluated instead of a batch).
    assert [e.token for e in streamed] == [e.token for e in whole.logprobs.content]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in whole.logprobs.content], abs=0.2)


@pytest.mark.llamacpp
def test_answers_with_logprobs_conform_to_the_openapi_document(client):
    from switchboard.gateway.schemas import ChatCompletion, TextCompletion

    chat = client.chat.completions.with_raw_response.create(model="smol", messages=MESSAGES, max_tokens=4, temperature=0, logprobs=True,
                                                            top_logprobs=2)
    assert ChatCompletion.model_validate_json(chat.text).choices[0].logprobs.content
    legacy = client.completions.with_raw_response.create(model="smol", prompt=PROMPT, max_tokens=4, temperature=0, logprobs=2)
    assert TextCompletion.model_validate_json(legacy.text).choices[0].logprobs.tokens


@pytest.mark.llamacpp
def test_no_logprobs_unless_asked(client):
    whole = client.chat.completions.create(model="smol", messages=MESSAGES, max_tokens=4, temperature=0, logprobs=False)
    assert whole.choices[0].logprobs is None
    chunks = list(client.chat.completions.create(model="smol", messages=MESSAGES, max_tokens=4, temperature=0, stream=True))
    assert all(c.choices[0].logprobs is None for c in chunks if c.choices)


@pytest.mark.llamacpp
def test_logprobs_with_zero_alternatives_and_n_choices(client):
    answer = client.chat.completions.create(model="smol", messages=MESSAGES, max_tokens=5, temperature=0, logprobs=True, n=2)
    assert [c.index for c in answer.choices] == [0, 1]
    for choice in answer.choices:
        assert "".join(e.token for e in choice.logprobs.content) == choice.message.content
        assert all(e.top_logprobs == [] for e in choice.logprobs.content)


@pytest.mark.llamacpp
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


@pytest.mark.llamacpp
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


@pytest.mark.llamacpp
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
