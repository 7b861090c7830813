"""Property: whatever the pattern of failed writes and however small the queue, every record is either written
exactly once or counted as dropped — and with a queue big enough for the outage, none is dropped."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from switchboard.storage import writer as writer_module

from .helpers import make_log, record


class FlakyDatabase:
    """Stands in for `database.write_batch`: fails the writes the schedule says, remembers the rows of the others."""

    def __init__(self, schedule: list[bool]) -> None:
        self.schedule = list(schedule)
        self.written: list[str] = []

    def write_batch(self, engine, requests, feedback) -> None:
        if self.schedule and self.schedule.pop(0):
            raise OSError("database unreachable")
        self.written.extend(row[0] for row in requests)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    bursts=st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=8),
    failures=st.lists(st.booleans(), max_size=20),
    max_pending=st.integers(min_value=1, max_value=200),
    max_batch=st.integers(min_value=1, max_value=50),
)
def test_every_record_is_written_once_or_counted_as_dropped(bursts, failures, max_pending, max_batch):
    fake = FlakyDatabase(failures)

    async def run() -> writer_module.RequestLog:
        log = make_log("sqlite://", flush_interval_s=3600, max_pending=max_pending, max_batch=max_batch)
        await log.start()
        original = writer_module.database.write_batch
        writer_module.database.write_batch = fake.write_batch
        try:
            n = 0
            for burst in bursts:
                for _ in range(burst):
                    record(log, f"r{n}")
                    n += 1
                await log.flush()
            while log.num_pending:
                await log.flush()
        finally:
            writer_module.database.write_batch = original
            await log.stop()
        return log

    log = asyncio.run(run())
    total = sum(bursts)
    assert len(fake.written) == len(set(fake.written))  # never twice
    assert len(fake.written) + log.num_dropped == total  # written or counted, nothing silently lost
    if max_pending >= total:
        assert log.num_dropped == 0
