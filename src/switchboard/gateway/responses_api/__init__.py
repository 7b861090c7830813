"""OpenAI's Responses API (`POST /v1/responses`), answered through the chat path.

A Responses request is translated to the equivalent chat completion (`request.py`), which is routed, admitted,
served and logged like any other; its answer is translated back, whole (`result.py`) or as the Responses stream's
typed events (`events.py`). Stateless: nothing is stored, so `previous_response_id` and `conversation` are a 400
asking for the conversation in `input` (docs/api.md).
"""
