"""Storage tests run on SQLite and on the real PostgreSQL that `make test` starts (scripts/postgres.sh sets
SWITCHBOARD_TEST_PG_URL); without that variable the PostgreSQL variants are skipped."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

PG_URL_ENV = "SWITCHBOARD_TEST_PG_URL"


def pg_url() -> str | None:
    return os.environ.get(PG_URL_ENV) or None


@pytest.fixture
def postgres_database() -> Iterator[str]:
    """A fresh database on the test server, dropped afterwards: tests (and concurrent test runs) never share one."""
    base = pg_url()
    if base is None:
        pytest.skip(f"{PG_URL_ENV} is not set (make test starts PostgreSQL and sets it)")
    name = "sbt_" + uuid.uuid4().hex[:12]
    admin = create_engine(make_url(base).set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'requests.db'}"
    return request.getfixturevalue("postgres_database")


@pytest.fixture(scope="module")
def upstream():
    """A recording OpenAI-compatible upstream (its URL ends in /v1) for the stored-object tests' gateways."""
    from switchboard.testing.canned_upstream import RecordingUpstream
    from switchboard.testing.servers import serve_in_thread

    recording = RecordingUpstream()
    with serve_in_thread(recording) as url:
        yield recording, url + "/v1"
