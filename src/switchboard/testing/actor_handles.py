"""An actor's methods called in-process through the shape of a Ray actor handle, for tests of the protocols
between gateways and Ray actors without Ray (the transport is the one thing left out)."""

from __future__ import annotations

import asyncio
from typing import Any


class InProcessHandle:
    """`handle.method.remote(*args)` calls `target.method(*args)` and returns an awaitable of its result: a
    coroutine method runs as a task (so a call nobody awaits still runs, and calls start in the order they were
    made; Ray promises no order for an async actor's calls, so a protocol must not rely on this one); a plain
    method runs at once. Call it from a running loop."""

    def __init__(self, target: Any) -> None:
        self._target = target

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._target, name)

        class Remote:
            @staticmethod
            def remote(*args: Any) -> asyncio.Future:
                result = method(*args)
                if asyncio.iscoroutine(result):
                    return asyncio.ensure_future(result)
                done = asyncio.get_running_loop().create_future()
                done.set_result(result)
                return done

        return Remote
