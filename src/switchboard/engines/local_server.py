"""What the engines that run their own local server process share: their control calls (sleep, wake) over
loopback HTTP, what those calls took, and `LocalServerEngine`, the start/stop/sleep/wake bookkeeping and the
traffic forwarding that such an engine does around its own way of spawning the server."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator

import httpx

from switchboard.engines.base import Completion, EngineError, EngineUnavailable, GenerationRequest, StreamEvent
from switchboard.engines.openai_upstream import OpenAIUpstreamEngine


@dataclasses.dataclass(frozen=True, slots=True)
class HttpCall:
    """One HTTP call an engine makes to its server (sleep, wake): method and path (with its query)."""

    method: str
    path: str


@dataclasses.dataclass(frozen=True, slots=True)
class WakeTiming:
    """A sleep or wake call and how long the server took to answer it."""

    call: str
    took_s: float


def control_client() -> httpx.AsyncClient:
    """A client for an engine's control calls to its loopback server, made once and reused: a new
    `httpx.AsyncClient` loads the CA bundle for TLS, 40-70 ms here, which was a third of a wake's time. Plain
    HTTP on loopback needs no certificates (`verify=False` skips loading them)."""
    return httpx.AsyncClient(verify=False, trust_env=False)


async def call_server(client: httpx.AsyncClient, expert_id: str, port: int | None, call: HttpCall,
                      timeout_s: float) -> float:
    """Makes `call` to the server on 127.0.0.1:`port` with `client`; returns the seconds it took. Raises
    EngineUnavailable if the server cannot be reached, EngineError if it answers other than 2xx."""
    if port is None:
        raise EngineUnavailable(expert_id, "the server process is not running")
    t0 = time.perf_counter()
    try:
        response = await client.request(call.method, f"http://127.0.0.1:{port}{call.path}", timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise EngineUnavailable(expert_id, f"{call.method} {call.path} failed: {type(exc).__name__}: {exc}") from None
    if not response.is_success:
        raise EngineError(expert_id, f"{call.method} {call.path} answered {response.status_code}: {response.text[:200]}")
    return time.perf_counter() - t0


class LocalServerEngine:
    """An engine that runs one local OpenAI-compatible server process and sends its traffic through an
    `OpenAIUpstreamEngine` client on the server's loopback port. start() and stop() are idempotent; concurrent
    start() calls share one spawn. Safe for concurrent use from one event loop.

    A subclass provides `_spawn()` (start the server; on success set `process`, `port` and a started `_client`,
    and `is_asleep = False`), `_end_process(process)` (make it exit and reap it), and the seconds a control call
    may take (`_control_timeout_s`). `sleep_call` and `wake_call` are the server's own sleep and wake calls (None
    where it has none); `not_running_message` is what a request to a server that is not running is told.
    """

    not_running_message = "the server process is not running"
    sleep_call: HttpCall | None = None
    wake_call: HttpCall | None = None

    def __init__(self, expert_id: str) -> None:
        self.expert_id = expert_id
        self.process: asyncio.subprocess.Process | None = None
        self.port: int | None = None
        self.last_wake: WakeTiming | None = None
        self.is_asleep = False
        self._client: OpenAIUpstreamEngine | None = None
        self._control: httpx.AsyncClient | None = None  # see _control_client
        self._starting: asyncio.Task | None = None

    @property
    def can_sleep(self) -> bool:
        return self.sleep_call is not None and self.wake_call is not None

    @property
    def is_running(self) -> bool:
        return self.process is not None and self.process.returncode is None and self._client is not None

    @property
    def _control_timeout_s(self) -> float:
        raise NotImplementedError

    async def start(self) -> None:
        if self.is_running:
            return
        if self._starting is None or self._starting.done():
            self._starting = asyncio.ensure_future(self._spawn())
        await asyncio.shield(self._starting)

    async def _spawn(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        client, process, control = self._client, self.process, self._control
        self._client, self.process, self.port, self._control = None, None, None, None
        if client is not None:
            await client.stop()
        if control is not None:
            await control.aclose()
        if process is not None:
            await self._end_process(process)

    async def _end_process(self, process: asyncio.subprocess.Process) -> None:
        raise NotImplementedError

    def _control_client(self) -> httpx.AsyncClient:
        """This engine's client for calls to its server other than traffic (readiness, sleep, wake); closed by
        stop()."""
        if self._control is None:
            self._control = control_client()
        return self._control

    async def _call(self, call: HttpCall) -> float:
        return await call_server(self._control_client(), self.expert_id, self.port if self.is_running else None, call,
                                 self._control_timeout_s)

    async def sleep(self) -> None:
        """Puts the server to sleep with its own call (the process stays). Raises EngineError if it cannot."""
        if self.sleep_call is None:
            raise EngineError(self.expert_id, "this backend declares no sleep call", status=501, code="sleep_unsupported")
        if not self.is_asleep:
            self.last_wake = WakeTiming("sleep", await self._call(self.sleep_call))
            self.is_asleep = True

    async def wake(self) -> None:
        """Wakes a sleeping server with its own call; returns when it can serve."""
        if self.wake_call is None:
            raise EngineError(self.expert_id, "this backend declares no wake call", status=501, code="sleep_unsupported")
        if self.is_asleep:
            self.last_wake = WakeTiming("wake", await self._call(self.wake_call))
            self.is_asleep = False

    def _require_client(self) -> OpenAIUpstreamEngine:
        if not self.is_running:
            raise EngineUnavailable(self.expert_id, self.not_running_message)
        assert self._client is not None
        return self._client

    async def complete(self, request: GenerationRequest) -> Completion:
        return await self._require_client().complete(request)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        async for event in self._require_client().stream(request):
            yield event
