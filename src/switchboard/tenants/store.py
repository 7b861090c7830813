"""The key table and its blocking operations (create, list, revoke, load) plus the spend rebuilt from the
request log. Everything here blocks: the gateway calls it from a worker thread, the CLI directly.

The table lives in the storage database (`storage.url`), created by the same Alembic chain as the request log
(storage/migrations, revision 0002).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time

from sqlalchemy import DateTime, Engine, Float, Integer, String, func, select, update
from sqlalchemy.orm import Mapped, mapped_column

from switchboard.storage.models import Base, requests_table
from switchboard.tenants.keys import ApiKey, KeyLimits, OnViolation, digest_of, display_prefix, new_key_id, new_secret


class KeyRecord(Base):
    """One API key. `digest` is the SHA-256 of the secret; the secret itself is never stored."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    prefix: Mapped[str] = mapped_column(String(16))
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    rpm: Mapped[int | None] = mapped_column(Integer)
    tpm: Mapped[int | None] = mapped_column(Integer)
    usd_per_day: Mapped[float | None] = mapped_column(Float)
    usd_per_month: Mapped[float | None] = mapped_column(Float)
    quality_floor: Mapped[float | None] = mapped_column(Float)
    usd_per_mtok_ceiling: Mapped[float | None] = mapped_column(Float)
    on_violation: Mapped[str] = mapped_column(String(16))


keys_table = KeyRecord.__table__
LIMIT_COLUMNS = ("rpm", "tpm", "usd_per_day", "usd_per_month", "quality_floor", "usd_per_mtok_ceiling")


class KeyNotFound(LookupError):
    pass


def _utc(t: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc)


def _seconds(d: dt.datetime | None) -> float | None:
    if d is None:
        return None
    if d.tzinfo is None:  # SQLite gives naive datetimes back; they were written as UTC
        d = d.replace(tzinfo=dt.timezone.utc)
    return d.timestamp()


def create_key(engine: Engine, name: str, tenant: str, limits: KeyLimits, now_s: float | None = None) -> tuple[ApiKey, str]:
    """Stores a new key; returns it and its secret (the only time the secret exists outside the caller)."""
    secret = new_secret()
    now_s = time.time() if now_s is None else now_s
    key = ApiKey(new_key_id(), name, tenant, display_prefix(secret), digest_of(secret), limits, now_s)
    with engine.begin() as connection:
        connection.execute(keys_table.insert().values(
            id=key.key_id, name=name, tenant=tenant, prefix=key.prefix, digest=key.digest, created_at=_utc(now_s),
            revoked_at=None, on_violation=limits.on_violation.value, **{c: getattr(limits, c) for c in LIMIT_COLUMNS},
        ))
    return key, secret


def load_keys(engine: Engine) -> list[ApiKey]:
    """Every key, revoked ones included, oldest first."""
    with engine.connect() as connection:
        rows = connection.execute(select(keys_table).order_by(keys_table.c.created_at, keys_table.c.id)).mappings().all()
    return [
        ApiKey(r["id"], r["name"], r["tenant"], r["prefix"], r["digest"],
               KeyLimits(**{c: r[c] for c in LIMIT_COLUMNS}, on_violation=OnViolation(r["on_violation"])),
               _seconds(r["created_at"]) or 0.0, _seconds(r["revoked_at"]))
        for r in rows
    ]


def revoke_key(engine: Engine, key_id: str, now_s: float | None = None) -> ApiKey:
    """Marks the key revoked (idempotent: a revoked key keeps its first revocation time). Raises KeyNotFound."""
    now_s = time.time() if now_s is None else now_s
    with engine.begin() as connection:
        connection.execute(update(keys_table).where(keys_table.c.id == key_id, keys_table.c.revoked_at.is_(None)).values(revoked_at=_utc(now_s)))
    for key in load_keys(engine):
        if key.key_id == key_id:
            return key
    raise KeyNotFound(key_id)


def update_key_limits(engine: Engine, key_id: str, limits: KeyLimits) -> ApiKey:
    """Replaces the key's limits (its id, name and secret stay). A running gateway applies them at its next
    re-read of the key table. Raises KeyNotFound."""
    with engine.begin() as connection:
        result = connection.execute(update(keys_table).where(keys_table.c.id == key_id).values(
            on_violation=limits.on_violation.value, **{c: getattr(limits, c) for c in LIMIT_COLUMNS}))
    if result.rowcount == 0:
        raise KeyNotFound(key_id)
    return next(k for k in load_keys(engine) if k.key_id == key_id)


@dataclasses.dataclass(frozen=True, slots=True)
class Spend:
    usd_today: float
    usd_this_month: float


def spend_since(engine: Engine, day_start_s: float, month_start_s: float) -> dict[str, Spend]:
    """Per key id: the USD cost of its logged requests since the start of the UTC day and month."""
    r = requests_table.c
    out: dict[str, list[float]] = {}
    with engine.connect() as connection:
        for index, since in ((0, day_start_s), (1, month_start_s)):
            query = select(r.key_id, func.coalesce(func.sum(r.usd_cost), 0.0)).where(r.key_id.is_not(None), r.created_at >= _utc(since)).group_by(r.key_id)
            for key_id, usd in connection.execute(query):
                out.setdefault(key_id, [0.0, 0.0])[index] = float(usd)
    return {k: Spend(v[0], v[1]) for k, v in out.items()}
