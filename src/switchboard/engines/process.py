"""The `process` backend: any OpenAI-compatible server, started from a command template, as a replica.

One `ProcessEngine` owns one server process (llama.cpp's server, vLLM, SGLang, TGI, ...):

- **start**: picks a free loopback port, fills the command template (`{port}`, `{host}`, `{model}`,
  `{model_path}`, `{devices}`, `{num_devices}`, `{python}`), spawns it in its own process group with stdout and stderr going to its own log
  file, and polls the readiness path (`/health`, `/v1/models`) until it answers 2xx. A process that exits first,
  or is not ready within `start_timeout_s`, is an `EngineUnavailable` quoting the end of its log.
- **traffic** goes through the existing `openai` engine (`OpenAIUpstreamEngine`), so errors, streaming and
  usage are handled exactly as for any upstream.
- **crash detection**: `is_running` turns False as soon as the process exits; the live fleet's health check then
  stops the replica and the policies start a replacement when the load needs one (as for the llama.cpp worker).
  A request in flight when it dies fails with `EngineUnavailable` and is retried by failover.
- **stop**: SIGTERM to the whole process group (servers such as vLLM fork workers), `stop_timeout_s` to exit
  gracefully, then SIGKILL.
- **sleep / wake** (optional): the server's own calls, e.g. vLLM's `POST /sleep?level=1` and `POST /wake_up`;
  the process stays, its weights leave the accelerator (docs/engines.md).

The server is also tied to this process's life with Linux's parent-death signal, so a gateway killed without
stopping it does not leave a server holding a GPU.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import dataclasses
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from switchboard.engines.base import EngineUnavailable
from switchboard.engines.local_server import HttpCall, LocalServerEngine, WakeTiming
from switchboard.engines.openai_upstream import OpenAIUpstreamEngine

__all__ = ["HttpCall", "ProcessColdStart", "ProcessEngine", "WakeTiming", "fill_template", "free_loopback_port"]

_PR_SET_PDEATHSIG = 1
READINESS_POLL_S = 0.02
LOG_TAIL_LINES = 20


@dataclasses.dataclass(frozen=True, slots=True)
class ProcessColdStart:
    """Where a process replica's start went, in seconds from the spawn call."""

    spawn_s: float  # until the process existed
    ready_s: float  # until its readiness path answered 2xx


def free_loopback_port() -> int:
    """A port free on 127.0.0.1 now. The server binds it a moment later; another process could take it in
    between, which shows as a start failure (the log says so) and the fleet starts another replica."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fill_template(command: Sequence[str], values: Mapping[str, str]) -> list[str]:
    """The command with `{name}` placeholders replaced. Raises ValueError naming an unknown placeholder."""
    argv = []
    for part in command:
        try:
            argv.append(part.format_map(values))
        except KeyError as exc:
            raise ValueError(f"command placeholder {{{exc.args[0]}}} is not one of {', '.join(sorted(values))}") from None
    return argv


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: SIGTERM it when the gateway's thread that spawned it dies."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the server outlives a killed gateway, as any child would
        pass


class ProcessEngine(LocalServerEngine):
    """One OpenAI-compatible server process. start() and stop() are idempotent; concurrent start() calls share
    one spawn. Safe for concurrent use from one event loop."""

    def __init__(
        self,
        expert_id: str,
        command: Sequence[str],
        *,
        model: str | None = None,
        model_path: str | None = None,
        env: Mapping[str, str] | None = None,
        devices: Sequence[int] = (),
        readiness_path: str = "/health",
        api_path: str = "/v1",
        log_dir: str | Path | None = None,
        start_timeout_s: float = 300.0,
        stop_timeout_s: float = 10.0,
        read_timeout_s: float = 300.0,
        sleep_call: HttpCall | None = None,
        wake_call: HttpCall | None = None,
    ) -> None:
        super().__init__(expert_id)
        self.command = list(command)
        self.model = model or expert_id
        self.model_path = model_path or ""
        self.env = dict(env or {})
        self.devices = tuple(devices)
        self.readiness_path = readiness_path
        self.api_path = api_path
        self.log_dir = Path(log_dir) if log_dir else None
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.read_timeout_s = read_timeout_s
        self.sleep_call = sleep_call
        self.wake_call = wake_call
        self.log_path: Path | None = None
        self.last_cold_start: ProcessColdStart | None = None

    @classmethod
    def from_config(cls, expert_id: str, backend: Any, devices: Sequence[int] = ()) -> "ProcessEngine":
        return cls(
            expert_id, backend.command, model=backend.model, model_path=backend.model_path, env=backend.env,
            devices=devices, readiness_path=backend.readiness_path, api_path=backend.api_path,
            log_dir=backend.log_dir, start_timeout_s=backend.start_timeout_s, stop_timeout_s=backend.stop_timeout_s,
            read_timeout_s=backend.read_timeout_s,
            sleep_call=HttpCall(*backend.sleep) if backend.sleep else None,
            wake_call=HttpCall(*backend.wake) if backend.wake else None,
        )

    @property
    def _control_timeout_s(self) -> float:
        return self.read_timeout_s

    def _argv_and_env(self, port: int) -> tuple[list[str], dict[str, str]]:
        devices = ",".join(str(d) for d in self.devices)
        values = {"port": str(port), "host": "127.0.0.1", "model": self.model, "model_path": self.model_path,
                  "devices": devices, "num_devices": str(max(1, len(self.devices))), "python": sys.executable}
        try:
            argv = fill_template(self.command, values)
        except ValueError as exc:
            raise EngineUnavailable(self.expert_id, str(exc)) from None
        env = {**os.environ, **self.env}
        if self.devices:
            env["CUDA_VISIBLE_DEVICES"] = devices  # the devices placement gave this replica, and no others
        return argv, env

    def _open_log(self, port: int):
        log_dir = self.log_dir or Path(os.environ.get("TMPDIR", "/tmp")) / "switchboard-logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        safe_id = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.expert_id)
        self.log_path = log_dir / f"{safe_id}-{port}.log"
        return open(self.log_path, "ab", buffering=0)

    async def _spawn(self) -> None:
        if self.process is not None or self._client is not None:
            await self.stop()  # a previous server died: release its client and reap it before respawning
        port = free_loopback_port()
        argv, env = self._argv_and_env(port)
        t0 = time.perf_counter()
        with self._open_log(port) as log:
            try:
                process = await asyncio.create_subprocess_exec(
                    *argv, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT, env=env,
                    start_new_session=True, preexec_fn=_die_with_parent,
                )
            except OSError as exc:
                raise EngineUnavailable(self.expert_id, f"cannot run {argv[0]!r}: {exc}") from None
        self.process, self.port = process, port
        spawn_s = time.perf_counter() - t0
        try:
            await self._wait_ready(process, port, t0)
        except BaseException:
            await self._end_process(process)
            self.process = None
            raise
        self.last_cold_start = ProcessColdStart(spawn_s=spawn_s, ready_s=time.perf_counter() - t0)
        self.is_asleep = False
        self._client = OpenAIUpstreamEngine(
            self.expert_id, f"http://127.0.0.1:{port}{self.api_path}", self.model,
            read_timeout_s=self.read_timeout_s, max_connections=64,
        )
        await self._client.start()

    async def _wait_ready(self, process: asyncio.subprocess.Process, port: int, t0: float) -> None:
        url = f"http://127.0.0.1:{port}{self.readiness_path}"
        client = self._control_client()  # kept for the sleep and wake calls
        while True:
            if process.returncode is not None:
                raise EngineUnavailable(self.expert_id, f"server exited with code {process.returncode} before it was "
                                        f"ready; end of {self.log_path}:\n{self.log_tail()}")
            if time.perf_counter() - t0 > self.start_timeout_s:
                raise EngineUnavailable(self.expert_id, f"server not ready ({url}) within {self.start_timeout_s:.0f} s; "
                                        f"end of {self.log_path}:\n{self.log_tail()}")
            try:
                if (await client.get(url, timeout=httpx.Timeout(2.0, connect=0.5))).is_success:
                    return
            except httpx.HTTPError:
                pass  # not listening yet
            try:
                await asyncio.wait_for(process.wait(), timeout=READINESS_POLL_S)
            except asyncio.TimeoutError:
                pass

    def log_tail(self, num_lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of the server's log ('' before the first start)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as f:
            lines = collections.deque(f, maxlen=num_lines)
        return b"".join(lines).decode("utf-8", "replace")

    async def _end_process(self, process: asyncio.subprocess.Process) -> None:
        """SIGTERM to the server's process group, `stop_timeout_s` to exit, then SIGKILL."""
        if process.returncode is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                return
            try:
                await asyncio.wait_for(process.wait(), timeout=self.stop_timeout_s)
                return
            except asyncio.TimeoutError:
                continue
        await process.wait()
