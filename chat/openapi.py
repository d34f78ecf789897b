"""OpenAPI additions: the API-key and browser-session security schemes, and the parts DRF can't
see — the SSE endpoint (a plain async Django view) with its events, and the WebSocket protocol.
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
                "description": "A code of the error table (API.md §3), or cancelled/interrupted",
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

WEBSOCKET_DESCRIPTION = """

## WebSocket: `ws/chat/`

Authenticate with `Authorization: Bearer <api key>` (non-browser clients) or the session cookie
(browsers, whose `Origin` must be allowed). An unauthenticated socket is closed with code 4401.

Client frames: `{"type":"chat", …chat request body}`, `{"type":"cancel"[, "chat_id"]}`, `{"type":"ping"}`.

Server frames: the same JSON objects as the SSE `data:` lines (`session`, `reasoning`, `delta`,
`follow_up`, `completed`, `error`), then `{"type":"done"}` after each reply, and `{"type":"pong"}`.
One socket carries many turns; a bad frame gets an `error` object and the socket stays open.
Frames are limited to 1 MiB.
"""


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "chat.auth.ApiKeyAuthentication"
    name = "apiKey"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key from `python manage.py create_api_key NAME`.",
        }


class BrowserSessionScheme(OpenApiAuthenticationExtension):
    target_class = "chat.auth.BrowserSessionAuthentication"
    name = "browserSession"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "cookie",
            "name": "sessionid",
            "description": "A logged-in (or, if allowed, anonymous) browser session; send X-CSRFToken on POST/DELETE.",
        }


def add_streaming_endpoints(result, generator, request, public):
    """drf-spectacular postprocessing hook: describe POST /api/chat/stream and the WebSocket."""
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(EVENT_SCHEMAS)
    chat_operation = result["paths"].get("/api/chat", {}).get("post", {})
    error_response = {
        "description": "A JSON error",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    result["paths"]["/api/chat/stream"] = {
        "post": {
            "operationId": "chat_stream",
            "summary": "Chat: the reply as Server-Sent Events",
            "description": SSE_DESCRIPTION,
            "tags": ["chat"],
            "requestBody": chat_operation.get("requestBody"),
            "security": chat_operation.get("security", [{"apiKey": []}]),
            "responses": {
                "200": {
                    "description": "An event stream; each `data:` line is one of these objects.",
                    "content": {
                        "text/event-stream": {
                            "schema": {"oneOf": [{"$ref": f"#/components/schemas/{name}"} for name in EVENT_SCHEMAS]}
                        }
                    },
                },
                **{
                    code: error_response
                    for code in ("400", "401", "403", "409", "413", "415", "429", "502", "503", "504")
                },
            },
        }
    }
    result["info"]["description"] = result["info"].get("description", "") + WEBSOCKET_DESCRIPTION
    return result


OPENAI_SCHEMAS = {
    "OpenAIError": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "code"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string", "description": "OpenAI's error type, e.g. invalid_request_error"},
                    "code": {"type": "string", "description": "This API's error code (the table of errors)"},
                    "param": {"type": "string", "nullable": True},
                },
            }
        },
    },
    "OpenAIChatCompletionRequest": {
        "type": "object",
        "required": ["model", "messages"],
        "description": "OpenAI's body; other OpenAI fields (temperature, max_tokens, …) are accepted and ignored.",
        "properties": {
            "model": {"type": "string", "description": "A bot id or a COZE_BOT_NAMES name (GET /v1/models)"},
            "messages": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["role", "content"],
                    "properties": {
                        "role": {"type": "string", "enum": ["system", "developer", "user", "assistant"]},
                        "content": {
                            "oneOf": [
                                {"type": "string"},
                                {"type": "array", "items": {"type": "object"}, "description": "text parts"},
                            ]
                        },
                    },
                },
            },
            "stream": {"type": "boolean", "default": False},
            "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
            "user": {"type": "string", "description": "The Coze user_id"},
            "session_id": {"type": "string", "description": "Pins a session, like the X-Session-Id header"},
        },
    },
}

OPENAI_DESCRIPTION = """\
OpenAI's Chat Completions: the `chat.completion` object, or with `stream: true` `chat.completion.chunk`
`data:` lines (the role, content deltas, a chunk with `finish_reason`, a usage chunk when
`stream_options.include_usage` is set), then `data: [DONE]`. A failure after the stream began is a
`data: {"error": …}` line, then `[DONE]`. The session is pinned by the `X-Session-Id` header, or
found from the resent history, or new; the answer names it in `X-Session-Id`.
"""


def add_openai_endpoints(result, generator, request, public):
    """drf-spectacular postprocessing hook: describe the OpenAI-compatible API (plain Django views)."""
    result.setdefault("components", {}).setdefault("schemas", {}).update(OPENAI_SCHEMAS)
    error = {
        "description": "An error in OpenAI's shape",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OpenAIError"}}},
    }
    session_header = {"X-Session-Id": {"schema": {"type": "string"}, "description": "The session of this turn"}}
    result["paths"]["/v1/models"] = {
        "get": {
            "operationId": "openai_models",
            "summary": "OpenAI-compatible: the bots as models",
            "tags": ["openai"],
            "security": [{"apiKey": []}],
            "responses": {
                "200": {"description": "`{object: list, data: [{id, object: model, created, owned_by}]}`"},
                "401": error,
            },
        }
    }
    result["paths"]["/v1/chat/completions"] = {
        "post": {
            "operationId": "openai_chat_completions",
            "summary": "OpenAI-compatible: a chat turn",
            "description": OPENAI_DESCRIPTION,
            "tags": ["openai"],
            "security": [{"apiKey": []}],
            "parameters": [
                {
                    "name": "X-Session-Id",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string"},
                    "description": "Pin the session; only the last user message is sent to Coze",
                }
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/OpenAIChatCompletionRequest"}}
                },
            },
            "responses": {
                "200": {
                    "description": "`chat.completion` JSON, or a `text/event-stream` of `chat.completion.chunk`",
                    "headers": session_header,
                },
                **{code: error for code in ("400", "401", "404", "409", "413", "415", "429", "502", "503", "504")},
            },
        }
    }
    return result
