"""Rebuilding the online corrections from the request log at start: every scored request, oldest first.

The log is the one record of feedback (requests × feedback, the key's tenant from `api_keys`); the learner's
memory is a function of it, so nothing else needs persisting or migrating. Blocking: call it in a thread.
"""

from __future__ import annotations

from sqlalchemy import Engine, select

from switchboard.online.learner import ANONYMOUS, FeedbackEvent
from switchboard.storage.models import feedback_table, requests_table

MAX_RESTORED_EVENTS = 200_000
"""Only the most recent scored requests are replayed, so a start never has to embed an unbounded history."""


def logged_feedback(engine: Engine, limit: int = MAX_RESTORED_EVENTS) -> list[FeedbackEvent]:
    """The `limit` most recent feedback rows joined with their requests, oldest first. A request made with an
    API key belongs to that key's tenant (a deleted key's requests to a tenant of their own, named by the key
    id, so they still never mix with anyone else's); without a key, to the anonymous tenant."""
    from switchboard.tenants.store import keys_table

    r, f, k = requests_table.c, feedback_table.c, keys_table.c
    query = (
        select(r.key_id, k.tenant, r.prompt_text, r.expert, f.score)
        .select_from(feedback_table.join(requests_table, r.id == f.request_id).outerjoin(keys_table, k.id == r.key_id))
        .order_by(f.created_at.desc(), f.id.desc())
        .limit(limit)
    )
    with engine.connect() as connection:
        rows = connection.execute(query).all()
    return [
        FeedbackEvent(tenant=ANONYMOUS if key_id is None else (tenant or f"key:{key_id}"), prompt=prompt, expert=expert, score=float(score))
        for key_id, tenant, prompt, expert, score in reversed(rows)
    ]
