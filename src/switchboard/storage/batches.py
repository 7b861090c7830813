"""Batches (OpenAI's Batch API, `/v1/batches`): the blocking queries, and the store the gateway awaits.

A batch row holds the batch object as the client reads it, its status apart (to find the unfinished ones), and
the claim of the gateway that runs it: a lease (`claimed_by`, `claimed_until`) its runner renews while it works.
A batch whose lease ran out — its gateway stopped or died — is claimed by the next runner that looks, which runs
only the requests without a row in `batch_results` (each finished request's output line, written as it finishes).
When the batch ends, its output and error files are written with its final state in one transaction, and its
result rows deleted. The gateway reaches these through the file store (storage/files.py: the same database).
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import Engine, and_, delete, func, or_, select, update

from switchboard.storage import files
from switchboard.storage.kept import cursor_page, owned_by, utc
from switchboard.storage.models import batch_results_table as results_table
from switchboard.storage.models import batches_table as table

UNFINISHED = ("validating", "in_progress", "finalizing", "cancelling")
"""The statuses a runner still has work in; every other (`completed`, `failed`, `expired`, `cancelled`) is final."""


def _with_counts(connection: Any, batch_id: str, status: str, body_text: str) -> dict[str, Any]:
    """The batch object; while it runs, with its request counts as of now (its finished requests' rows)."""
    body = orjson.loads(body_text)
    if status in ("in_progress", "cancelling", "finalizing"):
        c = results_table.c
        rows = connection.execute(select(c.is_error, func.count()).where(c.batch_id == batch_id).group_by(c.is_error))
        counts = {bool(is_error): n for is_error, n in rows}
        body["request_counts"] = {**body["request_counts"], "completed": counts.get(False, 0), "failed": counts.get(True, 0)}
    return body


# ---- blocking (a worker thread) ----

def create(engine: Engine, body: dict[str, Any], key_id: str | None, created_s: float) -> None:
    """Stores a new batch; `created_s` is its creation time to the sub-second (the body's `created_at` is whole
    seconds): lists are newest first even among batches made in the same second."""
    with engine.begin() as connection:
        connection.execute(table.insert().values(id=body["id"], key_id=key_id, created_at=utc(created_s), status=body["status"],
                                                 body=orjson.dumps(body).decode()))


def load(engine: Engine, batch_id: str, key_id: str | None) -> dict[str, Any] | None:
    with engine.connect() as connection:
        row = connection.execute(select(table.c.status, table.c.body).where(table.c.id == batch_id, owned_by(table, key_id))).first()
        return None if row is None else _with_counts(connection, batch_id, row[0], row[1])


def list_page(engine: Engine, key_id: str | None, *, after: str | None, limit: int) -> tuple[list[dict[str, Any]], bool] | None:
    """A page of `key_id`'s batches, newest first, and whether more follow; None if `after` names none of them."""
    with engine.connect() as connection:
        found = cursor_page(connection, table, select(table.c.id, table.c.status, table.c.body).where(owned_by(table, key_id)),
                            visible=owned_by(table, key_id), after=after, limit=limit, order="desc")
        return None if found is None else ([_with_counts(connection, *row) for row in found[0]], found[1])


def request_cancel(engine: Engine, batch_id: str, key_id: str | None, now_s: float) -> dict[str, Any] | None:
    """Marks a running batch `cancelling` (its runner stops starting requests, then ends it `cancelled`); a batch
    in any other status is left as it is. Returns the batch object, or None if `key_id` has no such batch."""
    with engine.begin() as connection:
        row = connection.execute(select(table.c.status, table.c.body).where(table.c.id == batch_id, owned_by(table, key_id))).first()
        if row is None:
            return None
        status, text = row
        if status in ("validating", "in_progress"):
            body = {**orjson.loads(text), "status": "cancelling", "cancelling_at": int(now_s)}
            text = orjson.dumps(body).decode()
            connection.execute(update(table).where(table.c.id == batch_id, table.c.status == status).values(status="cancelling", body=text))
            status = "cancelling"
        return _with_counts(connection, batch_id, status, text)


def claim_next(engine: Engine, runner_id: str, now_s: float, lease_s: float) -> tuple[str, str | None, dict[str, Any]] | None:
    """Claims the oldest unfinished batch that no other runner holds a live lease on: (id, key id, batch object);
    None if there is none. Two runners that race for one batch: the conditional update lets one win."""
    c = table.c
    free = or_(c.claimed_until.is_(None), c.claimed_until < utc(now_s), c.claimed_by == runner_id)
    with engine.begin() as connection:
        for batch_id, key_id, text in connection.execute(select(c.id, c.key_id, c.body).where(c.status.in_(UNFINISHED), free).order_by(c.created_at).limit(8)):
            claimed = connection.execute(update(table).where(c.id == batch_id, c.status.in_(UNFINISHED), free)
                                         .values(claimed_by=runner_id, claimed_until=utc(now_s + lease_s))).rowcount
            if claimed:
                return batch_id, key_id, orjson.loads(text)
    return None


def renew(engine: Engine, batch_id: str, runner_id: str, now_s: float, lease_s: float) -> str | None:
    """Extends the runner's lease; returns the batch's status now (a client may have cancelled it), or None if the
    runner no longer holds it (deleted, or taken by another runner after the lease ran out)."""
    c = table.c
    with engine.begin() as connection:
        if not connection.execute(update(table).where(c.id == batch_id, c.claimed_by == runner_id).values(claimed_until=utc(now_s + lease_s))).rowcount:
            return None
        return connection.execute(select(c.status).where(c.id == batch_id)).scalar_one()


def set_state(engine: Engine, batch_id: str, runner_id: str, body: dict[str, Any], *, unless_cancelling: bool = False) -> bool:
    """Writes the batch object (a status change) if the runner holds the batch — and, with `unless_cancelling`,
    if no client cancelled it meanwhile. Whether it was written."""
    c = table.c
    where = [c.id == batch_id, c.claimed_by == runner_id]
    if unless_cancelling:
        where.append(c.status != "cancelling")
    with engine.begin() as connection:
        return connection.execute(update(table).where(and_(*where)).values(status=body["status"], body=orjson.dumps(body).decode())).rowcount > 0


def release(engine: Engine, batch_id: str, runner_id: str) -> None:
    """Gives the lease up (the runner stops): the next runner to look takes the batch up at once."""
    c = table.c
    with engine.begin() as connection:
        connection.execute(update(table).where(c.id == batch_id, c.claimed_by == runner_id).values(claimed_by=None, claimed_until=None))


def done_lines(engine: Engine, batch_id: str) -> set[int]:
    """The input lines whose requests have finished (their output lines are kept)."""
    with engine.connect() as connection:
        return {row[0] for row in connection.execute(select(results_table.c.line).where(results_table.c.batch_id == batch_id))}


def save_result(engine: Engine, batch_id: str, line: int, is_error: bool, output: dict[str, Any]) -> None:
    with engine.begin() as connection:
        connection.execute(results_table.insert().values(batch_id=batch_id, line=line, is_error=is_error, output=orjson.dumps(output).decode()))


def results(engine: Engine, batch_id: str) -> list[tuple[int, bool, str]]:
    """Every finished request's (line, is_error, output line as JSON text), in input order."""
    c = results_table.c
    with engine.connect() as connection:
        return [(line, bool(is_error), output) for line, is_error, output in
                connection.execute(select(c.line, c.is_error, c.output).where(c.batch_id == batch_id).order_by(c.line))]


def finish(engine: Engine, batch_id: str, runner_id: str, body: dict[str, Any], outputs: list[tuple[files.StoredFile, bytes]]) -> bool:
    """Ends the batch in one transaction: its output files written, its final object saved, its lease released, its
    result rows deleted. False (nothing written) if the runner no longer holds it."""
    c = table.c
    with engine.begin() as connection:
        if not connection.execute(update(table).where(c.id == batch_id, c.claimed_by == runner_id)
                                  .values(status=body["status"], body=orjson.dumps(body).decode(), claimed_by=None, claimed_until=None)).rowcount:
            return False
        for file, content in outputs:
            files.insert(connection, file, content)
        connection.execute(delete(results_table).where(results_table.c.batch_id == batch_id))
    return True
