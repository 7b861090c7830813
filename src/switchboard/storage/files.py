"""Files (OpenAI's Files API, `/v1/files`): the blocking queries, and the store the gateway awaits.

A file is one row, its content included (a batch's input, at most `batches.max_file_bytes`; or a batch's output
or errors, which the batch runner writes). Scoped to the API key that made it (none when auth is off); a file with
an `expires_at` in the past is never served and is purged.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from sqlalchemy import Engine, delete, or_, select

from switchboard.storage.kept import DisabledStore, KeptStore, Order, cursor_page, owned_by, unix_s, utc
from switchboard.storage.models import files_table as table


@dataclasses.dataclass(frozen=True)
class StoredFile:
    file_id: str
    key_id: str | None
    created_s: float
    purpose: str
    filename: str
    num_bytes: int
    expires_s: float | None = None

    def as_object(self) -> dict[str, Any]:
        """OpenAI's file object."""
        return {"id": self.file_id, "object": "file", "bytes": self.num_bytes, "created_at": int(self.created_s),
                "expires_at": None if self.expires_s is None else int(self.expires_s), "filename": self.filename,
                "purpose": self.purpose, "status": "processed", "status_details": None}


def new_file_id() -> str:
    return f"file-{os.urandom(12).hex()}"


_COLUMNS = (table.c.id, table.c.key_id, table.c.created_at, table.c.purpose, table.c.filename, table.c.bytes, table.c.expires_at)


def _file(row: Any) -> StoredFile:
    return StoredFile(row[0], row[1], unix_s(row[2]), row[3], row[4], row[5], None if row[6] is None else unix_s(row[6]))


def _visible(key_id: str | None, now_s: float) -> Any:
    """`key_id`'s files that have not expired at `now_s`."""
    return owned_by(table, key_id) & or_(table.c.expires_at.is_(None), table.c.expires_at > utc(now_s))


# ---- blocking (a worker thread) ----

def insert(connection: Any, file: StoredFile, content: bytes) -> None:
    """Adds the file on `connection` (a transaction of the caller's: the batch runner writes its outputs with the
    batch's final state)."""
    connection.execute(table.insert().values(id=file.file_id, key_id=file.key_id, created_at=utc(file.created_s), purpose=file.purpose,
                                             filename=file.filename, bytes=file.num_bytes, content=content,
                                             expires_at=None if file.expires_s is None else utc(file.expires_s)))


def create(engine: Engine, file: StoredFile, content: bytes) -> None:
    with engine.begin() as connection:
        insert(connection, file, content)


def load(engine: Engine, file_id: str, key_id: str | None, now_s: float) -> StoredFile | None:
    with engine.connect() as connection:
        row = connection.execute(select(*_COLUMNS).where(table.c.id == file_id, _visible(key_id, now_s))).first()
    return None if row is None else _file(row)


def content(engine: Engine, file_id: str, key_id: str | None, now_s: float) -> bytes | None:
    with engine.connect() as connection:
        row = connection.execute(select(table.c.content).where(table.c.id == file_id, _visible(key_id, now_s))).first()
    return None if row is None else bytes(row[0])


def list_page(engine: Engine, key_id: str | None, now_s: float, *, purpose: str | None, after: str | None, limit: int,
              order: Order) -> tuple[list[StoredFile], bool] | None:
    """A page of `key_id`'s unexpired files (of `purpose`, if given) and whether more follow; None if `after`
    names none of them."""
    query = select(*_COLUMNS).where(_visible(key_id, now_s))
    if purpose is not None:
        query = query.where(table.c.purpose == purpose)
    with engine.connect() as connection:
        found = cursor_page(connection, table, query, visible=_visible(key_id, now_s), after=after, limit=limit, order=order)
    return None if found is None else ([_file(row) for row in found[0]], found[1])


def remove(engine: Engine, file_id: str, key_id: str | None, now_s: float) -> bool:
    with engine.begin() as connection:
        return connection.execute(delete(table).where(table.c.id == file_id, _visible(key_id, now_s))).rowcount > 0


def purge(engine: Engine, now_s: float) -> int:
    """Deletes the files that expired before `now_s`; how many."""
    with engine.begin() as connection:
        return connection.execute(delete(table).where(table.c.expires_at.is_not(None), table.c.expires_at <= utc(now_s))).rowcount


# ---- the gateway's side ----

class FileStore(KeptStore):
    """Awaitable access to files and batches (storage/kept.py: the backoff after a failure). `call(fn, ...)` runs
    one of the functions here or in storage/batches.py in the worker thread, with the same arguments but the engine."""


class DisabledFileStore(DisabledStore):
    """Storage off, or prompts not kept: no file can be uploaded, no batch made (a batch's input is user content)."""
