"""logprobs and top_logprobs on the llama.cpp engine, computed from the last position's logits as the worker's
generation samples (engines/llamacpp/logprobs.py), never with `logits_all`. Through the gateway and the
official client: tests/engines/test_llamacpp_fields.py.

- The values are llama.cpp's own: on the same prompt at temperature 0, the worker's numbers, from a model
  loaded without `logits_all`, equal llama-cpp-python's `logits_all` logprobs exactly (float32 for float32).
- The alignment of tokens to the emitted text, and the formats, on their own (no model).
"""

from __future__ import annotations

import asyncio

import numpy as np
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


@pytest.mark.llamacpp
def test_echoed_prompt_logprobs_are_the_logits_of_every_position():
    """`echo` with `logprobs` (what lm-eval's loglikelihood asks): the prompt's tokens, each scored given those
    before it, then the answer's, from a model loaded without `logits_all` (the prompt evaluated a few rows of
    logits at a time) — equal, to float32 rounding (batches of other sizes sum in other orders), to the log-softmax
    of llama-cpp-python's `logits_all` scores at each previous position. (Its own echo logprobs are not the
    reference: they are read one row off, and drop the last token.) The answer's tokens are the generation's, as
    without echo (test_completion_logprobs_equal_llama_cpps_logits_all_path): one token a decode, which rounds
    differently from a whole-text batch."""
    prompt = "The capital of France is Paris. The capital of Italy is"
    text, tokens = _worker_tokens("completion", {"prompt": prompt, "max_tokens": 3, "temperature": 0, "logprobs": 2, "echo": True})
    ours = completion_logprobs(tokens)
    assert text.startswith(prompt) and "".join(ours["tokens"]) == text
    reference = _llama_cpp_logits_all()
    ids, num_prompt = reference.tokenize(text.encode(), add_bos=False), len(reference.tokenize(prompt.encode(), add_bos=False))
    reference.eval(ids)
    want = [None] + [float(log_softmax(reference.scores[i])[ids[i + 1]]) for i in range(len(ids) - 1)]
    top2 = [None] + [sorted(log_softmax(reference.scores[i]).tolist(), reverse=True)[:2] for i in range(len(ids) - 1)]
    reference.close()
    assert len(ours["tokens"]) == len(ids) == num_prompt + 3 and "".join(ours["tokens"][:num_prompt]) == prompt
    assert ours["token_logprobs"][0] is None and ours["top_logprobs"][0] is None  # nothing comes before the first token
    assert np.allclose(ours["token_logprobs"][1:num_prompt], want[1:num_prompt], atol=2e-3)
    for mine, best in zip(ours["top_logprobs"][1:num_prompt], top2[1:num_prompt]):  # the two most likely, and the token's own
        assert np.allclose(sorted(mine.values(), reverse=True)[:2], best, atol=2e-3)
    assert ours["text_offset"] == [len("".join(ours["tokens"][:i])) for i in range(len(ids))]


@pytest.mark.llamacpp
def test_a_scored_prompt_leaves_the_cache_ready_for_the_next_request():
    """Scoring evaluates the whole prompt (its every position's logits are wanted) and leaves the context holding it:
    the same greedy answer as without echo, and a following request reuses the prefix as usual."""
    import llama_cpp

    from switchboard.engines.llamacpp.paths import default_model_path
    from switchboard.engines.llamacpp.worker import _counting, _Generator

    llm = _counting(llama_cpp.Llama)(model_path=str(default_model_path()), n_ctx=256, n_threads=1, verbose=False)
    generator = _Generator(lambda: llm)

    async def run(body: dict) -> list:
        return [event async for event in generator.events("completion", body)]

    plain = asyncio.run(run({"prompt": PROMPT, "max_tokens": 6, "temperature": 0}))
    echoed = asyncio.run(run({"prompt": PROMPT, "max_tokens": 6, "temperature": 0, "echo": True, "logprobs": 0}))
    again = asyncio.run(run({"prompt": PROMPT + " Paris", "max_tokens": 6, "temperature": 0}))
    llm.close()
    answer = "".join(e[1] for e in plain if e[0] == "text")
    assert "".join(e[1] for e in echoed if e[0] == "text") == PROMPT + answer
    assert echoed[-1][1]["cached_tokens"] == 0 and again[-1][1]["cached_tokens"] >= 5  # the scored prompt is the cached prefix
