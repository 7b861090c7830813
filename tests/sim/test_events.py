"""The event queue pops in (time, priority, insertion) order, whatever the payloads."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from switchboard.sim.events import Event, EventQueue, Priority

events = st.lists(
    st.tuples(st.sampled_from([0.0, 1.0, 1.5, 2.0]), st.sampled_from(list(Priority)), st.integers()), max_size=60
)


@settings(deadline=None)
@given(events)
def test_pops_in_time_priority_seq_order(specs):
    q = EventQueue()
    for i, (t, p, _) in enumerate(specs):
        q.push(Event(t, p, "x", payload={"i": i}))  # dict payloads are not orderable: must never be compared
    popped = [q.pop() for _ in range(len(q))]
    keys = [(e.time_s, int(e.priority), e.payload["i"]) for e in popped]
    assert keys == sorted(keys)
    assert not q


def test_same_time_ties_follow_priority_then_insertion():
    q = EventQueue()
    q.push(Event(5.0, Priority.CONTROL, "control"))
    q.push(Event(5.0, Priority.ARRIVAL, "arrival-1"))
    q.push(Event(5.0, Priority.ENGINE_STEP, "step"))
    q.push(Event(5.0, Priority.ARRIVAL, "arrival-2"))
    q.push(Event(4.0, Priority.END, "earlier"))
    q.push(Event(5.0, Priority.REPLICA_READY, "ready"))
    assert [q.pop().kind for _ in range(6)] == ["earlier", "ready", "step", "arrival-1", "arrival-2", "control"]
    assert q.peek_time_s() == float("inf")
