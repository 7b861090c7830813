"""Ids of the Responses API: its objects' own, and the map between a Response's id and the request log's."""

from __future__ import annotations

import os


def new_id(prefix: str) -> str:
    return f"{prefix}_{os.urandom(16).hex()}"


def response_id_for(request_id: str) -> str:
    """The Response's id for the gateway's request id (`chatcmpl-<hex>` → `resp_<hex>`): the same answer under
    the name a Responses client sees, which `POST /v1/feedback` takes too (`logged_request_id`)."""
    return "resp_" + request_id.removeprefix("chatcmpl-")


def logged_request_id(response_or_request_id: str) -> str:
    """The request log's id for an id a client holds: a Response's id maps back to its chat request's."""
    if response_or_request_id.startswith("resp_"):
        return "chatcmpl-" + response_or_request_id.removeprefix("resp_")
    return response_or_request_id
