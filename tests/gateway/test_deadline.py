"""The stream deadline (gateway/deadline.py): one timer bounding a stream's waits, never its writes."""

from __future__ import annotations

import asyncio

import pytest

from switchboard.gateway.deadline import StreamDeadline


async def test_a_wait_that_outlives_the_deadline_raises_timeout_and_cancels_the_awaited():
    loop = asyncio.get_running_loop()
    deadline = StreamDeadline(loop.time() + 0.05)
    assert await deadline.wait(asyncio.sleep(0, result="first")) == "first"
    slow = asyncio.ensure_future(asyncio.sleep(10))
    with pytest.raises(TimeoutError):
        await deadline.wait(slow)
    assert slow.cancelled()
    assert asyncio.current_task().cancelling() == 0  # the deadline's own cancel is taken back
    deadline.close()


async def test_a_deadline_passing_between_waits_cancels_nothing_and_the_next_wait_raises():
    loop = asyncio.get_running_loop()
    deadline = StreamDeadline(loop.time() + 0.02)
    await deadline.wait(asyncio.sleep(0))
    await asyncio.sleep(0.05)  # "writing to the client": not interrupted
    with pytest.raises(TimeoutError):
        await deadline.wait(asyncio.sleep(0))
    deadline.close()


async def test_reschedule_pulls_the_deadline_in_as_a_drain_does():
    loop = asyncio.get_running_loop()
    deadline = StreamDeadline(loop.time() + 60)
    await deadline.wait(asyncio.sleep(0))  # armed
    deadline.reschedule(loop.time() + 0.02)
    assert deadline.when() < loop.time() + 1
    with pytest.raises(TimeoutError):
        await deadline.wait(asyncio.sleep(10))
    deadline.close()


async def test_cancellation_from_elsewhere_is_not_a_timeout():
    loop = asyncio.get_running_loop()

    async def stream() -> None:
        deadline = StreamDeadline(loop.time() + 60)
        try:
            await deadline.wait(asyncio.sleep(10))
        finally:
            deadline.close()

    task = asyncio.ensure_future(stream())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
