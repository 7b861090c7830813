"""The Responses API's request and answer as pydantic models: the request validates (unknown fields are a 400
naming them) and both generate the OpenAPI document."""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from switchboard.gateway.schemas import Metadata, RoutingParams


class ResponsesRequest(BaseModel):
    """The fields of OpenAI's `POST /v1/responses` that a stateless gateway can honour (plus `routing`)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, description="An expert id, or 'auto' to let the router choose.")
    input: Union[str, list[dict[str, Any]]] = Field(description="A user message, or a list of input items.")
    instructions: str | None = Field(None, description="A system message placed before the input.")
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    top_logprobs: int | None = Field(None, ge=0, le=20)
    include: list[str] | None = None
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Union[str, dict[str, Any], None] = None
    parallel_tool_calls: bool | None = None
    max_tool_calls: int | None = Field(None, ge=1)
    text: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    metadata: Metadata | None = None
    store: bool | None = None
    background: bool | None = None
    truncation: Literal["auto", "disabled"] | None = None
    previous_response_id: str | None = None
    conversation: Union[str, dict[str, Any], None] = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_options: dict[str, Any] | None = None
    prompt_cache_retention: str | None = None
    # Refused when set (request.py says why): OpenAI-side features with no equivalent here.
    prompt: dict[str, Any] | None = None
    context_management: Any = None
    moderation: Any = None
    image: Any = None
    access_programs: Any = None
    service_tier: str | None = None
    routing: RoutingParams | None = None


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: dict[str, int]
    output_tokens: int
    output_tokens_details: dict[str, int]
    total_tokens: int


class ResponseObject(BaseModel):
    """A Response (`object: "response"`): its output items are `message`s (with `output_text` parts) and
    `function_call`s; it echoes the request's settings. Streams carry it in their lifecycle events."""

    id: str
    object: Literal["response"]
    created_at: int
    status: Literal["completed", "incomplete", "in_progress", "failed"]
    model: str
    output: list[dict[str, Any]]
    usage: ResponseUsage | None = None
    error: dict[str, Any] | None = None
    incomplete_details: dict[str, Any] | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    conversation: dict[str, str] | None = None
    parallel_tool_calls: bool
    store: bool
    temperature: float | None = None
    text: dict[str, Any]
    tool_choice: Union[str, dict[str, Any]]
    tools: list[dict[str, Any]]
    top_p: float | None = None


class ResponseDeleted(BaseModel):
    id: str
    object: Literal["response.deleted"]
    deleted: bool


class InputItemList(BaseModel):
    object: Literal["list"]
    data: list[dict[str, Any]]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool


class InputTokenCount(BaseModel):
    object: Literal["response.input_tokens"]
    input_tokens: int
