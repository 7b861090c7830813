"""The engine that owns one llama.cpp worker process: spawn, wait for ready, health-check, stop.

Requests go to the worker over loopback HTTP through the same OpenAI adapter as any upstream, so the gateway
sees one interface. `start()` measures the cold-start anatomy (process spawn to interpreter-and-imports,
model load, ready); the first token of the first request is measured by the caller.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

from switchboard.engines.base import EngineUnavailable
from switchboard.engines.llamacpp.paths import default_model_path
from switchboard.engines.llamacpp.pool import StandbyPool, hand_over, read_event, spawn_worker
from switchboard.engines.local_server import HttpCall, LocalServerEngine
from switchboard.engines.openai_upstream import OpenAIUpstreamEngine

__all__ = ["ColdStartAnatomy", "LlamaCppEngine", "default_model_path"]


@dataclasses.dataclass(frozen=True, slots=True)
class ColdStartAnatomy:
    """Where a cold start's time went, in seconds from the spawn call."""

    spawn_s: float  # until the worker's interpreter is up and llama.cpp is imported (0 for an adopted standby worker)
    load_s: float  # model load inside the worker
    warmup_s: float  # one warm-up decode (faults the weights in, builds the compute graph) and the template prefix
    ready_s: float  # until the worker listens (spawn + load + warm-up + server set-up)
    adopted: bool = False  # a pre-started standby worker was adopted (no spawn on the request's path)
    prefix_tokens: int = 0  # chat template prefix tokens in the KV cache at ready (the first request reuses them)
    prefix_restored: bool = False  # they came from an earlier worker's file, not evaluated


class LlamaCppEngine(LocalServerEngine):
    """One llama.cpp worker process. start() and stop() are idempotent; concurrent start() calls share one spawn.

    Sleep keeps the process, its imports and its server. At `sleep_level` 1 it frees the context (KV cache and
    compute buffers) and keeps the model and a host copy of the KV cells; wake makes a new context and puts the
    cells back. At level 2 it frees the model too; wake loads it again (from the page cache) and warms it up.
    `prefix_cache_dir` is where workers keep the chat template prefix's KV cells for the next worker's warm-up
    (None: each evaluates it)."""

    not_running_message = "the llama.cpp worker process is not running"
    sleep_call = HttpCall("POST", "/sleep?level=1")
    wake_call = HttpCall("POST", "/wake_up")

    def __init__(
        self,
        expert_id: str,
        *,
        model_path: str | Path | None = None,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        n_threads_batch: int | None = None,
        n_batch: int = 512,
        seed: int = 0,
        start_timeout_s: float = 120.0,
        read_timeout_s: float = 300.0,
        pool: StandbyPool | None = None,
        sleep_level: int = 1,
        prefix_cache_dir: str | Path | None = None,
        chat_template: str | None = None,
    ) -> None:
        super().__init__(expert_id)
        if sleep_level not in (1, 2):
            raise ValueError(f"sleep_level must be 1 or 2, not {sleep_level}")
        self.sleep_level = sleep_level
        self.sleep_call = HttpCall("POST", f"/sleep?level={sleep_level}")
        self.prefix_cache_dir = Path(prefix_cache_dir).expanduser() if prefix_cache_dir else None
        self.chat_template = chat_template  # the template's text (the config reads a file's), or None: the GGUF's own
        self.model_path = Path(model_path) if model_path else None
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.n_threads_batch = n_threads_batch
        self.n_batch = n_batch
        self.seed = seed
        self.start_timeout_s = start_timeout_s
        self.read_timeout_s = read_timeout_s
        self.pool = pool
        self.last_cold_start: ColdStartAnatomy | None = None

    @classmethod
    def from_config(cls, expert_id: str, context_tokens: int, backend, pool: StandbyPool | None = None) -> "LlamaCppEngine":
        return cls(
            expert_id,
            model_path=backend.model_path,
            n_ctx=context_tokens,
            n_threads=backend.n_threads,
            n_threads_batch=backend.n_threads_batch,
            n_batch=backend.n_batch,
            seed=backend.seed,
            start_timeout_s=backend.start_timeout_s,
            pool=pool,
            sleep_level=backend.sleep_level,
            prefix_cache_dir=backend.prefix_cache_dir,
            chat_template=backend.chat_template,
        )

    @property
    def _control_timeout_s(self) -> float:
        return self.start_timeout_s  # a wake loads the model: as long as a start may take

    async def _spawn(self) -> None:
        if self.process is not None or self._client is not None:
            await self.stop()  # a previous worker died: release its client and reap it before respawning
        model_path = self.model_path or default_model_path()
        if not Path(model_path).is_file():
            raise EngineUnavailable(self.expert_id, f"model file not found: {model_path}")
        args = [
            "--model", str(model_path), "--name", self.expert_id, "--n-ctx", str(self.n_ctx),
            "--n-batch", str(self.n_batch), "--seed", str(self.seed),
        ]
        if self.n_threads:
            args += ["--threads", str(self.n_threads)]
        if self.n_threads_batch:
            args += ["--threads-batch", str(self.n_threads_batch)]
        if self.prefix_cache_dir is not None:
            args += ["--prefix-cache-dir", str(self.prefix_cache_dir)]
        if self.chat_template is not None:
            args += ["--chat-template", self.chat_template]
        t0 = time.perf_counter()
        standby = self.pool.take() if self.pool is not None else None
        process = standby or await spawn_worker(standby=False, args=args)
        self.process = process
        try:
            if standby is not None:
                await hand_over(standby, args)
            else:
                await self._read_event(process, "started", t0)
            spawn_s = time.perf_counter() - t0
            ready = await self._read_event(process, "ready", t0)
        except BaseException:
            await self._end_process(process)
            self.process = None
            raise
        self.port = int(ready["port"])
        self.is_asleep = False
        self.last_cold_start = ColdStartAnatomy(
            spawn_s=0.0 if standby is not None else spawn_s, load_s=float(ready["t_load_s"]),
            warmup_s=float(ready.get("t_warmup_s", 0.0)), ready_s=time.perf_counter() - t0, adopted=standby is not None,
            prefix_tokens=int(ready.get("prefix_tokens", 0)), prefix_restored=bool(ready.get("prefix_restored", False)),
        )
        self._client = OpenAIUpstreamEngine(
            self.expert_id, f"http://127.0.0.1:{self.port}/v1", self.expert_id,
            read_timeout_s=self.read_timeout_s, max_connections=64, passthrough=False,
        )
        await self._client.start()

    async def _read_event(self, process: asyncio.subprocess.Process, name: str, t0: float) -> dict:
        event = await read_event(process, name, t0 + self.start_timeout_s)
        if event is not None:
            return event
        if process.returncode is None and time.perf_counter() - t0 >= self.start_timeout_s:
            raise EngineUnavailable(self.expert_id, f"llama.cpp worker not {name} within {self.start_timeout_s:.0f} s")
        code = await process.wait()
        raise EngineUnavailable(self.expert_id, f"llama.cpp worker exited with code {code} before it was {name}")

    @staticmethod
    async def _end_process(process: asyncio.subprocess.Process) -> None:
        if process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timeout=5)
        except asyncio.TimeoutError:
            process.kill()
            await process.wait()
