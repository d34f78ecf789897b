"""The OpenAPI description of the OpenAI-compatible API (plain Django views, docs/api.md §10):
a drf-spectacular postprocessing hook."""

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
    result["paths"]["/v1/models/{model}"] = {
        "get": {
            "operationId": "openai_model",
            "summary": "OpenAI-compatible: one model (a bot id or a name from COZE_BOT_NAMES)",
            "tags": ["openai"],
            "security": [{"apiKey": []}],
            "parameters": [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {
                "200": {"description": "`{id, object: model, created, owned_by}`"},
                "401": error,
                "404": error,
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
