"""Failover: which failed attempts may be tried again, where the next attempt goes, and the loop that runs them.

An *attempt* is one try of a request on one expert (a lease on one of its replicas). Only attempts that sent
nothing to the client are ever repeated, so a retry is invisible to it: a whole answer is retried before its
status line, a stream before its first token. Once a stream's first token is out, a failure ends it with an
explicit SSE error event instead (see `handlers.Handlers._sse`).

Where the next attempt goes (`plan_next`, a pure function):

- a failure that may be transient (connection refused or reset, the engine process died, an upstream 5xx or
  garbage, a stream that ended before its first token) is retried on the *same* expert — the fleet hands the
  new lease another replica when the expert has one, and the failed replica's circuit counts the failure —
  after an exponential backoff with full jitter, up to `retries_per_expert` times;
- a failure that says the expert cannot serve now (a stall past its read timeout, admission refused with
  429/503, an open circuit, the upstream's own 429 rate limit), or a transient one whose retries are used up, moves to the next expert of the
  ranking whose circuit is not open: for `model: "auto"` the router's ranking (`ExpertChoice.fallbacks`),
  for a named model the expert's configured `fallbacks` (none by default: naming a model means that model);
- a failure that is the request's own fault (the upstream's 4xx) is final, as is running out of attempts
  (`max_attempts`) or time (`deadline_s` since arrival; the request timeout bounds everything anyway).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from switchboard.config.schema import FailoverConfig
from switchboard.engines.base import (
    Completion,
    EngineError,
    EngineRateLimited,
    EngineTimeout,
    GenerationRequest,
    RequestKind,
    StreamEvent,
)
from switchboard.gateway import choices
from switchboard.gateway.capabilities import relays_everything
from switchboard.runtime.lease import AdmissionRejected, CircuitOpen

T = TypeVar("T")


class FailureKind(str, enum.Enum):
    RETRY = "retry"  # may be transient: the same expert again (another replica), then the next expert
    FALLBACK = "fallback"  # this expert cannot serve now: the next expert
    FATAL = "fatal"  # the request's own fault: answer with it


def classify(exc: BaseException) -> FailureKind:
    if isinstance(exc, AdmissionRejected):
        return FailureKind.FALLBACK
    if isinstance(exc, EngineRateLimited):
        return FailureKind.FALLBACK  # not the request's fault, and asking the same upstream again now is what it refused
    if isinstance(exc, EngineError):
        if exc.status < 500:
            return FailureKind.FATAL
        # A stalled expert will most likely stall again: waiting out its read timeout twice helps nobody.
        return FailureKind.FALLBACK if isinstance(exc, EngineTimeout) else FailureKind.RETRY
    if isinstance(exc, StopAsyncIteration):  # a stream that ended before its first event
        return FailureKind.RETRY
    return FailureKind.FATAL


def error_code(exc: BaseException) -> str:
    if isinstance(exc, EngineError):
        return exc.code
    if isinstance(exc, AdmissionRejected):
        if isinstance(exc, CircuitOpen):
            return "circuit_open"
        return "expert_overloaded" if exc.status == 429 else "expert_unavailable"
    if isinstance(exc, StopAsyncIteration):
        return "empty_stream"
    return type(exc).__name__


@dataclasses.dataclass(frozen=True, slots=True)
class FailedAttempt:
    expert_id: str
    replica_id: str
    kind: FailureKind
    code: str
    detail: str

    def as_json(self) -> dict[str, str]:
        return {"expert": self.expert_id, "replica": self.replica_id, "error": self.code}


@dataclasses.dataclass(frozen=True, slots=True)
class NextAttempt:
    """Where the next attempt goes and after how long; `expert_id` None means give up (`reason` says why)."""

    expert_id: str | None
    delay_s: float = 0.0
    reason: str = ""

    @property
    def step(self) -> str:
        return "give-up" if self.expert_id is None else ("retry" if self.reason == "retry" else "fallback")


def backoff_s(num_retries_done: int, settings: FailoverConfig, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(max, base · 2^n)] for the (n+1)-th retry, so retries of many requests
    failing together spread out instead of arriving in waves."""
    return rng.uniform(0.0, min(settings.backoff_max_s, settings.backoff_base_s * 2 ** num_retries_done))


def plan_next(
    ranking: Sequence[str],
    failures: Sequence[FailedAttempt],
    settings: FailoverConfig,
    elapsed_s: float,
    is_available: Callable[[str], bool],
    rng: random.Random,
) -> NextAttempt:
    """The next attempt after `failures` (oldest first) for a request `elapsed_s` old. Pure but for `rng`."""
    if not failures:
        return NextAttempt(ranking[0], reason="first")
    last = failures[-1]
    if last.kind is FailureKind.FATAL:
        return NextAttempt(None, reason=f"not retryable ({last.code})")
    if not settings.enabled:
        return NextAttempt(None, reason="failover is disabled")
    if len(failures) >= settings.max_attempts:
        return NextAttempt(None, reason=f"all {settings.max_attempts} attempts failed")
    remaining_s = settings.deadline_s - elapsed_s
    if remaining_s <= 0:
        return NextAttempt(None, reason=f"the failover deadline of {settings.deadline_s:g} s passed")
    num_on_last = sum(1 for f in failures if f.expert_id == last.expert_id)
    if last.kind is FailureKind.RETRY and num_on_last <= settings.retries_per_expert and is_available(last.expert_id):
        return NextAttempt(last.expert_id, min(remaining_s, backoff_s(num_on_last - 1, settings, rng)), reason="retry")
    tried = {f.expert_id for f in failures}
    for expert_id in ranking:
        if expert_id not in tried and is_available(expert_id):
            return NextAttempt(expert_id, reason="fallback")
    return NextAttempt(None, reason="no fallback expert left" if len(ranking) > 1 else "the expert has no fallback")


class AttemptError(Exception):
    """An attempt's failure, with the replica it failed on (raised by the attempt callables the loop runs)."""

    def __init__(self, cause: BaseException, replica_id: str = "") -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.replica_id = replica_id


class AttemptsFailed(Exception):
    """Every attempt failed; `last` is the final attempt's error (what the client is told), `why` why no
    further attempt was made."""

    def __init__(self, last: BaseException, why: str) -> None:
        super().__init__(why)
        self.last = last
        self.why = why


class FailoverRun(Generic[T]):
    """One request's attempts. `failures` stays readable if the run is cancelled or times out part-way."""

    def __init__(
        self,
        settings: FailoverConfig,
        rng: random.Random,
        is_available: Callable[[str], bool],
        *,
        on_failure: Callable[[FailedAttempt, NextAttempt], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.settings = settings
        self.rng = rng
        self.is_available = is_available
        self.on_failure = on_failure
        self.clock = clock
        self.sleep = sleep
        self.failures: list[FailedAttempt] = []
        self.expert_id = ""

    async def first_success(self, ranking: Sequence[str], attempt: Callable[[str], Awaitable[T]]) -> T:
        """Runs `attempt(expert_id)` as `plan_next` directs until one returns. `attempt` raises `AttemptError`
        for a failed attempt; anything else (cancellation included) propagates at once. Raises
        `AttemptsFailed` when the plan gives up."""
        started_at = self.clock()
        plan = plan_next(ranking, (), self.settings, 0.0, self.is_available, self.rng)
        while True:
            assert plan.expert_id is not None
            self.expert_id = plan.expert_id
            if plan.delay_s > 0:
                await self.sleep(plan.delay_s)
            try:
                return await attempt(plan.expert_id)
            except AttemptError as exc:
                cause = exc.cause
                detail = getattr(cause, "detail", None) or str(cause)
                failure = FailedAttempt(plan.expert_id, exc.replica_id, classify(cause), error_code(cause), detail)
                self.failures.append(failure)
                plan = plan_next(ranking, self.failures, self.settings, self.clock() - started_at, self.is_available, self.rng)
                if self.on_failure is not None:
                    self.on_failure(failure, plan)
                if plan.expert_id is None:
                    raise AttemptsFailed(cause, plan.reason) from cause

    def describe(self) -> list[dict[str, str]]:
        return [f.as_json() for f in self.failures]


class LeaseAttempts:
    """One request's attempt callables for `FailoverRun`: each takes a fresh lease on the given expert.
    `lease` is the latest attempt's (the one the request log and headers name)."""

    __slots__ = ("fleet", "request_id", "kind", "body", "num_prompt", "max_tokens", "prefix_key", "lease")

    def __init__(self, fleet: Any, request_id: str, kind: RequestKind, body: dict[str, Any], num_prompt: int, max_tokens: dict[str, int],
                 prefix_key: str) -> None:
        self.fleet = fleet
        self.request_id = request_id
        self.kind = kind
        self.body = body
        self.num_prompt = num_prompt
        self.max_tokens = max_tokens  # expert id → max_tokens for it, in failover order
        self.prefix_key = prefix_key
        self.lease: Any = None

    def _lease(self, expert_id: str) -> tuple[Any, GenerationRequest]:
        max_tokens = self.max_tokens[expert_id]
        self.lease = self.fleet.lease(expert_id, self.request_id, self.num_prompt, max_tokens, self.prefix_key)
        return self.lease, GenerationRequest(self.request_id, self.kind, self.body, max_tokens, self.num_prompt)

    def num_choices_on(self, expert_id: str) -> int:
        """Choices the gateway makes itself: prompts × `n` for engines that answer one (gateway/choices.py);
        servers the request is relayed to (`openai`, `process`) make their own."""
        num = choices.num_generations(self.body)
        if num == 1:
            return 1
        expert = self.fleet.expert(expert_id)
        return 1 if expert is None or relays_everything(expert) else num

    async def whole(self, expert_id: str) -> Completion:
        lease, gen = self._lease(expert_id)
        n = self.num_choices_on(expert_id)
        try:
            async with lease:
                if n > 1:
                    return await choices.complete_choices(lease, choices.choice_requests(gen), choices.num_choices(self.body))
                return await lease.complete(gen)  # a Ray lease retries once on another replica if its node is lost
        except (EngineError, AdmissionRejected) as exc:
            raise AttemptError(exc, lease.replica.replica_id if lease.replica else "") from exc

    async def stream(self, expert_id: str) -> tuple[StreamEvent, AsyncIterator[StreamEvent], Any]:
        """The first event, the rest of the stream and the lease, held until the stream ends."""
        lease, gen = self._lease(expert_id)
        try:
            await lease.__aenter__()
        except (EngineError, AdmissionRejected) as exc:
            raise AttemptError(exc) from exc
        n = self.num_choices_on(expert_id)
        events = choices.stream_choices(lease, choices.choice_requests(gen), choices.num_choices(self.body)) if n > 1 else lease.stream(gen)
        try:
            first = await anext(events)
        except BaseException as exc:
            await lease.__aexit__(type(exc), exc, None)
            if isinstance(exc, (EngineError, StopAsyncIteration)):
                raise AttemptError(exc, lease.replica.replica_id) from exc
            raise
        return first, events, lease
