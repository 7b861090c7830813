"""The engine that owns one llama.cpp worker process: spawn, wait for ready, health-check, stop.

Requests go to the worker over loopback HTTP through the same OpenAI adapter as any upstream, so the gateway
sees one interface. `start()` measures the cold-start anatomy (process spawn to interpreter-and-imports,
model load, ready); the first token of the first request is measured by the caller.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path

from switchboard.engines.base import Completion, EngineUnavailable, GenerationRequest, StreamEvent
from switchboard.engines.llamacpp.paths import default_model_path
from switchboard.engines.llamacpp.pool import StandbyPool, hand_over, read_event, spawn_worker
from switchboard.engines.local_server import HttpCall, WakeTiming, call_server
from switchboard.engines.openai_upstream import OpenAIUpstreamEngine

__all__ = ["ColdStartAnatomy", "LlamaCppEngine", "default_model_path"]


@dataclasses.dataclass(frozen=True, slots=True)
class ColdStartAnatomy:
    """Where a cold start's time went, in seconds from the spawn call."""

    spawn_s: float  # until the worker's interpreter is up and llama.cpp is imported (0 for an adopted standby worker)
    load_s: float  # model load inside the worker
    warmup_s: float  # one warm-up decode (faults the weights in, builds the compute graph)
    ready_s: float  # until the worker listens (spawn + load + warm-up + server set-up)
    adopted: bool = False  # a pre-started standby worker was adopted (no spawn on the request's path)


class LlamaCppEngine:
    """One llama.cpp worker process. start() and stop() are idempotent; concurrent start() calls share one spawn."""

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
    ) -> None:
        self.expert_id = expert_id
        self.model_path = Path(model_path) if model_path else None
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.n_threads_batch = n_threads_batch
        self.n_batch = n_batch
        self.seed = seed
        self.start_timeout_s = start_timeout_s
        self.read_timeout_s = read_timeout_s
        self.process: asyncio.subprocess.Process | None = None
        self.port: int | None = None
        self.pool = pool
        self.last_cold_start: ColdStartAnatomy | None = None
        self.last_wake: WakeTiming | None = None
        self.is_asleep = False
        self._client: OpenAIUpstreamEngine | None = None
        self._starting: asyncio.Task | None = None

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
        )

    can_sleep = True

    @property
    def is_running(self) -> bool:
        return self.process is not None and self.process.returncode is None and self._client is not None

    async def start(self) -> None:
        if self.is_running:
            return
        if self._starting is None or self._starting.done():
            self._starting = asyncio.ensure_future(self._spawn())
        await asyncio.shield(self._starting)

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
            await self._kill(process)
            self.process = None
            raise
        self.port = int(ready["port"])
        self.is_asleep = False
        self.last_cold_start = ColdStartAnatomy(
            spawn_s=0.0 if standby is not None else spawn_s, load_s=float(ready["t_load_s"]),
            warmup_s=float(ready.get("t_warmup_s", 0.0)), ready_s=time.perf_counter() - t0, adopted=standby is not None,
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

    async def stop(self) -> None:
        client, process = self._client, self.process
        self._client, self.process, self.port = None, None, None
        if client is not None:
            await client.stop()
        if process is not None:
            await self._kill(process)

    @staticmethod
    async def _kill(process: asyncio.subprocess.Process) -> None:
        if process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timeout=5)
        except asyncio.TimeoutError:
            process.kill()
            await process.wait()

    async def _call(self, path: str) -> float:
        # A wake loads the model: as long as a start may take.
        port = self.port if self.is_running else None
        return await call_server(self.expert_id, port, HttpCall("POST", path), self.start_timeout_s)

    async def sleep(self) -> None:
        """Frees the model inside the worker; the process, its imports and its server stay (level-1 sleep)."""
        if not self.is_asleep:
            self.last_wake = WakeTiming("sleep", await self._call("/sleep"))
            self.is_asleep = True

    async def wake(self) -> None:
        """Loads the model again in the same worker (from the page cache) and warms it up."""
        if self.is_asleep:
            self.last_wake = WakeTiming("wake", await self._call("/wake_up"))
            self.is_asleep = False

    def _require_client(self) -> OpenAIUpstreamEngine:
        if not self.is_running:
            raise EngineUnavailable(self.expert_id, "the llama.cpp worker process is not running")
        assert self._client is not None
        return self._client

    async def complete(self, request: GenerationRequest) -> Completion:
        return await self._require_client().complete(request)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        async for event in self._require_client().stream(request):
            yield event
