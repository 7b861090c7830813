"""One replica's engine in simulated time: vLLM-style continuous batching driven by the roofline profile.

Scheduling follows the hardware's engine (`EngineProfile.chunked_prefill`):

- *Chunked prefill* (GPU kinds; vLLM V1's and SGLang's default, Sarathi-Serve's stall-free batching): every step
  carries all running sequences' next tokens plus prompt chunks up to the step's token budget
  (`EngineProfile.max_num_batched_tokens` minus the decodes): prompts already under way first, then waiting
  requests FIFO, as many as fit the batch size and the KV cache. A long prompt is computed over several steps;
  decodes never stall. The step is timed by `EngineProfile.step_time_s`, which charges a chunk's attention
  over the prompt tokens before it.
- *Prefill-first* (the CPU worker: llama.cpp decodes one sequence): at every iteration boundary, waiting
  requests are prefilled whole (FIFO, as many as fit the batch size, `max_num_batched_tokens` and the KV cache;
  a single longer prompt runs alone), stalling decodes for that iteration.

Otherwise all running sequences decode one token. KV cache is reserved for a request's whole prompt + output
when it is admitted (no preemption).

Prefix caching: a request whose prompt starts with a shared prefix (`Sequence.num_prefix_tokens`, e.g. a chat
template's system prompt) does not compute it again on an engine that has computed it before — as vLLM's
automatic prefix caching and llama-cpp-python's reuse of the previous prompt's KV do; a new engine (after a
cold start) has nothing cached, unless its warm-up caches the prefix (`Hardware.warmup_caches_prefix`: the
llama.cpp worker). At least one prompt token is always computed (llama.cpp re-evaluates the last
one to get logits). The KV cache still holds the whole prompt.

To stay fast, consecutive identical decode iterations are one *segment*: the engine schedules a single event at
the end of the segment (when the first running sequence finishes), timed exactly by
`EngineProfile.decode_steps_time_s`. A request arriving mid-segment cuts it at the next iteration boundary.

Handlers return what they caused (`StepOutcome`); a superseded event is recognised by its `version` and ignored.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import heapq
import math

from switchboard.frozen import fast_init
from switchboard.perf.roofline import EngineProfile
from switchboard.sim.events import Event, Priority

_NO_BATCH: list = []  # never appended to: `_admit` builds a fresh list for every batch


@dataclasses.dataclass(slots=True)
class Sequence:
    """A request inside an engine. Times are filled in as it progresses (NaN until then)."""

    request_index: int
    num_prompt_tokens: int
    num_output_tokens: int
    num_prefix_tokens: int = 0
    """Leading prompt tokens shared with other requests (same length = same prefix); see the module doc."""
    num_cached_tokens: int = 0
    """Prompt tokens taken from the prefix cache instead of computed (set when its prefill is planned)."""
    num_computed_tokens: int = 0
    """With chunked prefill: prompt tokens computed (or taken from the prefix cache) so far."""
    finish_step: int = 0
    """While running: the engine's decode-iteration count (`ReplicaEngine.num_decode_steps`) at which its last
    token is out."""
    started_at: float = math.nan
    first_token_at: float = math.nan
    finished_at: float = math.nan

    @property
    def num_reserved_tokens(self) -> int:
        return self.num_prompt_tokens + self.num_output_tokens


class Phase(enum.Enum):
    IDLE = "idle"
    PREFILL = "prefill"
    """A step that computes prompt tokens; with chunked prefill the running sequences decode in it too."""
    DECODE = "decode"


@fast_init
@dataclasses.dataclass(frozen=True, slots=True)
class StepOutcome:
    """What one engine event caused: sequences whose prefill began, that got their first token, that finished,
    and the engine's next event (None when it went idle or the event was stale)."""

    started: list[Sequence] | tuple[()] = ()
    first_tokens: list[Sequence] | tuple[()] = ()
    finished: list[Sequence] | tuple[()] = ()
    next_event: Event | None = None


_NOTHING = StepOutcome()


@fast_init
@dataclasses.dataclass(frozen=True, slots=True)
class StepDone:
    """Payload of an engine event: which replica, and which plan it belongs to."""

    replica_id: str
    version: int


class ReplicaEngine:
    """The batching state of one warm replica. Not thread-safe; owned by the simulator."""

    def __init__(self, replica_id: str, profile: EngineProfile) -> None:
        self.replica_id = replica_id
        self.profile = profile
        self.waiting: collections.deque[Sequence] = collections.deque()
        # The running sequences as a heap of (finish_step, join order, sequence): the next to finish first, and
        # among those finishing together, the order they joined (a plain list's order). Their lengths are not
        # stored per sequence but follow from the iteration count, so a decode segment costs O(1), not O(batch).
        self.running: list[tuple[int, int, Sequence]] = []
        self.num_decode_steps = 0
        """Decode iterations this engine has run (the clock of `Sequence.finish_step`)."""
        self._num_joined = 0
        self._context_base = 0
        """Sum over running sequences of (context tokens when it joined − `num_decode_steps` then): the batch's
        total context is this + len(running) · num_decode_steps."""
        self.phase = Phase.IDLE
        self.version = 0
        self.kv_reserved_tokens = 0
        self.busy_s = 0.0
        self._busy_since = 0.0
        self._segment_started_at = 0.0
        self._phase_ends_at = 0.0
        self._prefill_batch: list[Sequence] = []
        self._prefilling: list[Sequence] = []
        """Chunked prefill: admitted sequences whose prompt is not computed yet, in admission order."""
        self._chunks: list[tuple[Sequence, int]] = []
        """Chunked prefill: the current step's (sequence, prompt tokens) chunks, a prefix of `_prefilling`."""
        self._segment_steps = 0
        self._segment_context = 0
        self._cached_prefixes: set[int] = set()
        """Shared prefixes (by length) this engine has computed."""
        self._warm_prefix = profile.hardware.warmup_caches_prefix
        """Every shared prefix is cached from the start (the warm-up left it in the KV cache)."""

    # ------------------------------------------------------------------------------------------ queries

    @property
    def num_outstanding(self) -> int:
        return len(self.waiting) + len(self.running) + len(self._prefill_batch) + len(self._prefilling)

    def can_ever_fit(self, num_prompt_tokens: int, num_output_tokens: int) -> bool:
        return num_prompt_tokens + num_output_tokens <= self.profile.kv_capacity_tokens

    # ------------------------------------------------------------------------------------------ handlers

    def submit(self, seq: Sequence, now_s: float) -> StepOutcome:
        """Queue `seq` (the caller checked `can_ever_fit`). Starts the engine if idle; cuts a decode segment at
        the next iteration boundary so the newcomer is prefilled there."""
        self.waiting.append(seq)
        if self.phase is Phase.IDLE:
            started, event = self._plan(now_s)
            return StepOutcome(started, (), (), event)
        if self.phase is Phase.DECODE:
            return StepOutcome(next_event=self._cut_segment(now_s))
        return _NOTHING

    def on_step(self, done: StepDone, now_s: float) -> StepOutcome:
        """The planned iteration(s) ended at `now_s`: apply them and plan the next."""
        if done.version != self.version or self.phase is Phase.IDLE:
            return _NOTHING
        first_tokens: list[Sequence] = []
        finished: list[Sequence] = []
        if self.phase is Phase.DECODE:
            self.num_decode_steps += self._segment_steps
            self._retire_finished(now_s, finished)  # a segment ends at the first finish, or earlier when cut
        elif self._chunks:  # a chunked step: every running sequence decoded one token beside the chunks
            self.num_decode_steps += 1
            self._retire_finished(now_s, finished)
            num_done = 0
            for seq, num_tokens in self._chunks:
                seq.num_computed_tokens += num_tokens
                if seq.num_computed_tokens >= seq.num_prompt_tokens:
                    num_done += 1
                    self._emit_first_token(seq, now_s, first_tokens, finished)
            # Chunks go to `_prefilling` in order and only the last one can stop short: the done ones lead.
            del self._prefilling[:num_done]
            self._chunks = []
        else:  # a prefill-first step: decoding stalled meanwhile, the running sequences are unchanged
            for seq in self._prefill_batch:
                self._emit_first_token(seq, now_s, first_tokens, finished)
            self._prefill_batch = []
        started, event = self._plan(now_s)
        return StepOutcome(started, first_tokens, finished, event)

    def _emit_first_token(self, seq: Sequence, now_s: float, first_tokens: list[Sequence],
                          finished: list[Sequence]) -> None:
        """`seq`'s prompt is computed: its first token is out now; it decodes from the next step on."""
        seq.first_token_at = now_s
        first_tokens.append(seq)
        if seq.num_output_tokens <= 1:  # the prefill's token was its only one
            self._finish(seq, now_s, finished)
            return
        seq.finish_step = self.num_decode_steps + seq.num_output_tokens - 1
        heapq.heappush(self.running, (seq.finish_step, self._num_joined, seq))
        self._num_joined += 1
        self._context_base += seq.num_prompt_tokens + 1 - self.num_decode_steps

    def _retire_finished(self, now_s: float, finished: list[Sequence]) -> None:
        running = self.running
        while running and running[0][0] <= self.num_decode_steps:
            seq = heapq.heappop(running)[2]
            self._context_base -= seq.num_prompt_tokens + 1 - (seq.finish_step - seq.num_output_tokens + 1)
            self._finish(seq, now_s, finished)

    def _finish(self, seq: Sequence, now_s: float, finished: list[Sequence]) -> None:
        seq.finished_at = now_s
        self.kv_reserved_tokens -= seq.num_prompt_tokens + seq.num_output_tokens
        finished.append(seq)

    def withdraw(self, seq: Sequence) -> bool:
        """Take a not-yet-started sequence back out of the queue (migration); False if it already started."""
        try:
            self.waiting.remove(seq)
        except ValueError:
            return False
        return True

    # ------------------------------------------------------------------------------------------ planning

    def _plan(self, now_s: float) -> tuple[list[Sequence], Event | None]:
        """Start the next iteration(s): (sequences whose prefill begins, the event at its end or None when
        idle)."""
        was_busy = self.phase is not Phase.IDLE
        self.version += 1
        if self.profile.chunked_prefill:
            batch = self._admit_chunked(now_s) if self.waiting or self._prefilling else _NO_BATCH
        else:
            batch = self._admit() if self.waiting else _NO_BATCH
        if self._chunks:
            self.phase = Phase.PREFILL
            num_tokens = num_units = 0
            for seq, chunk in self._chunks:
                num_tokens += chunk
                num_units += chunk * (2 * seq.num_computed_tokens + chunk)
            context = self._context_base + len(self.running) * self.num_decode_steps
            duration = self.profile.step_time_s(len(self.running), context, num_tokens, num_units)
        elif batch:
            self.phase = Phase.PREFILL
            self._prefill_batch = batch
            num_prompt_tokens = 0
            for seq in batch:
                seq.started_at = now_s
                num_prompt_tokens += seq.num_prompt_tokens - self._reuse_prefix(seq) if seq.num_prefix_tokens \
                    else seq.num_prompt_tokens
            duration = self.profile.prefill_time_s(num_prompt_tokens)
        elif self.running:
            self.phase = Phase.DECODE
            self._segment_steps = self.running[0][0] - self.num_decode_steps  # until the next finish
            self._segment_context = self._context_base + len(self.running) * self.num_decode_steps
            duration = self.profile.decode_steps_time_s(len(self.running), self._segment_context, self._segment_steps)
        else:
            if was_busy:
                self.busy_s += now_s - self._busy_since
            self.phase = Phase.IDLE
            return _NO_BATCH, None
        if not was_busy:
            self._busy_since = now_s
        self._segment_started_at = now_s
        self._phase_ends_at = now_s + duration
        event = Event(self._phase_ends_at, Priority.ENGINE_STEP, "engine_step", StepDone(self.replica_id, self.version))
        return batch, event

    def _reuse_prefix(self, seq: Sequence) -> int:
        """Prompt tokens of `seq` served from the prefix cache (recorded on it); its prefix is cached afterwards."""
        if self._warm_prefix or seq.num_prefix_tokens in self._cached_prefixes:
            seq.num_cached_tokens = min(seq.num_prefix_tokens, seq.num_prompt_tokens - 1)
        else:
            self._cached_prefixes.add(seq.num_prefix_tokens)
        return seq.num_cached_tokens

    def _admit_chunked(self, now_s: float) -> list[Sequence]:
        """Fill this step's token budget: prompts under way first, then waiting requests (admitted, returned).

        Sets `_chunks`; a request is admitted only when it gets a chunk, i.e. while budget is left.
        """
        budget = self.profile.max_num_batched_tokens - len(self.running)
        chunks = self._chunks
        for seq in self._prefilling:
            if budget <= 0:
                return _NO_BATCH
            chunk = min(seq.num_prompt_tokens - seq.num_computed_tokens, budget)
            chunks.append((seq, chunk))
            budget -= chunk
        admitted: list[Sequence] = []
        max_batch, capacity = self.profile.max_batch_size, self.profile.kv_capacity_tokens
        while budget > 0 and self.waiting and len(self.running) + len(self._prefilling) < max_batch:
            seq = self.waiting[0]
            if self.kv_reserved_tokens + seq.num_reserved_tokens > capacity:
                break
            self.waiting.popleft()
            self.kv_reserved_tokens += seq.num_reserved_tokens
            seq.started_at = now_s
            seq.num_computed_tokens = self._reuse_prefix(seq) if seq.num_prefix_tokens else 0
            chunk = min(seq.num_prompt_tokens - seq.num_computed_tokens, budget)
            self._prefilling.append(seq)
            chunks.append((seq, chunk))
            admitted.append(seq)
            budget -= chunk
        return admitted

    def _admit(self) -> list[Sequence]:
        batch: list[Sequence] = []
        budget = self.profile.max_num_batched_tokens
        while self.waiting and len(self.running) + len(batch) < self.profile.max_batch_size:
            seq = self.waiting[0]
            if batch and seq.num_prompt_tokens > budget:
                break
            if self.kv_reserved_tokens + seq.num_reserved_tokens > self.profile.kv_capacity_tokens:
                break
            self.waiting.popleft()
            self.kv_reserved_tokens += seq.num_reserved_tokens
            budget -= seq.num_prompt_tokens
            batch.append(seq)
        return batch

    def _cut_segment(self, now_s: float) -> Event | None:
        """End the current decode segment at the first iteration boundary at or after `now_s`."""
        k = self._segment_steps
        total_s = self._phase_ends_at - self._segment_started_at
        if k <= 1 or total_s <= 0:
            return None
        done_steps = min(k, int((now_s - self._segment_started_at) / (total_s / k)) + 1)
        ends_at = self._segment_started_at + self._steps_time_s(done_steps)
        while ends_at < now_s and done_steps < k:  # later steps are longer than the mean; never end in the past
            done_steps += 1
            ends_at = self._segment_started_at + self._steps_time_s(done_steps)
        if done_steps >= k:
            return None
        self._segment_steps = done_steps
        self.version += 1
        self._phase_ends_at = ends_at
        return Event(self._phase_ends_at, Priority.ENGINE_STEP, "engine_step", StepDone(self.replica_id, self.version))

    def _steps_time_s(self, num_steps: int) -> float:
        return self.profile.decode_steps_time_s(len(self.running), self._segment_context, num_steps)

    def busy_time_s(self, now_s: float) -> float:
        """Seconds this engine had work, up to `now_s`."""
        return self.busy_s + (now_s - self._busy_since if self.phase is not Phase.IDLE else 0.0)
