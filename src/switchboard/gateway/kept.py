"""What the endpoints over stored objects (stored Responses, stored chat completions) share: whose objects a
request may see, the 503 of a store whose database is down, and OpenAI's cursor-page parameters."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

from switchboard.gateway.auth import current_caller
from switchboard.gateway.errors import ApiError
from switchboard.storage.kept import UNAVAILABLE_BACKOFF_S, Order, StoreUnavailable

log = logging.getLogger("switchboard.gateway")
MAX_PAGE = 100
"""The largest `limit` of a page (OpenAI's)."""


def caller_key_id() -> str | None:
    """The calling API key's id (None when auth is off): each key reads only the objects it made."""
    caller = current_caller.get()
    return caller.key.key_id if caller is not None else None


def storage_unavailable(exc: Exception, what: str) -> ApiError:
    """The 503 for a store whose database failed; `what` names the store ("response store")."""
    if not isinstance(exc, StoreUnavailable):  # (that one was logged when the database failed)
        log.warning("%s: database unavailable: %s", what, exc)
    return ApiError(503, f"the {what} is unavailable; retry later", code="storage_unavailable",
                    headers={"retry-after": str(round(UNAVAILABLE_BACKOFF_S))})


@dataclasses.dataclass(frozen=True)
class PageParams:
    limit: int
    order: Order
    after: str | None


def page_params(query: Mapping[str, str], default_order: Order, *, default_limit: int = 20, max_limit: int = MAX_PAGE) -> PageParams:
    """`limit` (1..`max_limit`, default `default_limit`: 100 and 20 for most of OpenAI's lists), `order` and
    `after` of a list request, as OpenAI pages lists; a 400 naming the parameter otherwise."""
    try:
        limit = int(query.get("limit", str(default_limit)))
    except ValueError:
        raise ApiError(400, "limit must be an integer", param="limit", code="invalid_value") from None
    if not 1 <= limit <= max_limit:
        raise ApiError(400, f"limit must be between 1 and {max_limit}", param="limit", code="invalid_value")
    order = query.get("order", default_order)
    if order not in ("asc", "desc"):
        raise ApiError(400, "order must be 'asc' or 'desc'", param="order", code="invalid_value")
    return PageParams(limit, order, query.get("after"))  # type: ignore[arg-type]  # checked above


def list_page(items: list[dict[str, Any]], params: PageParams, what: str) -> dict[str, Any]:
    """One page of `items` (oldest first), as OpenAI's list object: newest first for `order: desc`, starting after
    the item `params.after` names (a 400 if none does; `what` names the items in it)."""
    ordered = items if params.order == "asc" else items[::-1]
    if params.after is not None:
        ids = [item.get("id") for item in ordered]
        if params.after not in ids:
            raise ApiError(400, f"no {what} has the id '{params.after}'", param="after", code="invalid_value")
        ordered = ordered[ids.index(params.after) + 1:]
    return page_object(ordered[:params.limit], len(ordered) > params.limit)


def page_object(page: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """OpenAI's cursor page: the items, the first and last ids, and whether more follow."""
    return {"object": "list", "data": page, "first_id": page[0].get("id") if page else None, "last_id": page[-1].get("id") if page else None,
            "has_more": has_more}
