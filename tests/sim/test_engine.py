"""The replica engine: exact roofline timing for one request, batching never loses or duplicates a sequence."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switchboard.perf import engine_profile
from switchboard.sim.engine import Phase, ReplicaEngine, Sequence
from switchboard.sim.events import EventQueue


def drive(engine: ReplicaEngine, arrivals: list[tuple[float, Sequence]]) -> list[Sequence]:
    """Feed arrivals at their times and run the engine's own events; returns finished sequences in order."""
    queue = EventQueue()
    pending = sorted(arrivals, key=lambda a: a[0])
    finished: list[Sequence] = []
    while pending or queue:
        if pending and pending[0][0] <= queue.peek_time_s():
            t, seq = pending.pop(0)
            outcome = engine.submit(seq, t)
        else:
            event = queue.pop()
            outcome = engine.on_step(event.payload, event.time_s)
        finished += outcome.finished
        if outcome.next_event is not None:
            queue.push(outcome.next_event)
    return finished


def test_single_request_follows_the_roofline_exactly():
    p = engine_profile(8, "a10g")
    seq = Sequence(0, num_prompt_tokens=1000, num_output_tokens=101)
    [done] = drive(ReplicaEngine("r", p), [(5.0, seq)])
    assert done.first_token_at == pytest.approx(5.0 + p.prefill_time_s(1000))
    decode_s = sum(p.decode_step_time_s(1, 1001 + i) for i in range(100))
    assert done.finished_at == pytest.approx(done.first_token_at + decode_s)


def test_one_token_answer_finishes_at_first_token():
    p = engine_profile(8, "h100")
    [done] = drive(ReplicaEngine("r", p), [(0.0, Sequence(0, 10, 1))])
    assert done.finished_at == done.first_token_at


def test_a_newcomer_cuts_a_decode_segment_and_is_prefilled_at_the_next_boundary():
    p = engine_profile(8, "h100")
    first, second = Sequence(0, 100, 1000), Sequence(1, 100, 10)
    engine = ReplicaEngine("r", p)
    done = drive(engine, [(0.0, first), (1.0, second)])
    assert [s.request_index for s in done] == [1, 0]
    assert 1.0 <= second.started_at < 1.0 + 2 * p.decode_step_time_s(1, 2000)
    assert engine.phase is Phase.IDLE and engine.kv_reserved_tokens == 0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 30), st.integers(1, 3000), st.integers(1, 400)), min_size=1, max_size=40),
       st.sampled_from(["cpu", "l4", "h100"]))
def test_every_sequence_finishes_once_in_causal_order(specs, kind):
    p = engine_profile(0.135 if kind == "cpu" else 8, kind, bytes_per_param=0.625 if kind == "cpu" else 2.0)
    seqs = [Sequence(i, prompt, out) for i, (_, prompt, out) in enumerate(specs)]
    engine = ReplicaEngine("r", p)
    done = drive(engine, [(t, s) for (t, _, _), s in zip(specs, seqs)])
    assert sorted(s.request_index for s in done) == list(range(len(specs)))
    for (t, _, _), s in zip(specs, seqs):
        assert t <= s.started_at < s.first_token_at <= s.finished_at
        assert not math.isnan(s.finished_at)
    assert engine.num_outstanding == 0 and engine.kv_reserved_tokens == 0
    assert 0 < engine.busy_time_s(max(s.finished_at for s in seqs)) <= max(s.finished_at for s in seqs)


def test_a_shared_prefix_is_computed_once_per_engine_and_again_after_a_cold_start():
    p = engine_profile(8, "a10g")
    engine = ReplicaEngine("r", p)
    first, second, other = Sequence(0, 300, 2, 24), Sequence(1, 200, 2, 24), Sequence(2, 100, 2, 40)
    drive(engine, [(0.0, first), (10.0, second), (20.0, other)])
    assert (first.num_cached_tokens, second.num_cached_tokens, other.num_cached_tokens) == (0, 24, 0)
    assert first.first_token_at == pytest.approx(0.0 + p.prefill_time_s(300))
    # The rest of the prompt attends to the cached prefix: 176 tokens after 24 (chunked prefill on GPUs).
    assert second.first_token_at == pytest.approx(10.0 + p.step_time_s(0, 0, 176, 176 * (2 * 24 + 176)))
    assert other.first_token_at == pytest.approx(20.0 + p.prefill_time_s(100))  # another prefix: not cached
    assert engine.kv_reserved_tokens == 0
    # A prompt that is nothing but the prefix still computes its last token; a new engine starts empty.
    short = Sequence(3, 24, 2, 24)
    drive(engine, [(30.0, short)])
    assert short.num_cached_tokens == 23
    fresh = Sequence(4, 200, 2, 24)
    drive(ReplicaEngine("r2", p), [(0.0, fresh)])
    assert fresh.num_cached_tokens == 0


def test_a_long_prompt_is_prefilled_in_budget_sized_chunks_that_attend_to_the_earlier_ones():
    p = engine_profile(8, "h200")
    assert p.chunked_prefill and p.max_num_batched_tokens == 2048
    seq = Sequence(0, num_prompt_tokens=5000, num_output_tokens=3)
    [done] = drive(ReplicaEngine("r", p), [(0.0, seq)])
    chunks = [(2048, 0), (2048, 2048), (904, 4096)]  # (tokens, computed before)
    prefill_s = sum(p.step_time_s(0, 0, c, c * (2 * q + c)) for c, q in chunks)
    assert done.first_token_at == pytest.approx(prefill_s)
    assert done.finished_at == pytest.approx(prefill_s + p.decode_steps_time_s(1, 5001, 2))
    assert prefill_s > p.prefill_time_s(5000)  # three steps' fixed costs; the attention work is the same


def test_with_chunked_prefill_decodes_ride_along_instead_of_stalling():
    """Sarathi-Serve's point: a newcomer's long prompt no longer stops a running sequence for its whole prefill, so
    a short answer's time per output token is one chunk step, not the newcomer's whole prefill."""
    chunked = engine_profile(8, "h200")
    prefill_first = dataclasses.replace(chunked, hardware=dataclasses.replace(chunked.hardware, chunked_prefill=False))
    tpot_s = {}
    for name, profile in (("chunked", chunked), ("prefill-first", prefill_first)):
        running, newcomer = Sequence(0, 100, 2), Sequence(1, 8000, 2)
        engine = ReplicaEngine("r", profile)
        drive(engine, [(0.0, running), (0.001, newcomer)])
        assert newcomer.started_at == running.first_token_at  # it arrived during `running`'s prefill step
        tpot_s[name] = running.finished_at - running.first_token_at  # its one decoded token
        assert engine.num_outstanding == 0 and engine.kv_reserved_tokens == 0
    assert tpot_s["chunked"] < 0.5 * tpot_s["prefill-first"]
    assert tpot_s["chunked"] == pytest.approx(chunked.step_time_s(1, 101, 2047, 2047 * 2047))  # the first chunk
