"""Pre-started llama.cpp workers: interpreter up, llama.cpp and the server imported, no model.

A cold start spends about two thirds of its time before the model load even begins (process spawn, Python
start, `import llama_cpp`: 0.39 s of 0.6 s for SmolLM2-135M here, issue 15). A `StandbyPool` keeps `size`
such workers waiting (`worker.py --standby`); `LlamaCppEngine` adopts one by writing its arguments to the
worker's stdin, so only the model load and warm-up remain on the request's path. The pool refills itself in
the background `refill_delay_s` after each adoption: a new interpreter importing llama.cpp right away would
compete for the cores with the adopted worker's model load and first request (measured here: the first token
came ~0.8 s later with an immediate refill on 2 busy cores). Each standby worker holds ~100 MB and no model.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time

log = logging.getLogger("switchboard.engines.llamacpp.pool")

WORKER_MODULE = "switchboard.engines.llamacpp.worker"


async def spawn_worker(*, standby: bool, args: list[str] | None = None) -> asyncio.subprocess.Process:
    """A new worker process: with `standby`, it waits for its arguments on stdin after importing."""
    argv = [sys.executable, "-m", WORKER_MODULE, *(["--standby"] if standby else (args or []))]
    return await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE if standby else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, env=dict(os.environ),
    )


async def read_event(process: asyncio.subprocess.Process, name: str, deadline: float) -> dict | None:
    """The worker's next announcement called `name` (other output skipped); None if it exits or the
    `deadline` (time.perf_counter) passes first."""
    assert process.stdout is not None
    while True:
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            return None
        try:
            line = await asyncio.wait_for(process.stdout.readline(), timeout=remaining)
        except asyncio.TimeoutError:
            return None
        if not line:
            return None
        try:
            event = json.loads(line)
        except ValueError:
            continue  # stray output from a native library
        if isinstance(event, dict) and event.get("event") == name:
            return event


async def hand_over(process: asyncio.subprocess.Process, args: list[str]) -> None:
    """Gives a standby worker its arguments; it goes on to load the model."""
    assert process.stdin is not None
    process.stdin.write((json.dumps(args) + "\n").encode())
    await process.stdin.drain()
    process.stdin.close()


class StandbyPool:
    """Keeps `size` standby workers started. Used from one event loop; `take` never blocks."""

    def __init__(self, size: int, *, start_timeout_s: float = 60.0, refill_delay_s: float = 3.0) -> None:
        self.size = size
        self.start_timeout_s = start_timeout_s
        self.refill_delay_s = refill_delay_s
        self._ready: list[asyncio.subprocess.Process] = []
        self._refilling: asyncio.Task | None = None
        self._closed = False
        self.num_adopted = 0

    @property
    def num_ready(self) -> int:
        return sum(1 for p in self._ready if p.returncode is None)

    def start(self) -> None:
        """Begins filling the pool in the background, `refill_delay_s` from now (call from the event loop): a
        server's first requests arrive right after it is ready, and should not share the cores with it."""
        self._refill_soon(self.refill_delay_s)

    def take(self) -> asyncio.subprocess.Process | None:
        """A started standby worker, or None if none is ready (the caller spawns one itself)."""
        while self._ready:
            process = self._ready.pop(0)
            if process.returncode is None:
                self.num_adopted += 1
                self._refill_soon(self.refill_delay_s)
                return process
        self._refill_soon(self.refill_delay_s)
        return None

    def _refill_soon(self, delay_s: float = 0.0) -> None:
        if not self._closed and self.size > 0 and (self._refilling is None or self._refilling.done()):
            self._refilling = asyncio.ensure_future(self._refill(delay_s))

    async def _refill(self, delay_s: float = 0.0) -> None:
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        while not self._closed and self.num_ready < self.size:
            process = await spawn_worker(standby=True)
            try:
                started = await read_event(process, "started", time.perf_counter() + self.start_timeout_s)
            except BaseException:
                await asyncio.shield(_end(process))
                raise
            if started is None or self._closed:
                await _end(process)
                if started is None:
                    log.warning("a standby llama.cpp worker did not start; the pool stops refilling until the next take")
                return
            self._ready.append(process)

    async def close(self) -> None:
        self._closed = True
        if self._refilling is not None:
            self._refilling.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._refilling
        ready, self._ready = self._ready, []
        await asyncio.gather(*(_end(p) for p in ready), return_exceptions=True)


async def _end(process: asyncio.subprocess.Process) -> None:
    if process.returncode is not None:
        return
    if process.stdin is not None:
        process.stdin.close()  # a standby worker reads EOF and exits by itself
    try:
        await asyncio.wait_for(process.wait(), timeout=5)
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()
