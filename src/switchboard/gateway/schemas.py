"""Request and response schemas of the OpenAI-compatible API, as pydantic models.

They validate what the gateway needs (model, messages shape, limits) and generate the OpenAPI document. Request
bodies and messages accept fields the gateway does not know: `openai` experts get the body exactly as the
client sent it (but `model`), and local engines answer a clear 400 naming any field they cannot honour
(gateway/capabilities.py). These models only check; they never rewrite.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, StringConstraints


class _Forbid(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class TextPart(_Forbid):
    type: Literal["text"]
    text: str


class OtherPart(_Open):
    """Non-text parts (images, audio, files): passed to upstreams that accept them."""

    type: Literal["image_url", "input_audio", "file", "refusal"]


ContentPart = Union[TextPart, OtherPart]
TokenId = Annotated[str, StringConstraints(pattern=r"^\d{1,10}$")]
Bias = Annotated[float, Field(ge=-100, le=100)]
Metadata = Annotated[dict[Annotated[str, StringConstraints(max_length=64)], Annotated[str, StringConstraints(max_length=512)]],
                     Field(max_length=16, description="Up to 16 string pairs (keys of at most 64 characters, values of at most 512): "
                                                      "OpenAI's limits; a stored object's labels.")]


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Union[str, list[ContentPart], None] = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    function_call: dict[str, Any] | None = None
    refusal: str | None = None


class RoutingParams(_Forbid):
    """Per-request routing controls for `"model": "auto"` (sent by the openai client through `extra_body`)."""

    cost_weight: float | None = Field(None, ge=0, description="λ: quality traded per USD per million tokens of this request (docs/router.md).")
    objective: Literal["quality", "balanced", "cost"] | None = Field(
        None, description="A named λ preset, used when cost_weight is absent; `auto` without either routes `balanced`.")
    max_usd_per_mtok: float | None = Field(None, ge=0, description="Never choose an expert pricier than this.")
    min_quality: float | None = Field(None, ge=0, le=1, description="Never choose an expert predicted below this.")
    experts: list[str] | None = Field(None, min_length=1, description="Choose only among these experts.")


class StreamOptions(_Open):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


Stop = Union[str, list[str], None]


class _SamplingFields(_Open):
    model: str = Field(min_length=1, description="An expert id, or 'auto' to let the router choose.")
    max_tokens: int | None = Field(None, ge=1, description="Largest number of tokens to generate.")
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int | None = Field(None, ge=1, le=128, description="Choices to generate.")
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: Stop = Field(None, description="Up to 4 stop sequences.")
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[TokenId, Bias] | None = Field(
        None, description="Token id (as a string) → bias added to its logit, -100 to 100 (OpenAI's range).")
    seed: int | None = None
    user: str | None = None
    top_k: int | None = Field(None, ge=-1, description="Vendor extension (vLLM, llama.cpp).")
    min_p: float | None = Field(None, ge=0, le=1, description="Vendor extension (vLLM, llama.cpp).")
    repetition_penalty: float | None = Field(None, gt=0, description="Vendor extension (vLLM, llama.cpp).")
    routing: RoutingParams | None = None


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Union[str, dict[str, Any], None] = None
    parallel_tool_calls: bool | None = None
    metadata: Metadata | None = None
    store: bool | None = Field(None, description="Keep the answer for GET /v1/chat/completions/{id} and the list (OpenAI's stored "
                               "completions; off by default).")
    reasoning_effort: str | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = Field(
        None, max_length=1024, description="Requests with the same key go to the same replica, whose KV cache holds "
        "their shared prefix (OpenAI's cache-routing hint; docs/ray.md, stable prefix keys).")
    safety_identifier: str | None = Field(None, max_length=1024, description="A stable id of the end user (OpenAI's); recorded by no engine here.")


class CompletionRequest(_SamplingFields):
    prompt: Union[StrictStr, list[StrictStr], list[StrictInt], list[list[StrictInt]]] = Field(
        description="A prompt string, or a list of them: prompt i's n choices are at indices i·n … i·n + n − 1 (at "
        "most 128 choices in all). Token ids (a list, or a list of lists) only for an expert that relays to its server.")
    max_tokens: int | None = Field(None, ge=0, description="Largest number of tokens to generate; 0 only with `echo`: the prompt "
                                   "scored (with `logprobs`), nothing generated.")
    echo: bool | None = None
    suffix: str | None = None
    logprobs: int | None = Field(None, ge=0, le=5)
    best_of: int | None = Field(None, ge=1, le=20)


MAX_EMBEDDING_INPUTS = 2048
"""OpenAI's limit on inputs per embeddings request."""


class EmbeddingsRequest(_Open):
    """`POST /v1/embeddings`. Fields beyond these are forwarded to `openai`-kind upstreams; a local model
    answers 400 naming a field it does not understand."""

    model: str = Field(min_length=1, description="An embedding expert's id (see GET /v1/models).")
    input: Union[StrictStr, list[StrictStr], list[StrictInt], list[list[StrictInt]]] = Field(
        description=f"A text, a list of texts, a list of token ids, or a list of token-id lists (at most {MAX_EMBEDDING_INPUTS} inputs).",
    )
    encoding_format: Literal["float", "base64"] | None = Field(None, description="base64: each vector's float32 little-endian bytes.")
    dimensions: int | None = Field(None, ge=1, description="Vector length, for models that can shorten theirs.")
    user: str | None = None


class FeedbackRequest(_Forbid):
    """A user's score of one answer, for retraining the router from the request log."""

    request_id: str = Field(min_length=1, max_length=64, description="The answer's `x-request-id` header: also its `id`, but for an answer "
                            "relayed as it came from an `openai` or `process` expert, whose `id` is the upstream's (unless it was stored: "
                            "`store: true` gives it the gateway's), and a Response's id.")
    score: float = Field(ge=0, le=1, description="0 (useless) to 1 (perfect).")


# ---- responses (for the OpenAPI document; the gateway writes them with orjson directly) ----


class PromptTokensDetails(BaseModel):
    cached_tokens: int = Field(description="Prompt tokens the engine reused from its KV cache (prefix caching).")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str | None
    refusal: str | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = Field(None, description="The token's UTF-8 bytes (exact where `token` shows U+FFFD for part of a character).")


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(description="The most likely tokens at this position, most likely first.")


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None
    refusal: list[TokenLogprob] | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: Literal["stop", "length", "tool_calls", "content_filter", "function_call"]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class StoredChatCompletion(ChatCompletion):
    """A chat completion kept by `store: true`, as answered (a stream as it added up), with its metadata."""

    metadata: dict[str, str] = Field(default_factory=dict)


class ChatCompletionList(BaseModel):
    object: Literal["list"]
    data: list[StoredChatCompletion]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool


class ChatCompletionUpdate(_Forbid):
    """`POST /v1/chat/completions/{id}`: the new metadata (replacing the old; null or {} clears it)."""

    metadata: Metadata | None


class ChatCompletionDeleted(BaseModel):
    object: Literal["chat.completion.deleted"]
    id: str
    deleted: bool


class StoredMessage(_Open):
    """A stored completion's request message, with an id; content sent as parts is in `content_parts`, its text
    joined in `content`."""

    id: str
    role: str
    content: str | None = None
    content_parts: list[dict[str, Any]] | None = None


class StoredMessageList(BaseModel):
    object: Literal["list"]
    data: list[StoredMessage]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool


MAX_CONVERSATION_ITEMS_PER_CALL = 20
"""OpenAI's limit on the items one call adds to a conversation."""


class ConversationCreate(_Forbid):
    """`POST /v1/conversations`: the first items (Responses input items, at most 20) and labels."""

    items: list[dict[str, Any]] | None = Field(None, max_length=MAX_CONVERSATION_ITEMS_PER_CALL)
    metadata: Metadata | None = None


class ExpiresAfter(_Forbid):
    """When a file expires: `seconds` after its creation (1 hour to 30 days; OpenAI's bounds)."""

    anchor: Literal["created_at"]
    seconds: int = Field(ge=3600, le=30 * 86400)


class BatchCreate(_Forbid):
    """`POST /v1/batches`: a `batch` file of requests to `endpoint`, run within `completion_window`."""

    input_file_id: str = Field(min_length=1, max_length=64)
    endpoint: Literal["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"]
    completion_window: Literal["24h"]
    metadata: Metadata | None = None
    output_expires_after: ExpiresAfter | None = None


class ConversationUpdate(_Forbid):
    """`POST /v1/conversations/{id}`: the new metadata (replacing the old)."""

    metadata: Metadata | None


class ConversationItemsCreate(_Forbid):
    """`POST /v1/conversations/{id}/items`: items to append (Responses input items, 1 to 20)."""

    items: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_CONVERSATION_ITEMS_PER_CALL)
    include: list[str] | None = None


class ConversationObject(BaseModel):
    id: str
    object: Literal["conversation"]
    created_at: int
    metadata: dict[str, str]


class ConversationDeleted(BaseModel):
    id: str
    object: Literal["conversation.deleted"]
    deleted: bool


class ConversationItemList(BaseModel):
    object: Literal["list"]
    data: list[dict[str, Any]]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool


class FileObject(BaseModel):
    id: str
    object: Literal["file"]
    bytes: int
    created_at: int
    expires_at: int | None = None
    filename: str
    purpose: str
    status: Literal["processed"]
    status_details: str | None = None


class FileList(BaseModel):
    object: Literal["list"]
    data: list[FileObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"]
    deleted: bool


class FileUpload(BaseModel):
    """`POST /v1/files`, multipart/form-data."""

    file: bytes = Field(json_schema_extra={"format": "binary"}, description="The file (a batch's input: JSON Lines, named *.jsonl)")
    purpose: Literal["assistants", "batch", "fine-tune", "vision", "user_data", "evals"]


class BatchRequestCounts(BaseModel):
    total: int
    completed: int
    failed: int


class BatchObject(BaseModel):
    id: str
    object: Literal["batch"]
    endpoint: str
    errors: dict[str, Any] | None = None
    input_file_id: str
    completion_window: str
    status: Literal["validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"]
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: BatchRequestCounts
    metadata: dict[str, str] | None = None
    usage: dict[str, Any] | None = None


class BatchList(BaseModel):
    object: Literal["list"]
    data: list[BatchObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None] = Field(description="Per token, the most likely tokens' logprobs (and the sampled one's).")
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length", "content_filter"]


class TextCompletion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    system_fingerprint: str | None = None


class Embedding(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: Union[list[float], str] = Field(description="The vector, or its base64 float32 bytes.")


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Feedback(BaseModel):
    id: str
    object: Literal["feedback"]
    request_id: str
    score: float


class Health(BaseModel):
    status: Literal["ok"]
