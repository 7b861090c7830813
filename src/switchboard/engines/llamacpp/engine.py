"""The engine that owns one llama.cpp worker process: spawn, wait for ready, health-check, stop.

Requests go to the worker over loopback HTTP through the same OpenAI adapter as any upstream, so the gateway
sees one interface. `start()` measures the cold-start anatomy (process spawn to interpreter-and-imports,
model load, ready); the first token of the first request is measured by the caller.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

from switchboard.engines.base import Completion, EngineUnavailable, GenerationRequest, StreamEvent
from switchboard.engines.llamacpp.paths import default_model_path
from switchboard.engines.openai_upstream import OpenAIUpstreamEngine

__all__ = ["ColdStartAnatomy", "LlamaCppEngine", "default_model_path"]


@dataclasses.dataclass(frozen=True, slots=True)
class ColdStartAnatomy:
    """Where a cold start's time went, in seconds from the spawn call."""

    spawn_s: float  # until the worker's interpreter is up and llama.cpp is imported
    load_s: float  # model load inside the worker
    warmup_s: float  # one warm-up decode (faults the weights in, builds the compute graph)
    ready_s: float  # until the worker listens (spawn + load + warm-up + server set-up)


class LlamaCppEngine:
    """One llama.cpp worker process. start() and stop() are idempotent; concurrent start() calls share one spawn."""

    def __init__(
        self,
        expert_id: str,
        *,
        model_path: str | Path | None = None,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        n_batch: int = 512,
        seed: int = 0,
        start_timeout_s: float = 120.0,
        read_timeout_s: float = 300.0,
    ) -> None:
        self.expert_id = expert_id
        self.model_path = Path(model_path) if model_path else None
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.n_batch = n_batch
        self.seed = seed
        self.start_timeout_s = start_timeout_s
        self.read_timeout_s = read_timeout_s
        self.process: asyncio.subprocess.Process | None = None
        self.port: int | None = None
        self.last_cold_start: ColdStartAnatomy | None = None
        self._client: OpenAIUpstreamEngine | None = None
        self._starting: asyncio.Task | None = None

    @classmethod
    def from_config(cls, expert_id: str, context_tokens: int, backend) -> "LlamaCppEngine":
        return cls(
            expert_id,
            model_path=backend.model_path,
            n_ctx=context_tokens,
            n_threads=backend.n_threads,
            n_batch=backend.n_batch,
            seed=backend.seed,
            start_timeout_s=backend.start_timeout_s,
        )

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
        argv = [
            sys.executable, "-m", "switchboard.engines.llamacpp.worker",
            "--model", str(model_path), "--name", self.expert_id, "--n-ctx", str(self.n_ctx),
            "--n-batch", str(self.n_batch), "--seed", str(self.seed),
        ]
        if self.n_threads:
            argv += ["--threads", str(self.n_threads)]
        t0 = time.perf_counter()
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, env=dict(os.environ)
        )
        self.process = process
        try:
            started = await self._read_event(process, "started", t0)
            spawn_s = time.perf_counter() - t0
            ready = await self._read_event(process, "ready", t0)
        except BaseException:
            await self._kill(process)
            self.process = None
            raise
        del started
        self.port = int(ready["port"])
        self.last_cold_start = ColdStartAnatomy(
            spawn_s=spawn_s, load_s=float(ready["t_load_s"]), warmup_s=float(ready.get("t_warmup_s", 0.0)),
            ready_s=time.perf_counter() - t0
        )
        self._client = OpenAIUpstreamEngine(
            self.expert_id, f"http://127.0.0.1:{self.port}/v1", self.expert_id,
            read_timeout_s=self.read_timeout_s, max_connections=64, passthrough=False,
        )
        await self._client.start()

    async def _read_event(self, process: asyncio.subprocess.Process, name: str, t0: float) -> dict:
        assert process.stdout is not None
        while True:
            remaining = self.start_timeout_s - (time.perf_counter() - t0)
            if remaining <= 0:
                raise EngineUnavailable(self.expert_id, f"llama.cpp worker not {name} within {self.start_timeout_s:.0f} s")
            try:
                line = await asyncio.wait_for(process.stdout.readline(), timeout=remaining)
            except asyncio.TimeoutError:
                continue
            if not line:
                code = await process.wait()
                raise EngineUnavailable(self.expert_id, f"llama.cpp worker exited with code {code} before it was {name}")
            try:
                event = json.loads(line)
            except ValueError:
                continue  # stray output from a native library
            if isinstance(event, dict) and event.get("event") == name:
                return event

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
