"""Blocking database operations of the request log: opening an engine, migrating, writing a batch, lookups.

Everything here blocks; the writer (storage/writer.py) calls it from a worker thread, never the event loop.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, select
from sqlalchemy.pool import StaticPool

from switchboard.storage.models import feedback_table, requests_table

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
REQUEST_COLUMNS = ("id", "created_at", "key_id", "kind", "expert", "replica", "hardware", "tokens_in", "tokens_out", "usd_cost",
                   "ttft_s", "latency_s", "cold_start", "routing_reason", "outcome", "status", "prompt_text")
FEEDBACK_COLUMNS = ("id", "request_id", "score", "created_at")


def default_url(environ: Mapping[str, str]) -> str:
    """SQLite at $XDG_DATA_HOME/switchboard/requests.db (default ~/.local/share/switchboard/requests.db)."""
    data_home = environ.get("XDG_DATA_HOME") or os.path.join(environ.get("HOME") or os.path.expanduser("~"), ".local", "share")
    return f"sqlite:///{Path(data_home) / 'switchboard' / 'requests.db'}"


def open_engine(url: str, *, sqlite_busy_timeout_s: float = 5.0) -> Engine:
    """An engine for `url`. SQLite files get their directory created, WAL and `synchronous=FULL` (a committed
    batch survives a process crash and a power loss); `sqlite://` (in memory) shares one connection across
    threads, for tests."""
    if url.startswith("sqlite"):
        memory = url in ("sqlite://", "sqlite:///:memory:")
        if not memory:
            path = url.split("///", 1)[1] if "///" in url else ""
            if path:
                Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": sqlite_busy_timeout_s}}
        if memory:
            kwargs["poolclass"] = StaticPool
        engine = create_engine(url, **kwargs)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _: Any) -> None:
            cursor = dbapi_connection.cursor()
            if not memory:
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.close()

        return engine
    # pool_pre_ping: after the server went away and came back, stale pooled connections are replaced, not used.
    return create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=2, connect_args=_pg_connect_args(url))


def _pg_connect_args(url: str) -> dict[str, Any]:
    return {"connect_timeout": 5} if url.startswith("postgresql") else {}


def migrate(engine: Engine) -> None:
    """Brings the schema to the latest Alembic revision (idempotent)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def insert_or_ignore(engine: Engine, table: Any) -> Any:
    """INSERT that ignores rows already there, so retrying a batch whose commit did land is harmless."""
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif engine.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        return table.insert()
    return insert(table).on_conflict_do_nothing()


def write_batch(engine: Engine, requests: Sequence[tuple], feedback: Sequence[tuple]) -> None:
    """Writes both lists of rows (tuples in REQUEST_COLUMNS / FEEDBACK_COLUMNS order, `created_at` a Unix
    time) in one transaction, requests first: all of it lands, or none."""
    with engine.begin() as connection:
        if requests:
            connection.execute(insert_or_ignore(engine, requests_table), _dicts(REQUEST_COLUMNS, requests))
        if feedback:
            connection.execute(insert_or_ignore(engine, feedback_table), _dicts(FEEDBACK_COLUMNS, feedback))


def _dicts(columns: tuple[str, ...], rows: Sequence[tuple]) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        d = dict(zip(columns, row))
        d["created_at"] = dt.datetime.fromtimestamp(d["created_at"], dt.timezone.utc)
        out.append(d)
    return out


def request_exists(engine: Engine, request_id: str, key_id: str | None = None) -> bool:
    """Whether the request is in the log (and, given `key_id`, was made with that API key)."""
    query = select(requests_table.c.id).where(requests_table.c.id == request_id)
    if key_id is not None:
        query = query.where(requests_table.c.key_id == key_id)
    with engine.connect() as connection:
        return connection.execute(query).first() is not None


def prompt_and_expert(engine: Engine, request_id: str) -> tuple[str | None, str] | None:
    """The logged prompt text (None if not stored) and the expert that answered, or None if not logged."""
    query = select(requests_table.c.prompt_text, requests_table.c.expert).where(requests_table.c.id == request_id)
    with engine.connect() as connection:
        row = connection.execute(query).first()
    return None if row is None else (row[0], row[1])
