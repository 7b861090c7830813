"""The tables of the request log. Alembic migrations (storage/migrations) create them; these definitions are
what the writer and the queries use, and must match the latest migration."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Boolean, DateTime, Float, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class RequestRecord(Base):
    """One accepted request: it reached an expert (answered, failed, rejected by admission or cancelled).

    `prompt_text` is the only column holding user content (the last user message, or the completion prompt);
    it is kept apart so it can be left empty (`storage.store_prompts: false`), purged or access-controlled on
    its own without touching the accounting columns.
    """

    __tablename__ = "requests"
    __table_args__ = (Index("ix_requests_key_id_created_at", "key_id", "created_at"),)  # per-key spend at start

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), index=True)
    key_id: Mapped[str | None] = mapped_column(String(64), default=None)  # the API key's id (tenants), never its secret
    kind: Mapped[str] = mapped_column(String(16))
    expert: Mapped[str] = mapped_column(String(128), index=True)
    replica: Mapped[str | None] = mapped_column(String(160))
    hardware: Mapped[str | None] = mapped_column(String(32))
    tokens_in: Mapped[int | None] = mapped_column(Integer)
    tokens_out: Mapped[int | None] = mapped_column(Integer)
    usd_cost: Mapped[float] = mapped_column(Float)
    ttft_s: Mapped[float | None] = mapped_column(Float)
    latency_s: Mapped[float] = mapped_column(Float)
    cold_start: Mapped[bool] = mapped_column(Boolean)
    routing_reason: Mapped[str | None] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(String(16))
    status: Mapped[int] = mapped_column(Integer)
    prompt_text: Mapped[str | None] = mapped_column(Text)


class FeedbackRecord(Base):
    """A user's score (0..1) of one answer. No foreign key on purpose: feedback may be written in the same
    batch as its request, and a request dropped during a long outage must not make its feedback unwritable."""

    __tablename__ = "feedback"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(64), index=True)
    score: Mapped[float] = mapped_column(Float)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class ResponseRecord(Base):
    """A stored Response (`POST /v1/responses` with `store`): the Response object and every input item of its
    conversation (earlier turns' inputs and outputs included), so a follow-up's `previous_response_id` needs one
    row. User content, like `requests.prompt_text`: kept only while `storage.store_prompts` is on, and for
    `storage.response_retention_days`."""

    __tablename__ = "responses"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str | None] = mapped_column(String(64), default=None)  # the API key that made it: only that key reads it
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), index=True)
    body: Mapped[str] = mapped_column(Text)  # the Response object, JSON
    input_items: Mapped[str] = mapped_column(Text)  # JSON list


class ChatCompletionRecord(Base):
    """A stored chat completion (`POST /v1/chat/completions` with `store: true`): the completion object as answered
    and the request's messages, for `GET /v1/chat/completions` and the rest of OpenAI's stored-completions API.
    User content, like `responses`: kept only while `storage.store_prompts` is on, and for
    `storage.response_retention_days`."""

    __tablename__ = "chat_completions"
    __table_args__ = (Index("ix_chat_completions_key_id_created_at", "key_id", "created_at"),)  # a key's list, in order

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str | None] = mapped_column(String(64), default=None)  # the API key that made it: only that key reads it
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), index=True)
    model: Mapped[str] = mapped_column(String(128))  # the expert that answered (the list's `model` filter)
    body: Mapped[str] = mapped_column(Text)  # the chat completion object, JSON, its `metadata` included
    messages: Mapped[str] = mapped_column(Text)  # the request's messages, JSON list, each with its id


class ChatCompletionMetadataRecord(Base):
    """One metadata pair of a stored chat completion, so that the list's `metadata[k]=v` filters are queries on
    any database (no JSON operators, which SQLite and PostgreSQL spell differently)."""

    __tablename__ = "chat_completion_metadata"
    __table_args__ = (Index("ix_chat_completion_metadata_name_value", "name", "value"),)

    completion_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(512))


class ConversationRecord(Base):
    """A conversation (OpenAI's Conversations API, `/v1/conversations`): a durable list of Responses items that
    responses given `conversation` read as their history and append to. Not expired (OpenAI's are not either);
    scoped to the API key that made it. User content: kept only while `storage.store_prompts` is on."""

    __tablename__ = "conversations"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    metadata_json: Mapped[str] = mapped_column("metadata", Text)  # JSON object


class ConversationItemRecord(Base):
    """One item of a conversation; `seq` orders them (an autoincrement: concurrent appends never collide)."""

    __tablename__ = "conversation_items"
    __table_args__ = (Index("ix_conversation_items_conversation_id_id", "conversation_id", "id", unique=True),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    conversation_id: Mapped[str] = mapped_column(String(64))
    id: Mapped[str] = mapped_column(String(64))
    item: Mapped[str] = mapped_column(Text)  # JSON object, its `id` included


class FileRecord(Base):
    """An uploaded file (OpenAI's Files API, `/v1/files`): a batch's input, or a batch's output or errors, which
    the gateway writes. Scoped to the API key that made it (the key of the batch, for outputs). User content."""

    __tablename__ = "files"
    __table_args__ = (Index("ix_files_key_id_created_at", "key_id", "created_at"),)  # a key's list, in order

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), default=None)  # never served after
    purpose: Mapped[str] = mapped_column(String(32))
    filename: Mapped[str] = mapped_column(String(512))
    num_bytes: Mapped[int] = mapped_column("bytes", Integer)
    content: Mapped[bytes] = mapped_column(LargeBinary)


class BatchRecord(Base):
    """A batch (OpenAI's Batch API, `/v1/batches`): its object as the client reads it (JSON, status and times
    included) and the claim of the gateway running it — a lease that the runner renews while it works, so that a
    batch whose gateway died is taken up by another (or by the same one after a restart)."""

    __tablename__ = "batches"
    __table_args__ = (Index("ix_batches_key_id_created_at", "key_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16), index=True)  # the object's, kept apart to find the unfinished
    body: Mapped[str] = mapped_column(Text)  # the batch object, JSON (its request_counts as of the last status change)
    claimed_by: Mapped[str | None] = mapped_column(String(64), default=None)
    claimed_until: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class BatchResultRecord(Base):
    """One finished request of a batch: its output line (JSON), written as it finishes, so a batch taken up again
    after a restart runs only what is left. `is_error` sends it to the error file."""

    __tablename__ = "batch_results"

    batch_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    line: Mapped[int] = mapped_column(Integer, primary_key=True)  # the request's index in the input file
    is_error: Mapped[bool] = mapped_column(Boolean)
    output: Mapped[str] = mapped_column(Text)


requests_table = RequestRecord.__table__
feedback_table = FeedbackRecord.__table__
responses_table = ResponseRecord.__table__
chat_completions_table = ChatCompletionRecord.__table__
chat_completion_metadata_table = ChatCompletionMetadataRecord.__table__
conversations_table = ConversationRecord.__table__
conversation_items_table = ConversationItemRecord.__table__
files_table = FileRecord.__table__
batches_table = BatchRecord.__table__
batch_results_table = BatchResultRecord.__table__
