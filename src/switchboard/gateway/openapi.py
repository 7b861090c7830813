"""The gateway's OpenAPI 3.1 document, generated from the same pydantic models that validate requests."""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

from switchboard import __version__
from switchboard.gateway import schemas as s
from switchboard.gateway.responses_api import schemas as rs

_ERROR_STATUSES = {
    "400": "Invalid request (malformed JSON, bad or unknown field, context too long, max_tokens out of range)",
    "401": "Missing, unknown or revoked API key (when auth is enabled)",
    "402": "The key's daily or monthly USD budget is spent",
    "403": "The key's quality floor or cost ceiling cannot be met and its policy rejects, or the admin key was used",
    "404": "Unknown model",
    "413": "Request body too large",
    "429": "The key's requests or tokens per minute, or the expert's admission; see Retry-After",
    "502": "The expert answered with something unusable",
    "503": "The expert is unavailable",
    "504": "The expert timed out",
}


# Before OpenAPI 3.2 (`itemSchema`), the schema of a text/event-stream response describes each event.
SSE_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {"type": "string", "description": "A JSON chunk (chat.completion.chunk or text_completion), a Responses event, an error object, or [DONE]"},
        "event": {"type": "string"},
    },
}


def build_openapi() -> dict[str, Any]:
    models = [
        s.ChatCompletionRequest, s.CompletionRequest, s.ChatCompletion, s.TextCompletion,
        s.ModelList, s.ModelCard, s.ErrorResponse, s.Health, s.FeedbackRequest, s.Feedback, s.EmbeddingsRequest, s.EmbeddingList,
        s.ConversationCreate, s.ConversationUpdate, s.ConversationItemsCreate, s.ConversationObject, s.ConversationDeleted, s.ConversationItemList,
        s.FileObject, s.FileList, s.FileDeleted, s.FileUpload, s.BatchCreate, s.BatchObject, s.BatchList,
        s.StoredChatCompletion, s.ChatCompletionList, s.ChatCompletionUpdate, s.ChatCompletionDeleted, s.StoredMessageList,
        rs.ResponsesRequest, rs.ResponseObject, rs.ResponseDeleted, rs.InputItemList, rs.InputTokenCount,
    ]
    _, top = models_json_schema([(m, "validation") for m in models], ref_template="#/components/schemas/{model}")
    components = top.get("$defs", {})

    def ref(model: type) -> dict[str, str]:
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    def errors() -> dict[str, Any]:
        return {code: {"description": text, "content": {"application/json": {"schema": ref(s.ErrorResponse)}}} for code, text in _ERROR_STATUSES.items()}

    def not_found(text: str) -> dict[str, Any]:
        return {"404": {"description": text, "content": {"application/json": {"schema": ref(s.ErrorResponse)}}},
                "503": {"description": "The store is unavailable", "content": {"application/json": {"schema": ref(s.ErrorResponse)}}}}

    response_id = {"name": "response_id", "in": "path", "required": True, "schema": {"type": "string"}}
    completion_id = {"name": "completion_id", "in": "path", "required": True, "schema": {"type": "string"}}

    def page(order: str) -> list[dict[str, Any]]:
        return [{"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
                {"name": "order", "in": "query", "required": False, "schema": {"type": "string", "enum": ["asc", "desc"]},
                 "description": f"by creation; default {order}"},
                {"name": "after", "in": "query", "required": False, "schema": {"type": "string"}, "description": "the last id of the previous page"}]

    def json_answer(text: str, model: type) -> dict[str, Any]:
        return {"200": {"description": text, "content": {"application/json": {"schema": ref(model)}}}}

    no_completion = "No stored chat completion of this key has this id"
    conversation_id = {"name": "conversation_id", "in": "path", "required": True, "schema": {"type": "string"}}
    item_id = {"name": "item_id", "in": "path", "required": True, "schema": {"type": "string"}}
    no_conversation = "No conversation of this key has this id (or no such item)"
    file_id = {"name": "file_id", "in": "path", "required": True, "schema": {"type": "string"}}
    batch_id = {"name": "batch_id", "in": "path", "required": True, "schema": {"type": "string"}}
    no_file, no_batch = "No file of this key has this id", "No batch of this key has this id"

    def body(model: type) -> dict[str, Any]:
        return {"required": True, "content": {"application/json": {"schema": ref(model)}}}

    bad = {"400": errors()["400"], "413": errors()["413"]}

    def generation(request_model: type, response_model: type, summary: str,
                   stream: str = "a server-sent event stream of chunks ending in `data: [DONE]`") -> dict[str, Any]:
        return {
            "post": {
                "summary": summary,
                "requestBody": {"required": True, "content": {"application/json": {"schema": ref(request_model)}}},
                "responses": {
                    "200": {
                        "description": f"The answer (JSON), or with `stream: true` {stream}",
                        "content": {"application/json": {"schema": ref(response_model)}, "text/event-stream": {"schema": SSE_EVENT}},
                    },
                    **errors(),
                },
            }
        }

    return {
        "openapi": "3.1.0",
        "info": {"title": "Switchboard", "version": __version__, "description": "OpenAI-compatible API in front of a pool of expert models."},
        "paths": {
            "/v1/chat/completions": {
                **generation(s.ChatCompletionRequest, s.ChatCompletion, "Chat completion (model: an expert id, or 'auto'); kept with `store: true`"),
                "get": {"summary": "This API key's stored chat completions, a cursor page, filtered by `model` (the expert that answered) and "
                                   "`metadata[key]=value` pairs (all must match)",
                        "parameters": [*page("asc"), {"name": "model", "in": "query", "required": False, "schema": {"type": "string"}}],
                        "responses": {**json_answer("A page of stored chat completions", s.ChatCompletionList), "400": errors()["400"],
                                      "503": not_found("")["503"]}},
            },
            "/v1/chat/completions/{completion_id}": {
                "get": {"summary": "A stored chat completion (`store: true`; this API key's), as answered, with its metadata",
                        "parameters": [completion_id], "responses": {**json_answer("The completion", s.StoredChatCompletion), **not_found(no_completion)}},
                "post": {"summary": "Replace a stored chat completion's metadata (the only update)", "parameters": [completion_id],
                         "requestBody": {"required": True, "content": {"application/json": {"schema": ref(s.ChatCompletionUpdate)}}},
                         "responses": {**json_answer("The completion, updated", s.StoredChatCompletion), **not_found(no_completion),
                                       "400": errors()["400"], "413": errors()["413"]}},
                "delete": {"summary": "Delete a stored chat completion", "parameters": [completion_id],
                           "responses": {**json_answer("Deleted", s.ChatCompletionDeleted), **not_found(no_completion)}},
            },
            "/v1/chat/completions/{completion_id}/messages": {"get": {
                "summary": "A stored chat completion's request messages, a cursor page (oldest first by default)",
                "parameters": [completion_id, *page("asc")],
                "responses": {**json_answer("A page of messages", s.StoredMessageList), **not_found(no_completion), "400": errors()["400"]}}},
            "/v1/completions": generation(s.CompletionRequest, s.TextCompletion, "Text completion (model: an expert id, or 'auto')"),
            "/v1/responses": generation(rs.ResponsesRequest, rs.ResponseObject,
                                       "OpenAI's Responses API, served as a chat completion (model: an expert id, or 'auto'); stored unless `store: false`",
                                       "a server-sent event stream of typed events (`event: response.created` … `response.completed`)"),
            "/v1/responses/input_tokens": {"post": {
                "summary": "The input tokens the named expert would be sent for a Responses request (`input` optional); header "
                           "x-switchboard-token-count: exact (llama.cpp experts) or estimate",
                "requestBody": {"required": True, "content": {"application/json": {"schema": ref(rs.ResponsesRequest)}}},
                "responses": {"200": {"description": "The count", "content": {"application/json": {"schema": ref(rs.InputTokenCount)}}},
                              **{code: answer for code, answer in errors().items() if code in ("400", "404", "413", "503")}}}},
            "/v1/responses/{response_id}": {
                "get": {"summary": "A stored Response (this API key's), as it was answered", "parameters": [response_id],
                        "responses": {"200": {"description": "The Response", "content": {"application/json": {"schema": ref(rs.ResponseObject)}}},
                                      **not_found("No stored response of this key has this id")}},
                "delete": {"summary": "Delete a stored Response", "parameters": [response_id],
                           "responses": {"200": {"description": "Deleted", "content": {"application/json": {"schema": ref(rs.ResponseDeleted)}}},
                                         **not_found("No stored response of this key has this id")}},
            },
            "/v1/responses/{response_id}/input_items": {"get": {
                "summary": "A stored Response's conversation: its input items, a cursor page (newest first by default)",
                "parameters": [response_id,
                               {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
                               {"name": "order", "in": "query", "required": False, "schema": {"type": "string", "enum": ["asc", "desc"]}},
                               {"name": "after", "in": "query", "required": False, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "A page of input items", "content": {"application/json": {"schema": ref(rs.InputItemList)}}},
                              **not_found("No stored response of this key has this id"),
                              "400": errors()["400"]}}},
            "/v1/conversations": {"post": {
                "summary": "Make a conversation (OpenAI's Conversations API): its first items (at most 20) and metadata",
                "requestBody": body(s.ConversationCreate), "responses": {**json_answer("The conversation", s.ConversationObject), **bad,
                                                                         "503": not_found("")["503"]}}},
            "/v1/conversations/{conversation_id}": {
                "get": {"summary": "A conversation of this API key's", "parameters": [conversation_id],
                        "responses": {**json_answer("The conversation", s.ConversationObject), **not_found(no_conversation), "400": errors()["400"]}},
                "post": {"summary": "Replace a conversation's metadata", "parameters": [conversation_id], "requestBody": body(s.ConversationUpdate),
                         "responses": {**json_answer("The conversation", s.ConversationObject), **not_found(no_conversation), **bad}},
                "delete": {"summary": "Delete a conversation and its items", "parameters": [conversation_id],
                           "responses": {**json_answer("Deleted", s.ConversationDeleted), **not_found(no_conversation), "400": errors()["400"]}},
            },
            "/v1/conversations/{conversation_id}/items": {
                "get": {"summary": "A conversation's items, a cursor page (newest first by default)", "parameters": [conversation_id, *page("desc")],
                        "responses": {**json_answer("A page of items", s.ConversationItemList), **not_found(no_conversation), "400": errors()["400"]}},
                "post": {"summary": "Append items (1 to 20, each one a Responses input could hold)", "parameters": [conversation_id],
                         "requestBody": body(s.ConversationItemsCreate),
                         "responses": {**json_answer("The items added", s.ConversationItemList), **not_found(no_conversation), **bad}},
            },
            "/v1/conversations/{conversation_id}/items/{item_id}": {
                "get": {"summary": "One item of a conversation", "parameters": [conversation_id, item_id],
                        "responses": {"200": {"description": "The item", "content": {"application/json": {"schema": {"type": "object"}}}},
                                      **not_found(no_conversation), "400": errors()["400"]}},
                "delete": {"summary": "Delete one item; answers the conversation", "parameters": [conversation_id, item_id],
                           "responses": {**json_answer("The conversation", s.ConversationObject), **not_found(no_conversation), "400": errors()["400"]}},
            },
            "/v1/files": {
                "post": {"summary": "Upload a file (OpenAI's Files API; a batch's input: `purpose` batch, JSON Lines)",
                         "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": ref(s.FileUpload)}}},
                         "responses": {**json_answer("The file", s.FileObject), **bad, "503": not_found("")["503"]}},
                "get": {"summary": "This API key's files, a cursor page (newest first by default, up to 10,000), of one `purpose` if given",
                        "parameters": [*page("desc")[1:], {"name": "limit", "in": "query", "required": False,
                                                            "schema": {"type": "integer", "minimum": 1, "maximum": 10000}},
                                       {"name": "purpose", "in": "query", "required": False, "schema": {"type": "string"}}],
                        "responses": {**json_answer("A page of files", s.FileList), "400": errors()["400"], "503": not_found("")["503"]}},
            },
            "/v1/files/{file_id}": {
                "get": {"summary": "A file of this API key's", "parameters": [file_id],
                        "responses": {**json_answer("The file", s.FileObject), **not_found(no_file), "400": errors()["400"]}},
                "delete": {"summary": "Delete a file", "parameters": [file_id],
                           "responses": {**json_answer("Deleted", s.FileDeleted), **not_found(no_file), "400": errors()["400"]}},
            },
            "/v1/files/{file_id}/content": {"get": {
                "summary": "A file's bytes", "parameters": [file_id],
                "responses": {"200": {"description": "The content", "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                              **not_found(no_file), "400": errors()["400"]}}},
            "/v1/batches": {
                "post": {"summary": "Run a `batch` file's requests in the background (OpenAI's Batch API), through the same handlers, limits "
                                    "and routing as live ones",
                         "requestBody": body(s.BatchCreate), "responses": {**json_answer("The batch, validating", s.BatchObject), **bad,
                                                                           "503": not_found("")["503"]}},
                "get": {"summary": "This API key's batches, a cursor page, newest first",
                        "parameters": [page("desc")[0], page("desc")[2]],
                        "responses": {**json_answer("A page of batches", s.BatchList), "400": errors()["400"], "503": not_found("")["503"]}},
            },
            "/v1/batches/{batch_id}": {"get": {
                "summary": "A batch of this API key's, its request counts as of now", "parameters": [batch_id],
                "responses": {**json_answer("The batch", s.BatchObject), **not_found(no_batch), "400": errors()["400"]}}},
            "/v1/batches/{batch_id}/cancel": {"post": {
                "summary": "Cancel a batch: `cancelling`, then `cancelled` once its requests in flight end (what finished is kept)",
                "parameters": [batch_id],
                "responses": {**json_answer("The batch, cancelling", s.BatchObject), **not_found(no_batch), "400": errors()["400"],
                              "409": {"description": "The batch has ended", "content": {"application/json": {"schema": ref(s.ErrorResponse)}}}}}},
            "/v1/embeddings": {
                "post": {
                    "summary": "Embeddings (model: an embedding expert's id)",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": ref(s.EmbeddingsRequest)}}},
                    "responses": {"200": {"description": "One vector per input, in input order", "content": {"application/json": {"schema": ref(s.EmbeddingList)}}},
                                  **errors()},
                }
            },
            "/v1/models": {"get": {"summary": "The experts, and 'auto'", "responses": {"200": {"description": "Models", "content": {"application/json": {"schema": ref(s.ModelList)}}}}}},
            "/v1/models/{model}": {"get": {
                "summary": "One model: an expert, or 'auto'",
                "parameters": [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "The model", "content": {"application/json": {"schema": ref(s.ModelCard)}}},
                              "404": {"description": "No such model", "content": {"application/json": {"schema": ref(s.ErrorResponse)}}}}}},
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "Alive", "content": {"application/json": {"schema": ref(s.Health)}}}}}},
            "/v1/feedback": {
                "post": {
                    "summary": "Score an answer (0..1) by its request id; stored in the request log for `router train --from-log`",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": ref(s.FeedbackRequest)}}},
                    "responses": {
                        "201": {"description": "Stored", "content": {"application/json": {"schema": ref(s.Feedback)}}},
                        **{code: answer for code, answer in errors().items() if code in ("400", "413", "503")},
                        "404": {"description": "No logged request has this id", "content": {"application/json": {"schema": ref(s.ErrorResponse)}}},
                    },
                }
            },
            "/admin/fleet": {"get": {"summary": "Experts, replicas and their states", "responses": {"200": {"description": "Fleet snapshot", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
        },
        "components": {"schemas": components, "securitySchemes": {"apiKey": {
            "type": "http", "scheme": "bearer", "description": "An API key (`switchboard keys create`); required when auth is enabled, ignored otherwise"}}},
        "security": [{"apiKey": []}, {}],
    }
