"""`RequestLog`: records every accepted request (and every feedback) without touching the database on the
request path.

The contract:

- **Request path.** `begin` and `finish` build one dict and append it to an in-memory queue (a deque): no I/O,
  no lock, a couple of microseconds. A background task drains the queue every `flush_interval_s` (sooner when
  `max_batch` records are waiting) and writes batches of at most `max_batch` rows, each batch one transaction,
  in a worker thread.
- **Durability.** A record is durable once the flush after it commits: a crash loses at most the records of the
  last `flush_interval_s` (plus whatever is held during an outage, below). SQLite runs in WAL mode with
  `synchronous=FULL`, so a committed batch also survives a power loss; PostgreSQL commits synchronously by
  default.
- **Outages.** When a write fails the batch goes back to the front of the queue and the writer retries with
  exponential backoff (up to `MAX_BACKOFF_S`), so nothing it holds is lost when the database comes back. Rows
  are inserted with ON CONFLICT DO NOTHING, so a retry of a batch whose commit did land writes nothing twice.
- **Bounded memory.** The queue holds at most `max_pending` records. Past that, during a long outage, the
  *oldest* records are dropped: each drop is counted in `num_dropped` and logged (a warning when dropping
  starts, an error with the count when the database is back). Those records are lost for good.
- **Shutdown.** `stop()` flushes everything still queued (retrying until `shutdown_timeout_s`) and logs an
  error naming the number of records it could not write.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from sqlalchemy import Engine

from switchboard.config.schema import StorageConfig, SwitchboardConfig
from switchboard.engines.base import Usage
from switchboard.storage import database

log = logging.getLogger("switchboard.storage")
MAX_BACKOFF_S = 30.0
T = TypeVar("T")
REQUEST_EXPERT = database.REQUEST_COLUMNS.index("expert")
REQUEST_PROMPT = database.REQUEST_COLUMNS.index("prompt_text")


class LogEntry:
    """What is known of a request when it gets its id; `RequestLog.finish` completes it into a row."""

    __slots__ = ("request_id", "kind", "expert_id", "routing_reason", "prompt_text", "created_at", "key_id")

    def __init__(self, request_id: str, kind: str, expert_id: str, routing_reason: str | None, prompt_text: str | None,
                 key_id: str | None = None) -> None:
        self.request_id = request_id
        self.key_id = key_id
        self.kind = kind
        self.expert_id = expert_id
        self.routing_reason = routing_reason
        self.prompt_text = prompt_text
        self.created_at = time.time()


class RequestLog:
    enabled = True

    def __init__(self, settings: StorageConfig, url: str, prices: Mapping[str, tuple[float, float]] | None = None,
                 *, sqlite_busy_timeout_s: float = 5.0, shutdown_timeout_s: float = 10.0) -> None:
        self.settings = settings
        self.url = url
        self.prices = dict(prices or {})  # expert id → (USD per input token, USD per output token)
        self.sqlite_busy_timeout_s = sqlite_busy_timeout_s
        self.shutdown_timeout_s = shutdown_timeout_s
        self.store_prompts = settings.store_prompts
        self.engine: Engine | None = None
        self._requests: deque[tuple] = deque()  # rows in database.REQUEST_COLUMNS order
        self._feedback: deque[tuple] = deque()  # rows in database.FEEDBACK_COLUMNS order
        self._unflushed_ids: dict[str, str | None] = {}  # request id → its key id, until written
        self._writing: list[tuple] = []  # the request rows of the batch being written: out of the queue, not yet committed
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._flush_lock = asyncio.Lock()
        self._migrated = False
        self._stopping = False
        self.num_written = 0
        self.num_dropped = 0
        self.num_failed_flushes = 0
        self.batch_sizes: deque[int] = deque(maxlen=1000)
        self._dropping = False

    @classmethod
    def for_config(cls, config: SwitchboardConfig, environ: Mapping[str, str], **kwargs: Any) -> "RequestLog":
        return cls(config.storage, config.storage.url or database.default_url(environ), expert_prices(config), **kwargs)

    # ---- the request path: no I/O ----

    def begin(self, request_id: str, kind: str, expert_id: str, routing_reason: str | None, prompt_text: str | None,
              key_id: str | None = None) -> LogEntry:
        """`key_id` is the API key's id (switchboard.tenants), never its secret."""
        return LogEntry(request_id, kind, expert_id, routing_reason, prompt_text if self.store_prompts else None, key_id)

    def finish(self, entry: LogEntry, outcome: str, status: int, started_at: float, *, lease: Any = None,
               first_token_at: float | None = None, usage: Usage | None = None) -> None:
        """Queues the request's row. `started_at` / `first_token_at` are `time.perf_counter()` readings; a whole
        (non-streamed) answer's TTFT is its latency."""
        now = time.perf_counter()
        replica = getattr(lease, "replica", None)
        tokens_in = usage.prompt_tokens if usage is not None else None
        tokens_out = usage.completion_tokens if usage is not None else None
        usd = usd_of(self.prices, entry.expert_id, usage)
        latency_s = now - started_at
        ttft_s = first_token_at - started_at if first_token_at is not None else (latency_s if outcome == "ok" else None)
        # A tuple in database.REQUEST_COLUMNS order: the dict SQLAlchemy wants is built in the writer's thread.
        self._put(self._requests, (
            entry.request_id, entry.created_at, entry.key_id, entry.kind, entry.expert_id,
            replica.replica_id if replica is not None else None, replica.hardware if replica is not None else None,
            tokens_in, tokens_out, usd, ttft_s, latency_s, bool(getattr(lease, "was_cold", False)), entry.routing_reason,
            getattr(outcome, "value", outcome), status, entry.prompt_text,
        ))
        self._unflushed_ids[entry.request_id] = entry.key_id

    def add_feedback(self, request_id: str, score: float) -> str:
        """Queues a feedback row (written after its request, in the same or a later batch); returns its id."""
        feedback_id = uuid.uuid4().hex
        self._put(self._feedback, (feedback_id, request_id, float(score), time.time()))
        return feedback_id

    def _put(self, queue: deque[tuple], row: tuple) -> None:
        if len(self._requests) + len(self._feedback) >= self.settings.max_pending:
            oldest = (self._requests or self._feedback).popleft()
            self._unflushed_ids.pop(oldest[0], None)
            self.num_dropped += 1
            if not self._dropping:
                self._dropping = True
                log.warning("request log: %d records waiting for the database; dropping the oldest from now on", self.settings.max_pending)
        queue.append(row)
        if len(queue) == self.settings.max_batch:
            self._wake.set()

    async def knows(self, request_id: str, key_id: str | None = None) -> bool:
        """Whether `request_id` was logged (still queued, or in the database) — and, given a `key_id`, by that
        API key (a tenant only ever sees its own requests). Raises if the database is down."""
        if request_id in self._unflushed_ids:
            return key_id is None or self._unflushed_ids[request_id] == key_id
        engine = await self._engine()
        return await asyncio.to_thread(database.request_exists, engine, request_id, key_id)

    async def prompt_and_expert(self, request_id: str) -> tuple[str | None, str] | None:
        """The logged prompt text (None when prompts are not stored) and answering expert of a request, or None
        if it is not in the log. Raises if the database is down."""
        if request_id in self._unflushed_ids:
            # Still queued (recent, so near the end), or in the batch being written right now: a feedback sent just
            # after its answer often lands while the writer commits that answer's row, and must not miss it.
            for row in (*reversed(self._requests), *self._writing):
                if row[0] == request_id:
                    return row[REQUEST_PROMPT], row[REQUEST_EXPERT]
        engine = await self._engine()
        return await asyncio.to_thread(database.prompt_and_expert, engine, request_id)

    async def read(self, query: Callable[[Engine], T]) -> T:
        """Runs a blocking read `query(engine)` on the log's database in a worker thread."""
        engine = await self._engine()
        return await asyncio.to_thread(query, engine)

    @property
    def num_pending(self) -> int:
        return len(self._requests) + len(self._feedback)

    # ---- the background side ----

    async def start(self) -> None:
        """Opens the database, migrates it and starts the flush task. A database that cannot be reached is
        logged, not fatal: the flush task keeps trying, and records queue (bounded) meanwhile."""
        try:
            await self._engine()
            await self._migrate()
        except Exception as exc:  # noqa: BLE001 — serving goes on; the writer retries
            log.error("request log: database %s unavailable at start-up (%s); will retry", database_label(self.url), exc)
        self._task = asyncio.create_task(self._run(), name="switchboard-request-log")
        log.info("request log: %s, flushed every %.3g s", database_label(self.url), self.settings.flush_interval_s)

    async def stop(self) -> None:
        """Stops the flush task, then flushes everything queued, retrying until `shutdown_timeout_s`."""
        if self._task is not None:
            # Asked to stop rather than cancelled: on Python 3.11, cancelling `wait_for` just as the event it waits
            # for fires loses the cancellation, and awaiting the task would hang (found by test_writer_properties).
            self._stopping = True
            self._wake.set()
            await self._task
            self._task = None
        deadline = time.monotonic() + self.shutdown_timeout_s
        delay = 0.1
        while self.num_pending and not await self.flush():
            if time.monotonic() + delay > deadline:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
        if self.num_pending:
            log.error("request log: shutting down with %d records not written (database %s unreachable)", self.num_pending, database_label(self.url))
        if self.engine is not None:
            self.engine.dispose()

    async def _run(self) -> None:
        delay = self.settings.flush_interval_s
        while not self._stopping:
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            if self._stopping:
                return
            if await self.flush():
                delay = self.settings.flush_interval_s
            else:
                delay = min(max(delay, self.settings.flush_interval_s) * 2, MAX_BACKOFF_S)

    async def flush(self) -> bool:
        """Writes everything queued, `max_batch` rows per transaction. False if a write failed (the failed
        batch is back at the front of the queue)."""
        async with self._flush_lock:
            while self._requests or self._feedback:
                requests = _take(self._requests, self.settings.max_batch)
                feedback = _take(self._feedback, self.settings.max_batch - len(requests))
                self._writing = requests
                try:
                    engine = await self._engine()
                    if not self._migrated:
                        await self._migrate()
                    await asyncio.to_thread(database.write_batch, engine, requests, feedback)
                except BaseException as exc:  # any failure, or cancelled mid-write: keep the rows, retry later
                    self._requests.extendleft(reversed(requests))
                    self._feedback.extendleft(reversed(feedback))
                    self._trim()
                    if not isinstance(exc, Exception):
                        raise
                    self.num_failed_flushes += 1
                    log.warning("request log: write of %d records failed (%s: %s); %d queued, retrying with backoff",
                                len(requests) + len(feedback), type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "", self.num_pending)
                    return False
                finally:
                    self._writing = []
                for row in requests:
                    self._unflushed_ids.pop(row[0], None)
                self.num_written += len(requests) + len(feedback)
                self.batch_sizes.append(len(requests) + len(feedback))
                if self._dropping:
                    self._dropping = False
                    log.error("request log: database back; %d records were dropped in total while it was unreachable", self.num_dropped)
            return True

    def _trim(self) -> None:
        while self.num_pending > self.settings.max_pending:
            oldest = (self._requests or self._feedback).popleft()
            self._unflushed_ids.pop(oldest[0], None)
            self.num_dropped += 1

    async def _engine(self) -> Engine:
        if self.engine is None:
            self.engine = await asyncio.to_thread(database.open_engine, self.url, sqlite_busy_timeout_s=self.sqlite_busy_timeout_s)
        return self.engine

    async def _migrate(self) -> None:
        assert self.engine is not None
        await asyncio.to_thread(database.migrate, self.engine)
        self._migrated = True


def usd_of(prices: Mapping[str, tuple[float, float]], expert_id: str, usage: Usage | None) -> float:
    """A request's cost from its usage and `prices` (expert id → USD per input token, per output token)."""
    if usage is None:
        return 0.0
    usd_in, usd_out = prices.get(expert_id, (0.0, 0.0))
    return usage.prompt_tokens * usd_in + usage.completion_tokens * usd_out


def expert_prices(config: SwitchboardConfig) -> dict[str, tuple[float, float]]:
    return config.usd_per_token()


def _take(queue: deque[tuple], n: int) -> list[tuple]:
    return [queue.popleft() for _ in range(min(n, len(queue)))]


def database_label(url: str) -> str:
    """The URL without its password, for logs."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001
        return "<unparsable url>"


class DisabledRequestLog:
    """The request log when `storage.enabled` is false: the same calls, nothing recorded."""

    enabled = False
    num_pending = 0

    def begin(self, *args: Any, **kwargs: Any) -> None:
        return None

    def finish(self, *args: Any, **kwargs: Any) -> None:
        return None

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None
