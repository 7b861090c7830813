"""OpenAI's Responses API (`/v1/responses`), answered through the chat path.

A Responses request is translated to the equivalent chat completion (`request.py`), which is routed, admitted,
served and logged like any other; its answer is translated back, whole (`result.py`) or as the Responses stream's
typed events (`events.py`). Responses are stored unless asked not to (storage/responses.py), so that
`previous_response_id` continues a conversation and `GET`/`DELETE /v1/responses/{id}` work (`handler.py`;
docs/api.md).
"""
