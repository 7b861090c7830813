"""A crash (the process killed without shutdown) loses at most what was queued since the last flush."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from .helpers import rows

SCRIPT = textwrap.dedent("""
    import asyncio, os, sys
    sys.path.insert(0, {tests!r})
    from storage.helpers import make_log, record

    async def main():
        log = make_log({url!r}, flush_interval_s=3600)
        await log.start()
        for i in range(40):
            record(log, f"flushed{{i}}")
        assert await log.flush()
        for i in range(5):
            record(log, f"queued{{i}}")
        os._exit(9)  # no shutdown, no flush: like a kill -9

    asyncio.run(main())
""")


def test_a_crash_keeps_every_flushed_record(db_url):
    from pathlib import Path

    tests_dir = str(Path(__file__).resolve().parents[1])
    result = subprocess.run([sys.executable, "-c", SCRIPT.format(tests=tests_dir, url=db_url)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 9, result.stderr
    assert {r["id"] for r in rows(db_url)} == {f"flushed{i}" for i in range(40)}
