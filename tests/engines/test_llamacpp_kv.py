"""The worker's KV states (engines/llamacpp/kv.py): the chat template's shared prefix, its file, and a context
freed and made again, on the real SmolLM2 model in this process."""

from __future__ import annotations

import pytest

from switchboard.engines.llamacpp import kv
from switchboard.engines.llamacpp.paths import default_model_path
from switchboard.engines.llamacpp.worker import _counting


@pytest.fixture(scope="module")
def llm():
    import llama_cpp

    model = _counting(llama_cpp.Llama)(model_path=str(default_model_path()), n_ctx=256, n_threads=1, verbose=False)
    yield model
    model.close()


def _greedy(llm, text: str) -> str:
    out = llm.create_chat_completion(messages=[{"role": "user", "content": text}], max_tokens=6, temperature=0)
    return out["choices"][0]["message"]["content"]


@pytest.mark.llamacpp
def test_the_template_prefix_is_what_every_prompt_without_a_system_message_starts_with(llm):
    prefix = kv.template_prefix(llm)
    text = llm.detokenize(prefix, special=True).decode()
    assert "You are a helpful AI assistant named SmolLM" in text and text.endswith("user\n")
    _greedy(llm, "What is 2 + 2?")
    assert llm.last_prompt_tokens[: len(prefix)] == prefix and len(llm.last_prompt_tokens) > len(prefix)


@pytest.mark.llamacpp
def test_a_context_freed_and_made_again_with_its_cells_restored_answers_as_before(llm):
    llm.reset()
    before = _greedy(llm, "Name a fruit.")
    snapshot = kv.take_snapshot(llm)
    prompt = tuple(llm.last_prompt_tokens)
    assert snapshot.tokens[: len(prompt)] == prompt and snapshot.num_bytes > 0  # the prompt and the answer
    kv.free_context(llm)
    kv.new_context(llm)
    assert llm.n_tokens == 0
    assert kv.restore_snapshot(llm, snapshot)
    assert llm.n_tokens == len(snapshot.tokens)
    assert _greedy(llm, "Name a fruit.") == before


@pytest.mark.llamacpp
def test_warm_up_writes_the_prefix_file_then_restores_it(llm, tmp_path):
    first = kv.warm_up(llm, str(default_model_path()), tmp_path)
    assert first.num_prefix_tokens > 0 and not first.is_restored
    assert llm.n_tokens == first.num_prefix_tokens
    second = kv.warm_up(llm, str(default_model_path()), tmp_path)
    assert second == kv.WarmUp(first.num_prefix_tokens, is_restored=True)
    assert list(llm.input_ids[: llm.n_tokens]) == kv.template_prefix(llm)
    # Without a directory, the prefix is evaluated every time.
    assert kv.warm_up(llm, str(default_model_path()), None) == kv.WarmUp(first.num_prefix_tokens, is_restored=False)


def test_prefix_files_round_trip_and_anything_else_reads_as_none(tmp_path):
    snapshot = kv.KvSnapshot((1, 2, 3), b"\x00cells\xff")
    path = tmp_path / "sub" / "a.kv"
    kv.write_prefix_file(path, snapshot)
    assert kv.read_prefix_file(path) == snapshot
    assert kv.read_prefix_file(tmp_path / "missing.kv") is None
    (tmp_path / "junk.kv").write_bytes(b"not ours")
    assert kv.read_prefix_file(tmp_path / "junk.kv") is None
    assert [p.name for p in path.parent.iterdir()] == ["a.kv"]  # no temporary file left behind


def test_the_prefix_file_is_named_by_the_model_file_and_the_tokens(tmp_path):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"weights")
    a = kv.prefix_file(tmp_path, str(model), [1, 2])
    assert a == kv.prefix_file(tmp_path, str(model), [1, 2])
    assert a != kv.prefix_file(tmp_path, str(model), [1, 3])
    model.write_bytes(b"other weights")
    assert a != kv.prefix_file(tmp_path, str(model), [1, 2])


def test_the_config_sets_the_sleep_level_and_the_prefix_directory():
    from switchboard.config import parse_config
    from switchboard.engines.llamacpp.engine import LlamaCppEngine

    config = parse_config("""
experts:
  - id: a
    backend: {kind: llamacpp}
  - id: b
    backend: {kind: llamacpp, sleep_level: 2, prefix_cache_dir: null}
""")
    a, b = (LlamaCppEngine.from_config(e.id, e.context_tokens, e.backend) for e in config.experts)
    assert a.sleep_call.path == "/sleep?level=1" and a.prefix_cache_dir is not None and "~" not in str(a.prefix_cache_dir)
    assert b.sleep_call.path == "/sleep?level=2" and b.prefix_cache_dir is None
    with pytest.raises(ValueError):
        parse_config("experts:\n  - id: c\n    backend: {kind: llamacpp, sleep_level: 3}\n")


@pytest.mark.llamacpp
def test_a_chat_format_that_cannot_render_gives_no_prefix_and_the_plain_warm_up(llm, tmp_path):
    saved = llm.chat_handler

    def refusing_handler(**_):
        raise ValueError("this template needs a system message")

    llm.chat_handler = refusing_handler
    try:
        assert kv.template_prefix(llm) == []
        assert kv.warm_up(llm, str(default_model_path()), tmp_path) == kv.WarmUp(0, is_restored=False)
        assert list(tmp_path.iterdir()) == []
    finally:
        llm.chat_handler = saved
