"""The local embedding model: the same vectors as sentence-transformers on torch, token counts from its
tokenizer, and the batcher that lets concurrent requests share runs of the model."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

import numpy as np
import pytest

from switchboard.config.schema import OnnxEmbeddingBackend
from switchboard.embeddings.base import EmbeddingRequest
from switchboard.embeddings.local import Batcher, OnnxEmbeddingEngine, default_model_dir
from switchboard.engines.base import EngineRejected

TEXTS = ["hi", "The quick brown fox jumps over the lazy dog. " * 3, "word " * 400, "Paris is the capital of France.", ""]


@pytest.fixture(scope="module")
def engine():
    engine = OnnxEmbeddingEngine("minilm", OnnxEmbeddingBackend(kind="onnx", max_batch=2))
    asyncio.run(engine.start())  # exports the model into the cache first if `make install` has not
    yield engine
    asyncio.run(engine.stop())


def embed(engine, texts, **body):
    request = EmbeddingRequest("embd-1", {"model": "minilm", "input": texts, **body}, texts, None)
    return asyncio.run(engine.embed(request)), request


def test_vectors_equal_sentence_transformers_and_usage_is_the_tokenizers_count(engine):
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

    answer, request = embed(engine, TEXTS)
    vectors = np.array([d["embedding"] for d in answer.body["data"]])
    reference = SentenceTransformer(str(default_model_dir()), device="cpu", local_files_only=True).encode(TEXTS, normalize_embeddings=True)
    assert vectors.shape == (len(TEXTS), 384)
    assert [d["index"] for d in answer.body["data"]] == list(range(len(TEXTS)))
    np.testing.assert_allclose(vectors, reference, atol=1e-5)  # max_batch=2: several runs, padded differently
    tokenizer = Tokenizer.from_file(str(default_model_dir() / "tokenizer.json"))
    tokenizer.no_padding()  # the file pads to 128
    tokenizer.no_truncation()
    expected = sum(min(256, len(tokenizer.encode(t).ids)) for t in TEXTS)  # [CLS] ... [SEP], cut at 256 as sentence-transformers does
    assert answer.num_prompt_tokens == engine.count_tokens(request) == expected
    assert answer.body["usage"] == {"prompt_tokens": expected, "total_tokens": expected}


def test_base64_is_the_float32_bytes(engine):
    floats, _ = embed(engine, ["hello"])
    encoded, _ = embed(engine, ["hello"], encoding_format="base64")
    import base64

    decoded = np.frombuffer(base64.b64decode(encoded.body["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_array_equal(decoded, floats.body["data"][0]["embedding"])


@pytest.mark.parametrize(("body", "param"), [({"dimensions": 128}, "dimensions"), ({"truncate": True}, "truncate")])
def test_what_the_model_cannot_do_is_a_400_naming_the_field(engine, body, param):
    with pytest.raises(EngineRejected) as err:
        embed(engine, ["x"], **body)
    assert err.value.param == param
    with pytest.raises(EngineRejected):
        engine.count_tokens(EmbeddingRequest("embd-2", {"model": "minilm", "input": [1, 2]}, None, [[1, 2]]))
    embed(engine, ["x"], dimensions=384)  # its own size is fine


async def test_queued_requests_share_runs_and_each_gets_its_own_vectors_in_order():
    release = threading.Event()
    runs: list[list[str]] = []

    def run(texts):
        if not runs:
            release.wait(10)  # the first run blocks until every request is queued
        runs.append(list(texts))
        return np.array([[float(t.split("-")[1]), 1.0] for t in texts], dtype=np.float32), np.array([len(t) for t in texts])

    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        batcher = Batcher(run, max_batch=4, executor=executor)
        first = asyncio.create_task(batcher.submit(["a-0"]))
        await asyncio.sleep(0.05)
        rest = [asyncio.create_task(batcher.submit([f"r{i}-{j}" for j in range(n)])) for i, n in enumerate((2, 3, 1))]
        cancelled = asyncio.create_task(batcher.submit(["gone-99"]))
        await asyncio.sleep(0.05)
        cancelled.cancel()
        release.set()
        results = await asyncio.gather(first, *rest)
    # One run for the first request, then the six queued inputs in runs of at most four, in arrival order;
    # the cancelled request's input is never run.
    assert runs == [["a-0"], ["r0-0", "r0-1", "r1-0", "r1-1"], ["r1-2", "r2-0"]]
    for (vectors, num_tokens), n in zip(results[1:], (2, 3, 1)):
        assert vectors[:, 0].tolist() == list(range(n)) and len(num_tokens) == n
    assert batcher.num_runs == 3 and not batcher.pending


async def test_a_failed_run_fails_only_its_requests():
    calls = 0

    def run(texts):
        nonlocal calls
        calls += 1
        if "bad-0" in texts:
            raise RuntimeError("model exploded")
        return np.ones((len(texts), 2), dtype=np.float32), np.ones(len(texts))

    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        batcher = Batcher(run, max_batch=1, executor=executor)
        bad, good = batcher.submit(["bad-0", "bad-1"]), batcher.submit(["ok-0"])
        results = await asyncio.gather(bad, good, return_exceptions=True)
    assert isinstance(results[0], RuntimeError) and results[1][0].shape == (1, 2)
    assert calls == 2  # bad-1 was skipped once its request had failed


def test_a_missing_onnx_file_is_exported_on_first_use_and_serves_the_same_vectors(engine, tmp_path):
    fresh = OnnxEmbeddingEngine("fresh", OnnxEmbeddingBackend(kind="onnx", onnx_path=str(tmp_path / "cache" / "minilm-fp32.onnx")))
    try:
        answer, _ = embed(fresh, ["exported just now"])  # runs `python -m switchboard.embeddings.prepare` in a child
    finally:
        asyncio.run(fresh.stop())
    assert (tmp_path / "cache" / "minilm-fp32.onnx").is_file()
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".export-")]  # nothing half-written left
    reference, _ = embed(engine, ["exported just now"])
    np.testing.assert_allclose(answer.body["data"][0]["embedding"], reference.body["data"][0]["embedding"], atol=1e-6)


def test_an_export_that_fails_is_a_503_saying_how_to_fix_it(tmp_path):
    from switchboard.engines.base import EngineUnavailable

    broken = OnnxEmbeddingEngine("broken", OnnxEmbeddingBackend(kind="onnx", model_dir=str(tmp_path), onnx_path=str(tmp_path / "x.onnx")))
    with pytest.raises(EngineUnavailable) as err:
        asyncio.run(broken.start())
    assert err.value.status == 503 and "switchboard embeddings prepare" in err.value.detail
