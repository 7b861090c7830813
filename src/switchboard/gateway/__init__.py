"""The OpenAI-compatible HTTP gateway: validation, expert choice, replica dispatch, SSE streaming."""
