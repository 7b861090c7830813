"""The batch runner: runs the requests of batches in the background, through the gateway's own handlers.

Each request is sent to the gateway's inner ASGI app in-process (httpx's ASGITransport), as the key that made the
batch (`auth.serving`): its rate limits, budgets and answer policy apply, it is routed, failed over, logged and
metered as a live request is. A request refused for now (429, or 503 with Retry-After: the key's rate limit, an
expert's admission) waits as told and is sent again; every other answer — a 400 included — is the request's
result. At most `batches.max_concurrency` requests of batches run at once, so live traffic keeps the rest of the
fleet.

A runner claims one batch at a time with a lease in the database (storage/batches.py) and renews it while it works;
each finished request's output line is written as it finishes. A gateway that stops gives its lease up, one that
dies lets it lapse: either way the next runner to look — on this gateway after a restart, or on another gateway
sharing the database — takes the batch up and runs only what is left. The runner also deletes expired files, once
an hour.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson
from sqlalchemy.exc import SQLAlchemyError

from switchboard.config.schema import BatchesConfig
from switchboard.runtime.fleet import background_request
from switchboard.gateway.auth import serving
from switchboard.gateway.batches import lines as ln
from switchboard.gateway.errors import ApiError, error_body
from switchboard.observability.metrics import BatchMetrics
from switchboard.storage import batches as bs
from switchboard.storage import files as fs
from switchboard.storage.kept import PURGE_INTERVAL_S, StoreUnavailable

log = logging.getLogger("switchboard.batches")
RETRIED_STATUSES = (429, 503)
MAX_RUN_FAILURES = 5
"""A batch whose run fails this many times in a row, other than for the database, ends `failed` (a bug)."""


class BatchRunner:
    """Runs the database's unfinished batches (`start`/`stop` with the app). `app` is the gateway's ASGI app inside
    its auth layer; `gate` its TenantGate, or None when auth is off. `wake()` after a batch is made starts it at
    once rather than at the next poll."""

    def __init__(self, store: fs.FileStore, app: Any, gate: Any, config: BatchesConfig, metrics: BatchMetrics, *,
                 clock: Callable[[], float] = time.time, runner_id: str | None = None) -> None:
        self.store = store
        self.metrics = metrics
        self.gate = gate
        self.config = config
        self.clock = clock
        self.runner_id = runner_id or f"runner-{os.urandom(8).hex()}"
        self.app = app
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def start(self) -> None:
        # Made here, not in __init__: they belong to the event loop the app is served on.
        # raise_app_exceptions off: a handler's bug is its request's 500 answer (Starlette re-raises after sending it),
        # not a failed run that would take the batch up again and again.
        transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
        self.client = httpx.AsyncClient(transport=transport, base_url="http://switchboard-batch", timeout=None)
        self.slots = asyncio.Semaphore(self.config.max_concurrency)
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run_forever(), name="switchboard-batch-runner")

    async def stop(self) -> None:
        """Stops starting requests and cancels those in flight (their batch is taken up again later; a cancelled
        request is sent again then)."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = self._wake = None
        await self.client.aclose()

    async def _run_forever(self) -> None:
        purged_at = float("-inf")
        failures: dict[str, int] = {}  # a batch's runs that failed in a row
        while True:
            if self.clock() - purged_at >= PURGE_INTERVAL_S:  # expired files (`expires_after`) are deleted, not just hidden
                purged_at = self.clock()
                try:
                    if num := await self.store.call(fs.purge, purged_at):
                        log.info("files: %d expired ones deleted", num)
                except Exception as exc:  # noqa: BLE001 — the database is down: next time
                    log.warning("files: purging the expired ones failed: %s", exc)
            try:
                claimed = await self.store.call(bs.claim_next, self.runner_id, self.clock(), self.config.lease_s)
            except Exception as exc:  # noqa: BLE001 — the database is down: look again later
                log.warning("batches: cannot look for batches to run: %s", exc)
                claimed = None
            if claimed is None:
                assert self._wake is not None
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.config.poll_interval_s)
                continue
            batch_id = claimed[0]
            try:
                await BatchRun(self, *claimed).run()
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):  # the lease lapses anyway
                    await asyncio.shield(self.store.call(bs.release, batch_id, self.runner_id))
                raise
            except (StoreUnavailable, SQLAlchemyError):  # the database: taken up again once it answers, however long that takes
                log.warning("batches: running %s stopped: the database failed; taken up again later", batch_id, exc_info=True)
                await asyncio.sleep(self.config.poll_interval_s)
            except Exception as exc:  # noqa: BLE001 — a bug: taken up again at the next look, a few times
                failures[batch_id] = failures.get(batch_id, 0) + 1
                log.exception("batches: running %s failed (%d of %d tries)", batch_id, failures[batch_id], MAX_RUN_FAILURES)
                if failures[batch_id] >= MAX_RUN_FAILURES:  # not again and again, holding up the batches behind it
                    await self._give_up(claimed, exc)
                await asyncio.sleep(self.config.poll_interval_s)
            else:
                failures.pop(batch_id, None)

    async def _give_up(self, claimed: tuple[str, str | None, dict[str, Any]], exc: Exception) -> None:
        """Ends a batch whose runs keep failing as `failed`, saying why (its answers so far are dropped)."""
        batch_id, _, body = claimed
        error = ln.LineError("internal_error", f"running the batch failed {MAX_RUN_FAILURES} times; the last: {type(exc).__name__}: {exc}")
        body = {**body, "status": "failed", "failed_at": int(self.clock()), "errors": {"object": "list", "data": [error.as_object()]}}
        try:
            if await self.store.call(bs.finish, batch_id, self.runner_id, body, []):
                self.metrics.end({"id": batch_id, "endpoint": body["endpoint"], "status": "failed", "total": 0, "at": self.clock()})
        except Exception as finish_exc:  # noqa: BLE001 — the database is down: it is tried again after the next failures
            log.warning("batches: %s could not be marked failed: %s", batch_id, finish_exc)

    async def post(self, endpoint: str, key_id: str | None, body: bytes) -> tuple[int, dict[str, str], bytes]:
        """One request through the gateway, as `key_id`, at background priority (`batches.background_priority`):
        (status, headers, body)."""
        token = background_request.set(True) if self.config.background_priority else None
        try:
            return await self._post(endpoint, key_id, body)
        finally:
            if token is not None:
                background_request.reset(token)

    async def _post(self, endpoint: str, key_id: str | None, body: bytes) -> tuple[int, dict[str, str], bytes]:
        headers = {"content-type": "application/json"}
        if key_id is None or self.gate is None:
            response = await self.client.post(endpoint, content=body, headers=headers)
        else:
            try:
                caller = self.gate.caller_for(key_id)
            except ApiError as exc:
                return exc.status, {}, orjson.dumps(error_body(exc.status, exc.message, exc.param, exc.code))
            with serving(self.gate, caller):
                response = await self.client.post(endpoint, content=body, headers=headers)
        return response.status_code, dict(response.headers), response.content


class BatchRun:
    """One claimed batch, run from where it was to its end (or until the runner stops or loses the batch)."""

    def __init__(self, runner: BatchRunner, batch_id: str, key_id: str | None, body: dict[str, Any]) -> None:
        self.runner = runner
        self.store = runner.store
        self.batch_id = batch_id
        self.key_id = key_id
        self.body = body
        self.stopping = asyncio.Event()
        """Set when no more requests are to start: the batch was cancelled, it expired, or the runner lost it."""
        self.outcome = "completed"
        self.progress = {"id": batch_id, "endpoint": body["endpoint"], "status": body["status"], "total": 0, "done": 0, "failed": 0}
        """What the dashboard shows of it while it runs (BatchMetrics.running: requests done, errors among those this
        gateway ran) and once it ended (its final request counts)."""

    def _now(self) -> float:
        return self.runner.clock()

    async def run(self) -> None:
        requests = await self._requests()
        if requests is None:
            return
        watcher = asyncio.create_task(self._watch(), name=f"switchboard-batch-lease-{self.batch_id}")
        running = self.runner.metrics.running
        try:
            if self.body["status"] == "in_progress":
                done = await self.store.call(bs.done_lines, self.batch_id)
                self.progress.update(status="in_progress", total=len(requests), done=len(done))
                running[self.batch_id] = self.progress
                await self._run_requests([r for r in requests if r.line not in done])
        finally:
            watcher.cancel()
            running.pop(self.batch_id, None)
        if self.outcome != "lost":
            await self._finish(requests)

    async def _requests(self) -> list[ln.BatchRequest] | None:
        """The batch's requests (validating it first if it is new); None if it ended here (failed validation)."""
        body = self.body
        content = await self.store.call(fs.content, body["input_file_id"], self.key_id, self._now())
        if content is None:
            gone = ln.LineError("invalid_file", f"the input file '{body['input_file_id']}' no longer exists", param="input_file_id")
            if body["status"] == "validating":
                await self._fail([gone])
                return None
            # Deleted while the batch ran, then taken up again: it ends failed, with the answers it has.
            self.outcome = "failed"
            self.body = {**body, "errors": {"object": "list", "data": [gone.as_object()]}}
            return []
        requests, errors = ln.parse_input(content, body["endpoint"], self.runner.config.max_requests)
        if body["status"] == "validating":
            if errors:
                await self._fail(errors)
                return None
            self.body = {**body, "status": "in_progress", "in_progress_at": int(self._now()),
                         "request_counts": {"total": len(requests), "completed": 0, "failed": 0}}
            if not await self.store.call(bs.set_state, self.batch_id, self.runner.runner_id, self.body, unless_cancelling=True):
                self.body["status"] = "cancelling"  # cancelled while it was validated (or lost: _watch finds out)
        return requests

    async def _fail(self, errors: list[ln.LineError]) -> None:
        now = int(self._now())
        body = {**self.body, "status": "failed", "failed_at": now, "errors": {"object": "list", "data": [e.as_object() for e in errors]}}
        if await self.store.call(bs.finish, self.batch_id, self.runner.runner_id, body, []):
            self.runner.metrics.end({**self.progress, "status": "failed", "at": now})
        log.info("batches: %s failed validation: %s", self.batch_id, errors[0].message)

    async def _watch(self) -> None:
        """Renews the lease every third of it; stops the run when the batch is cancelled, expires, or is lost."""
        config = self.runner.config
        while not self.stopping.is_set():
            if self.body["status"] == "cancelling":
                self._stop("cancelled")
                return
            if self._now() >= self.body["expires_at"]:
                self._stop("expired")
                return
            try:
                status = await self.store.call(bs.renew, self.batch_id, self.runner.runner_id, self._now(), config.lease_s)
            except Exception as exc:  # noqa: BLE001 — the database is down: keep going, the lease may hold
                log.warning("batches: renewing the lease of %s failed: %s", self.batch_id, exc)
                status = self.body["status"]
            if status is None:
                self._stop("lost")
                return
            if status == "cancelling":
                self.body = {**self.body, "status": "cancelling"}
                self.progress["status"] = "cancelling"
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), min(config.lease_s / 3, max(0.0, self.body["expires_at"] - self._now())))

    def _stop(self, outcome: str) -> None:
        self.outcome = outcome
        self.stopping.set()

    async def _run_requests(self, pending: list[ln.BatchRequest]) -> None:
        """Starts the requests in order, at most `max_concurrency` at once across the runner, until they are all
        started or the run stops; then waits for those started."""
        tasks: set[asyncio.Task[None]] = set()
        try:
            for request in pending:
                await self.runner.slots.acquire()
                if self.stopping.is_set():
                    self.runner.slots.release()
                    break
                task = asyncio.create_task(self._run_one(request))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                # Released when the task ends however it ends (one cancelled before it began runs no finally).
                task.add_done_callback(lambda _: self.runner.slots.release())
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()

    async def _run_one(self, request: ln.BatchRequest) -> None:
        config, metrics = self.runner.config, self.runner.metrics
        while True:
            metrics.in_flight.inc()
            try:
                status, headers, content = await self.runner.post(self.body["endpoint"], self.key_id, request.body)
            finally:
                metrics.in_flight.dec()
            retry_after = headers.get("retry-after")
            if status not in RETRIED_STATUSES or retry_after is None:
                break
            metrics.waits.labels(str(status)).inc()
            try:
                wait_s = min(float(retry_after), config.max_retry_wait_s)
            except ValueError:
                wait_s = config.max_retry_wait_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), wait_s)
            if self.stopping.is_set():
                return  # not run: the batch's end says why (cancelled, expired)
        try:
            answer: Any = orjson.loads(content)
        except orjson.JSONDecodeError:
            answer = content.decode("utf-8", "replace")
        line = ln.answered_line(request.custom_id, status, headers.get("x-request-id"), answer)
        await self.store.call(bs.save_result, self.batch_id, request.line, status >= 400, line)
        metrics.requests.labels(self.body["endpoint"], f"{status // 100}xx").inc()
        self.progress["done"] += 1
        self.progress["failed"] += status >= 400

    async def _finish(self, requests: list[ln.BatchRequest]) -> None:
        """Writes the output and error files (in input order; the requests never run get an error line saying why)
        and the batch's final state."""
        if self.outcome == "completed" and self.body["status"] == "cancelling":
            self.outcome = "cancelled"
        results = await self.store.call(bs.results, self.batch_id)
        by_line = {line: (is_error, text.encode()) for line, is_error, text in results}
        for request in requests:
            if request.line not in by_line:
                by_line[request.line] = (True, orjson.dumps(ln.failed_line(request.custom_id, f"batch_{self.outcome}", _NOT_RUN[self.outcome])))
        output = [text for _, (is_error, text) in sorted(by_line.items()) if not is_error]
        errors = [text for _, (is_error, text) in sorted(by_line.items()) if is_error]
        now = self._now()
        outputs: list[tuple[fs.StoredFile, bytes]] = []
        expires_after = self.body.get("output_expires_after")
        expires_s = now + expires_after["seconds"] if expires_after else None
        file_ids: dict[str, str | None] = {"output_file_id": None, "error_file_id": None}
        for field, kind, lines_ in (("output_file_id", "output", output), ("error_file_id", "error", errors)):
            if lines_:
                content = b"\n".join(lines_) + b"\n"
                file = fs.StoredFile(fs.new_file_id(), self.key_id, now, "batch_output", f"{self.batch_id}_{kind}.jsonl", len(content), expires_s)
                outputs.append((file, content))
                file_ids[field] = file.file_id
        body = {**self.body, **file_ids, "status": self.outcome, f"{self.outcome}_at": int(now),
                "request_counts": {"total": max(len(requests), self.body["request_counts"]["total"]), "completed": len(output), "failed": len(errors)},
                "usage": batch_usage(orjson.loads(text) for _, is_error, text in results if not is_error)}
        if self.outcome == "completed":
            body["finalizing_at"] = int(now)
        if await self.store.call(bs.finish, self.batch_id, self.runner.runner_id, body, outputs):
            self.runner.metrics.end({**self.progress, "status": self.outcome, **body["request_counts"], "at": now})
            log.info("batches: %s %s: %d completed, %d failed", self.batch_id, self.outcome, len(output), len(errors))


def batch_usage(lines: Any) -> dict[str, Any]:
    """The tokens of a batch's answered requests, summed as OpenAI reports a batch's `usage` (chat and completions
    count prompt and completion tokens; Responses, input and output; embeddings, their input)."""
    num_in = num_out = num_cached = num_reasoning = 0
    for line in lines:
        answer = (line.get("response") or {}).get("body")
        usage = (answer.get("usage") if isinstance(answer, dict) else None) or {}
        num_in += usage.get("prompt_tokens", usage.get("input_tokens", 0)) or 0
        num_out += usage.get("completion_tokens", usage.get("output_tokens", 0)) or 0
        details_in = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
        details_out = usage.get("completion_tokens_details") or usage.get("output_tokens_details") or {}
        num_cached += details_in.get("cached_tokens") or 0
        num_reasoning += details_out.get("reasoning_tokens") or 0
    return {"input_tokens": num_in, "output_tokens": num_out, "total_tokens": num_in + num_out,
            "input_tokens_details": {"cached_tokens": num_cached}, "output_tokens_details": {"reasoning_tokens": num_reasoning}}


_NOT_RUN = {
    "completed": "the request was not run",  # (not reached: a completed batch ran every request)
    "cancelled": "the batch was cancelled before this request was run",
    "expired": "the batch's completion window ended before this request was run",
    "failed": "the batch failed before this request was run",  # (not reached: a failed batch's requests are unknown)
}
