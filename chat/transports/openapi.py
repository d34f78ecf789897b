"""OpenAPI additions: the API-key and browser-session security schemes, and the parts DRF can't
see because they are plain Django views — the SSE endpoint with its events, the WebSocket
protocol, `/health` and `/metrics`, and the compatibility paths of the earlier services (docs/api.md §8).
"""

from drf_spectacular.extensions import OpenApiAuthenticationExtension

EVENT_SCHEMAS = {
    "SessionEvent": {
        "type": "object",
        "required": ["type", "session_id", "conversation_id", "chat_id"],
        "properties": {
            "type": {"type": "string", "enum": ["session"]},
            "session_id": {"type": "string"},
            "conversation_id": {"type": "string", "description": "Coze's conversation id"},
            "chat_id": {"type": "string", "description": "Coze's chat id (use it to cancel)"},
        },
    },
    "ReasoningEvent": {
        "type": "object",
        "required": ["type", "content"],
        "properties": {"type": {"type": "string", "enum": ["reasoning"]}, "content": {"type": "string"}},
    },
    "DeltaEvent": {
        "type": "object",
        "required": ["type", "content"],
        "properties": {
            "type": {"type": "string", "enum": ["delta"]},
            "content": {"type": "string", "description": "The next piece of the answer, never re-chunked"},
        },
    },
    "FollowUpEvent": {
        "type": "object",
        "required": ["type", "content"],
        "properties": {"type": {"type": "string", "enum": ["follow_up"]}, "content": {"type": "string"}},
    },
    "CompletedEvent": {
        "type": "object",
        "required": ["type", "message_id", "content", "usage", "token_count", "conversation_id", "session_id"],
        "properties": {
            "type": {"type": "string", "enum": ["completed"]},
            "message_id": {"type": "string"},
            "content": {"type": "string", "description": "Equals the concatenated deltas, byte for byte"},
            "usage": {"$ref": "#/components/schemas/Usage"},
            "token_count": {"type": "integer"},
            "conversation_id": {"type": "string"},
            "session_id": {"type": "string"},
        },
    },
    "ErrorEvent": {
        "type": "object",
        "required": ["type", "code", "detail", "retryable"],
        "properties": {
            "type": {"type": "string", "enum": ["error"]},
            "code": {
                "type": "string",
                "description": "A code of the error table (docs/api.md §3), or cancelled/interrupted",
            },
            "detail": {"type": "string"},
            "retryable": {"type": "boolean"},
        },
    },
}

SSE_DESCRIPTION = """\
The reply as Server-Sent Events. Each event has `id:` (increasing), `event:` and one `data:` line
whose JSON repeats the type:

`session` (first) → `reasoning`* → `delta`* → `follow_up`* → `completed` or `error` → `done`
(`data: [DONE]`, always last).

A comment line `: ping` is sent every `CHAT_SSE_HEARTBEAT` seconds while Coze is silent. Errors found
before the first event (authentication, validation, busy session, Coze refusing the chat) are plain
JSON error responses with their status instead of a stream.
"""

RESUME_DESCRIPTION = """\
Replays the session's current or latest reply after the event named by `Last-Event-ID` (or
`?last_event_id=`; none: from the start), then follows it live until `done`: the same bytes, with
the same ids, as an uninterrupted client got. Replies sent with `"resumable": true` keep their
events for `CHAT_RESUME_WINDOW` seconds after they end; after that (or for a reply that was not
resumable) a resume gets the stored reply once it has ended: `session`, one `delta` with the rest
of the answer after the event named (the whole answer for a reply that was not resumable),
`completed` (or its `error`), `done`, numbered on from the event named.
"""

WEBSOCKET_DESCRIPTION = """

## WebSocket: `ws/chat/`

Authenticate with `Authorization: Bearer <api key or end-user token>` (non-browser clients), an
end-user token offered as a subprotocol beside `cozeproject.bearer` (browsers:
`new WebSocket(url, ["cozeproject.bearer", token])`; the server selects the marker), or the session
cookie (browsers, whose `Origin` must be allowed). An unauthenticated socket is closed with code
4401, and so is one whose token has expired or been revoked, at its next `chat` or `resume` frame.

Client frames: `{"type":"chat", …chat request body}`, `{"type":"resume","session_id","last_event_id"}`,
`{"type":"cancel"[, "chat_id"]}`, `{"type":"ping"}`.

Server frames: the same JSON objects as the SSE `data:` lines (`session`, `reasoning`, `delta`,
`follow_up`, `completed`, `error`), each with the `"id"` of its SSE event, then
`{"type":"done","id"}` after each reply, and `{"type":"pong"}`. `resume` replays a session's
reply after `last_event_id` and follows it, as `GET /api/sessions/{session_id}/stream` does.
One socket carries many turns; a bad frame gets an `error` object and the socket stays open.
Frames are limited to 1 MiB.
"""


OPERATIONS_SCHEMAS = {
    "Health": {
        "type": "object",
        "required": ["status", "database", "channel_layer", "coze"],
        "properties": {
            "status": {"type": "string", "enum": ["ok", "unavailable"]},
            "database": {"type": "string", "enum": ["ok", "unavailable"]},
            "channel_layer": {"type": "string", "enum": ["ok", "unavailable"]},
            "coze": {"type": "string", "enum": ["configured", "simulator"]},
        },
    },
}

COMPATIBILITY_SCHEMAS = {
    "LegacyChatRequest": {
        "type": "object",
        "required": ["message"],
        "description": "The earlier services' body; other fields are ignored, as they were then.",
        "properties": {
            "message": {"type": "string"},
            "session_id": {"type": "string"},
            "user_id": {"type": "string", "description": "The Coze user_id"},
        },
    },
    "LegacyChunkEvent": {
        "type": "object",
        "required": ["type", "data"],
        "properties": {
            "type": {"type": "string", "enum": ["chunk"]},
            "data": {
                "type": "object",
                "required": ["content", "chunk_index"],
                "properties": {"content": {"type": "string"}, "chunk_index": {"type": "integer"}},
            },
        },
    },
    "LegacyCompleteEvent": {
        "type": "object",
        "required": ["type", "data"],
        "properties": {
            "type": {"type": "string", "enum": ["complete"]},
            "data": {
                "type": "object",
                "required": ["total_chunks", "full_content"],
                "properties": {"total_chunks": {"type": "integer"}, "full_content": {"type": "string"}},
            },
        },
    },
    "LegacyErrorEvent": {
        "type": "object",
        "required": ["type", "data"],
        "properties": {
            "type": {"type": "string", "enum": ["error"]},
            "data": {"type": "object", "required": ["message"], "properties": {"message": {"type": "string"}}},
        },
    },
    "CozeChatRequest": {
        "type": "object",
        "required": ["additional_messages"],
        "description": "The earlier /api/coze-chat body, in Coze's own shape.",
        "properties": {
            "user_id": {"type": "string"},
            "bot_id": {"type": "string", "description": "Must be allowed"},
            "session_id": {"type": "string"},
            "conversation_id": {
                "type": "string",
                "description": "Continue the caller's session that holds this Coze conversation",
            },
            "custom_variables": {"type": "object", "additionalProperties": {"type": "string"}},
            "meta_data": {"type": "object", "additionalProperties": {"type": "string"}},
            "additional_messages": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["content"],
                    "properties": {
                        "role": {"type": "string", "enum": ["user", "assistant"]},
                        "type": {"type": "string", "enum": ["question", "answer"]},
                        "content_type": {"type": "string", "enum": ["text", "object_string"]},
                        "content": {
                            "description": 'Text, or a list of parts such as `{"type":"text","text":"…"}`, '
                            "as a list or as a JSON string of one",
                            "oneOf": [
                                {"type": "string"},
                                {"type": "array", "items": {"type": "object", "additionalProperties": True}},
                            ],
                        },
                    },
                },
            },
        },
    },
    "CozeChatDeltaEvent": {
        "type": "object",
        "required": ["type", "content"],
        "properties": {"type": {"type": "string", "enum": ["delta"]}, "content": {"type": "string"}},
    },
    "CozeChatCompletedEvent": {
        "type": "object",
        "required": ["type", "token_count", "conversation_id"],
        "properties": {
            "type": {"type": "string", "enum": ["completed"]},
            "token_count": {"type": "integer"},
            "conversation_id": {"type": "string"},
        },
    },
}

COMPATIBILITY_DESCRIPTION = "Kept so that clients of the earlier services work unchanged; new clients use `/api/…`."
CHAT_ERROR_STATUSES = ("400", "401", "403", "409", "413", "415", "429", "502", "503", "504")
SESSION_ID_PARAMETER = {"in": "path", "name": "session_id", "required": True, "schema": {"type": "string"}}


def _schema_ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_body(name: str) -> dict:
    return {"required": True, "content": {"application/json": {"schema": _schema_ref(name)}}}


def _json_response(description: str, name: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": _schema_ref(name)}}}


def _event_stream_response(description: str, event_names) -> dict:
    schema = {"oneOf": [_schema_ref(name) for name in event_names]}
    return {"description": description, "content": {"text/event-stream": {"schema": schema}}}


def _operations_paths() -> dict:
    return {
        "/health": {
            "get": {
                "operationId": "health",
                "summary": "Health: the database, the channel layer and how Coze is reached",
                "tags": ["operations"],
                "security": [],
                "responses": {
                    "200": _json_response("Every part answers", "Health"),
                    "503": _json_response("A part is unavailable; it is named", "Health"),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Metrics in the Prometheus text format",
                "description": "With `CHAT_METRICS_TOKEN` set, send it as `Authorization: Bearer <token>`.",
                "tags": ["operations"],
                "security": [{"metricsToken": []}, {}],
                "responses": {
                    "200": {
                        "description": "Prometheus exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "401": _json_response("A JSON error", "Error"),
                },
            }
        },
    }


def _compatibility_paths(*, security: list, error_response: dict) -> dict:
    chat_errors = {code: error_response for code in (*CHAT_ERROR_STATUSES, "404")}
    session_errors = {code: error_response for code in ("401", "403", "404", "409", "429")}

    def operation(operation_id: str, summary: str, responses: dict, request_body: dict | None = None, **extra):
        errors = chat_errors if request_body is not None else session_errors
        result = {
            "operationId": operation_id,
            "summary": summary,
            "description": COMPATIBILITY_DESCRIPTION,
            "tags": ["compatibility"],
            "security": security,
            "responses": {**responses, **errors},
            **extra,
        }
        if request_body is not None:
            result["requestBody"] = request_body
        return result

    return {
        "/chat": {
            "post": operation(
                "legacy_chat",
                "Earlier service: the whole reply as JSON",
                {"200": _json_response("The whole reply", "ChatResponse")},
                _json_body("LegacyChatRequest"),
            )
        },
        "/chat/stream": {
            "post": operation(
                "legacy_chat_stream",
                "Earlier service: the reply as `chunk` events, then `complete` or `error`",
                {
                    "200": _event_stream_response(
                        "An event stream of `data:` lines",
                        ["LegacyChunkEvent", "LegacyCompleteEvent", "LegacyErrorEvent"],
                    )
                },
                _json_body("LegacyChatRequest"),
            )
        },
        "/session/{session_id}/info": {
            "get": operation(
                "legacy_session_info",
                "Earlier service: session info",
                {"200": _json_response("The session", "Session")},
                parameters=[SESSION_ID_PARAMETER],
            )
        },
        "/session/{session_id}/clear": {
            "post": operation(
                "legacy_session_clear",
                "Earlier service: forget the context",
                {"200": _json_response("Cleared", "ClearResponse")},
                parameters=[SESSION_ID_PARAMETER],
            )
        },
        "/api/coze-chat": {
            "post": operation(
                "legacy_coze_chat",
                "Earlier Coze chat service: `delta` and `completed` events, then `[DONE]`",
                {
                    "200": _event_stream_response(
                        "An event stream of `data:` lines; the last is `data: [DONE]`",
                        ["CozeChatDeltaEvent", "CozeChatCompletedEvent", "ErrorEvent"],
                    )
                },
                _json_body("CozeChatRequest"),
            )
        },
    }


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "chat.access.auth.ApiKeyAuthentication"
    name = "apiKey"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": (
                "An API key from `python manage.py create_api_key NAME`, or an end-user token (`czt_…`) "
                "that a key minted with `POST /api/tokens`: the key's client narrowed to one user_id."
            ),
        }


class BrowserSessionScheme(OpenApiAuthenticationExtension):
    target_class = "chat.access.browsers.BrowserSessionAuthentication"
    name = "browserSession"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "cookie",
            "name": "sessionid",
            "description": "A logged-in (or, if allowed, anonymous) browser session; send X-CSRFToken on POST/DELETE.",
        }


def add_views_outside_drf(result, generator, request, public):
    """drf-spectacular postprocessing hook: describe the plain Django views and the WebSocket."""
    components = result.setdefault("components", {})
    components.setdefault("securitySchemes", {})["metricsToken"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "The value of `CHAT_METRICS_TOKEN`.",
    }
    schemas = components.setdefault("schemas", {})
    schemas.update(EVENT_SCHEMAS)
    schemas.update(OPERATIONS_SCHEMAS)
    schemas.update(COMPATIBILITY_SCHEMAS)
    chat_operation = result["paths"].get("/api/chat", {}).get("post", {})
    security = chat_operation.get("security", [{"apiKey": []}])
    error_response = _json_response("A JSON error", "Error")
    result["paths"]["/api/chat/stream"] = {
        "post": {
            "operationId": "chat_stream",
            "summary": "Chat: the reply as Server-Sent Events",
            "description": SSE_DESCRIPTION,
            "tags": ["chat"],
            "requestBody": chat_operation.get("requestBody"),
            "security": security,
            "responses": {
                "200": _event_stream_response(
                    "An event stream; each `data:` line is one of these objects.", list(EVENT_SCHEMAS)
                ),
                **{code: error_response for code in CHAT_ERROR_STATUSES},
            },
        }
    }
    result["paths"]["/api/sessions/{session_id}/stream"] = {
        "get": {
            "operationId": "session_stream",
            "summary": "Resume: the session's latest reply after Last-Event-ID, then live to its end",
            "description": RESUME_DESCRIPTION,
            "tags": ["sessions"],
            "security": security,
            "parameters": [
                SESSION_ID_PARAMETER,
                {"in": "header", "name": "Last-Event-ID", "required": False, "schema": {"type": "integer"}},
                {"in": "query", "name": "last_event_id", "required": False, "schema": {"type": "integer"}},
            ],
            "responses": {
                "200": _event_stream_response(
                    "The events after the one named, with their original ids; the last is `done`.",
                    list(EVENT_SCHEMAS),
                ),
                **{code: error_response for code in ("400", "401", "403", "404")},
            },
        }
    }
    result["paths"].update(_operations_paths())
    result["paths"].update(_compatibility_paths(security=security, error_response=error_response))
    result["info"]["description"] = result["info"].get("description", "") + WEBSOCKET_DESCRIPTION
    return result
