"""OpenAI's stored chat completions: `store: true` on `POST /v1/chat/completions` keeps the answer, and
`GET /v1/chat/completions` (list), `GET`/`POST`/`DELETE /v1/chat/completions/{id}` and
`GET /v1/chat/completions/{id}/messages` read, relabel and remove what was kept (storage/chat_completions.py)."""
