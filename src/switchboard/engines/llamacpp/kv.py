"""The llama.cpp worker's cheap context states: the chat template's shared prefix evaluated before the first
request (and kept on disk, so a new process restores it instead of evaluating it), and level-1 sleep (the
context freed, the model and a host copy of the KV cache's used cells kept).

Why: on SmolLM2-135M the first request after a start or a wake spent ~0.19 s before its first token, and that
was not one-off set-up but prompt evaluation: 34 tokens, 24 of them the template's default system prompt
("You are a helpful AI assistant named SmolLM...") that every request without its own system message shares.
Later requests were fast only because llama-cpp-python reuses the longest common prefix with the previous
context. Evaluating that prefix in the warm-up makes the first request like every later one; keeping it in a
file (llama.cpp's own sequence-state format, the idea of llama.cpp server's `--slot-save-path` and of LMCache)
takes ~1 ms to restore where evaluating it takes ~0.14 s.

Everything here runs on the worker's one llama thread (llama.cpp is not thread-safe). Some of it reaches into
llama-cpp-python's `Llama` (its `_ctx` and `_model`): it has no public call to free and recreate a context.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

SEQ_ID = 0  # llama-cpp-python runs every generation on sequence 0
FILE_MAGIC = b"SWKV1\n"


@dataclasses.dataclass(frozen=True, slots=True)
class KvSnapshot:
    """The KV cache's cells for `tokens` (sequence 0), as llama.cpp serialises them."""

    tokens: tuple[int, ...]
    data: bytes

    @property
    def num_bytes(self) -> int:
        return len(self.data)


@dataclasses.dataclass(frozen=True, slots=True)
class WarmUp:
    """What the warm-up did: how many prefix tokens the KV cache holds after it, and whether they came from the
    prefix file (restored) or were evaluated (and written to it)."""

    num_prefix_tokens: int
    is_restored: bool


def take_snapshot(llm: Any) -> KvSnapshot:
    """A host copy of what the KV cache holds for llama-cpp-python's current context (`llm.n_tokens` tokens)."""
    ctx = llm._ctx.ctx
    size = llama_cpp().llama_state_seq_get_size(ctx, SEQ_ID)
    buffer = (ctypes.c_uint8 * size)()
    num_written = llama_cpp().llama_state_seq_get_data(ctx, buffer, size, SEQ_ID)
    return KvSnapshot(tuple(int(t) for t in llm.input_ids[: llm.n_tokens]), bytes(buffer[:num_written]))


def restore_snapshot(llm: Any, snapshot: KvSnapshot) -> bool:
    """Puts `snapshot` into the (empty) KV cache and tells llama-cpp-python its context holds those tokens, so
    the next generation reuses their common prefix with its prompt. False (cache left empty) if llama.cpp
    refuses the data (another model or context layout)."""
    llm.reset()
    if not snapshot.tokens:
        return True
    buffer = (ctypes.c_uint8 * snapshot.num_bytes).from_buffer_copy(snapshot.data)
    if llama_cpp().llama_state_seq_set_data(llm._ctx.ctx, buffer, snapshot.num_bytes, SEQ_ID) != snapshot.num_bytes:
        llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        return False
    n = len(snapshot.tokens)
    llm.input_ids[:n] = snapshot.tokens
    llm.n_tokens = n
    return True


def free_context(llm: Any) -> None:
    """Frees the context (KV cache, compute and output buffers); the model stays loaded. Until `new_context`,
    `llm` must not generate."""
    llm.reset()
    llm._ctx.close()


def new_context(llm: Any) -> None:
    """A fresh context for `llm`'s model with the parameters it was created with (its KV cache empty).

    The new context registers its own release with the model, so closing `llm` frees it before the model."""
    from llama_cpp import _internals

    llm._ctx = _internals.LlamaContext(model=llm._model, params=llm.context_params, verbose=False)
    llm.reset()


def template_prefix(llm: Any) -> list[int]:
    """The tokens every chat prompt without its own system message starts with under the model's chat format
    (for SmolLM2, its GGUF template's default system prompt and the user turn's opening): the longest common
    prefix of two prompts that differ only in the user's text, as llama-cpp-python's own chat handler builds
    them (`tokens.PromptTokenCounter`). A request whose prompt does not start with them is still correct: the
    KV cache is only reused for the tokens it matches. Empty if the chat format cannot render such prompts."""
    from switchboard.engines.llamacpp.tokens import PromptTokenCounter

    try:
        counter = PromptTokenCounter(llm)
        a, b = (counter.chat_tokens({"messages": [{"role": "user", "content": text}]}) for text in ("a", "Zz 1"))
    except Exception:  # noqa: BLE001 — a template that rejects these prompts: warm up without a prefix
        return []
    num_common = 0
    for x, y in zip(a, b):
        if x != y:
            break
        num_common += 1
    return a[:num_common]


def prefix_file(cache_dir: Path, model_path: str, tokens: list[int]) -> Path:
    """Where the KV cells of `tokens` under this model file are kept: named by the model file's identity (path,
    size, modification time), llama-cpp-python's version and the tokens, so a changed model or library never
    reads another's cells."""
    stat = os.stat(model_path)
    key = json.dumps([os.path.realpath(model_path), stat.st_size, stat.st_mtime_ns, llama_cpp().__version__, tokens])
    return cache_dir / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.kv"


def read_prefix_file(path: Path) -> KvSnapshot | None:
    """The snapshot in `path`, or None if there is none or it is not one of ours."""
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    if not raw.startswith(FILE_MAGIC) or len(raw) < len(FILE_MAGIC) + 4:
        return None
    (header_len,) = struct.unpack_from("<I", raw, len(FILE_MAGIC))
    start = len(FILE_MAGIC) + 4
    try:
        tokens = json.loads(raw[start : start + header_len])["tokens"]
    except (ValueError, KeyError, TypeError):
        return None
    return KvSnapshot(tuple(tokens), raw[start + header_len :])


def write_prefix_file(path: Path, snapshot: KvSnapshot) -> None:
    """Writes `snapshot` to `path` atomically (a temporary file renamed over it), so a worker that reads it while
    another writes sees a whole file or none. Errors are ignored: the file only saves time."""
    header = json.dumps({"tokens": list(snapshot.tokens)}).encode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            fh.write(FILE_MAGIC + struct.pack("<I", len(header)) + header + snapshot.data)
        os.replace(tmp, path)
    except OSError:
        pass


def warm_up(llm: Any, model_path: str, cache_dir: Path | None) -> WarmUp:
    """Prepares `llm` for its first request: faults the memory-mapped weights in and builds llama.cpp's compute
    graph with one decode (costs that would otherwise land on the first request), and leaves the chat format's
    prefix in the KV cache. The prefix comes from its file in `cache_dir` when there is one (all but its last
    token, which the decode evaluates), else is evaluated and written there. Without a common prefix: one
    decode of "Hi", the cache left empty."""
    prefix = template_prefix(llm)
    if not prefix:
        llm.create_completion(prompt="Hi", max_tokens=1, temperature=0)
        llm.reset()
        return WarmUp(0, is_restored=False)
    path = prefix_file(cache_dir, model_path, prefix) if cache_dir is not None else None
    stored = read_prefix_file(path) if path is not None else None
    if stored is not None and list(stored.tokens) == prefix[:-1] and restore_snapshot(llm, stored):
        llm.eval(prefix[-1:])
        return WarmUp(len(prefix), is_restored=True)
    llm.reset()
    llm.eval(prefix[:-1])
    if path is not None:
        write_prefix_file(path, take_snapshot(llm))
    llm.eval(prefix[-1:])
    return WarmUp(len(prefix), is_restored=False)


def llama_cpp() -> Any:
    import llama_cpp as module  # imported on use: importing this module stays cheap

    return module
