"""Reading the log back, and a stand-in for a lease, for the storage tests."""

from __future__ import annotations

import asyncio
import dataclasses
import time

from sqlalchemy import create_engine, select

from switchboard.config.schema import StorageConfig
from switchboard.engines.base import Usage
from switchboard.storage.models import feedback_table, requests_table
from switchboard.storage.writer import RequestLog


@dataclasses.dataclass
class FakeReplica:
    replica_id: str = "e#0"
    hardware: str = "l4"


@dataclasses.dataclass
class FakeLease:
    replica: FakeReplica = dataclasses.field(default_factory=FakeReplica)
    was_cold: bool = False


def rows(url: str, table=requests_table) -> list[dict]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return [dict(r._mapping) for r in connection.execute(select(table))]
    finally:
        engine.dispose()


def make_log(url: str, **settings) -> RequestLog:
    sqlite_busy_timeout_s = settings.pop("sqlite_busy_timeout_s", 5.0)
    return RequestLog(StorageConfig(**settings), url, {"e": (1e-6, 2e-6)}, sqlite_busy_timeout_s=sqlite_busy_timeout_s)


def record(log: RequestLog, request_id: str, *, expert: str = "e", outcome: str = "ok") -> None:
    entry = log.begin(request_id, "chat", expert, "router: best", f"prompt of {request_id}")
    started = time.perf_counter()
    log.finish(entry, outcome, 200, started, lease=FakeLease(), first_token_at=started + 0.01, usage=Usage(10, 20))


async def wait_until(predicate, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


__all__ = ["FakeLease", "rows", "make_log", "record", "wait_until", "feedback_table", "requests_table"]


# ---- gateways that keep what users make (stored Responses, chat completions, conversations) ----

STORING_CONFIG = """
experts:
  - id: rec
    backend: {{kind: openai, base_url: "{upstream}", model: up}}
  - id: sim
    backend: {{kind: simulated, time_scale: 0}}
storage: {{url: "{url}", flush_interval_s: 0.05{more}}}
{extra}
"""
ADMIN_ENV = {"SWITCHBOARD_ADMIN_KEY": "admin-" + "a" * 40}


SLOW_EXPERT = "  - id: slow\n    backend: {{kind: simulated, time_scale: 0.2}}\n"
"""Simulated at a fifth of an A10G's timing: about 7 ms a token, 1.4 s to start."""


def storing_app(db_url: str, upstream_url: str, more: str = "", extra: str = "", environ: dict | None = None, slow: bool = False):
    """A gateway on `db_url` with `rec` (the recording upstream at `upstream_url`) and `sim` (simulated, instant),
    and with `slow`, `slow` (simulated, taking time); `more` is added to its storage settings, `extra` to its config."""
    from switchboard.config import parse_config
    from switchboard.gateway.app import build_app

    config = STORING_CONFIG.replace("storage:", SLOW_EXPERT + "storage:") if slow else STORING_CONFIG
    return build_app(parse_config(config.format(upstream=upstream_url, url=db_url, more=more, extra=extra)), environ=environ)


def keyed_storing_app(db_url: str, upstream_url: str) -> tuple[object, list[str]]:
    """`storing_app` with API keys on, and the secrets of two keys of two tenants (acme's, then globex's)."""
    from switchboard.storage import database
    from switchboard.tenants.keys import KeyLimits
    from switchboard.tenants.store import create_key

    engine = database.open_engine(db_url)
    database.migrate(engine)
    secrets = [create_key(engine, f"app-{t}", t, KeyLimits())[1] for t in ("acme", "globex")]
    engine.dispose()
    return storing_app(db_url, upstream_url, extra="auth: {enabled: true}", environ=ADMIN_ENV), secrets
