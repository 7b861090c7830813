"""The database going away and coming back: a private PostgreSQL server (scripts/postgres.sh on its own data
directory and port, so concurrent test runs on the shared test server are not disturbed) is stopped with
requests queued, then started again. Nothing the writer holds is lost."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from switchboard.testing.servers import free_port

from .conftest import pg_url
from .helpers import make_log, record, rows, wait_until

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.postgres


def _pg_ctl(data_dir: Path, *args: str) -> None:
    pg_ctl = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))[-1]
    subprocess.run(["runuser", "-u", "postgres", "--", str(pg_ctl), "-D", str(data_dir), *args], check=True, capture_output=True)


@pytest.fixture
def private_postgres():
    if pg_url() is None:
        pytest.skip("SWITCHBOARD_TEST_PG_URL is not set (make test starts PostgreSQL and sets it)")
    data_dir = Path(f"/tmp/switchboard-pg-outage-{uuid.uuid4().hex[:8]}")
    port = free_port()
    url = subprocess.run([str(REPO / "scripts" / "postgres.sh"), str(data_dir), str(port), "outage"],
                         check=True, capture_output=True, text=True).stdout.strip()
    try:
        yield url, data_dir, port
    finally:
        subprocess.run(["runuser", "-u", "postgres", "--", str(sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))[-1]),
                        "-D", str(data_dir), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(data_dir, ignore_errors=True)


async def test_server_stopped_and_started_loses_nothing(private_postgres):
    url, data_dir, port = private_postgres
    log = make_log(url, flush_interval_s=0.05)
    await log.start()
    record(log, "before")
    await wait_until(lambda: log.num_written == 1)

    _pg_ctl(data_dir, "-m", "fast", "stop")
    for i in range(200):
        record(log, f"during{i}")
    await wait_until(lambda: log.num_failed_flushes >= 2)
    assert log.num_written == 1 and log.num_pending == 200

    _pg_ctl(data_dir, "-l", str(data_dir / "server.log"), "-w", "-o", f"-p {port} -k {data_dir} -c listen_addresses=127.0.0.1", "start")
    await wait_until(lambda: log.num_pending == 0, timeout_s=60)
    await log.stop()
    assert {r["id"] for r in rows(url)} == {"before", *(f"during{i}" for i in range(200))}
    assert log.num_dropped == 0
