"""The OpenAPI description of Coze's own API (plain Django views, docs/api.md §13): a
drf-spectacular postprocessing hook."""

from sessions_admin.feedback import MAX_COMMENT_CHARS

ID = {"type": "string", "description": "A Coze-style id (a string of digits)"}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
MESSAGE = {
    "type": "object",
    "required": ["role", "content", "content_type"],
    "properties": {
        "id": ID,
        "conversation_id": ID,
        "bot_id": {"type": "string"},
        "chat_id": ID,
        "section_id": ID,
        "role": {"type": "string", "enum": ["user", "assistant"]},
        "type": {
            "type": "string",
            "enum": ["question", "answer", "follow_up", "verbose", "function_call", "tool_response"],
        },
        "content": {"type": "string"},
        "content_type": {"type": "string", "enum": ["text", "object_string"]},
        "meta_data": STRING_MAP,
        "created_at": {"type": "integer"},
        "updated_at": {"type": "integer"},
        "reasoning_content": {"type": "string"},
    },
}
COZE_SCHEMAS = {
    "CozeApiError": {
        "type": "object",
        "required": ["code", "msg"],
        "description": "Coze's error: a non-zero `code` (4000 bad request, 4001/4002 unknown chat/conversation, "
        "4006 bot not allowed, 4016 busy, 4020 rate, 4011 budget, 4100 key, 4104 ended chat, 5000 …)",
        "properties": {
            "code": {"type": "integer"},
            "msg": {"type": "string"},
            "detail": {"type": "object", "properties": {"logid": {"type": "string"}}},
        },
    },
    "CozeApiConversation": {
        "type": "object",
        "required": ["id", "created_at", "meta_data", "last_section_id"],
        "properties": {"id": ID, "created_at": {"type": "integer"}, "meta_data": STRING_MAP, "last_section_id": ID},
    },
    "CozeApiMessage": MESSAGE,
    "CozeApiChat": {
        "type": "object",
        "required": ["id", "conversation_id", "status"],
        "properties": {
            "id": ID,
            "conversation_id": ID,
            "bot_id": {"type": "string"},
            "created_at": {"type": "integer"},
            "completed_at": {"type": "integer"},
            "failed_at": {"type": "integer"},
            "meta_data": STRING_MAP,
            "last_error": {"type": "object", "properties": {"code": {"type": "integer"}, "msg": {"type": "string"}}},
            "status": {
                "type": "string",
                "enum": ["created", "in_progress", "completed", "failed", "requires_action", "canceled"],
            },
            "section_id": ID,
            "usage": {
                "type": "object",
                "properties": {
                    "token_count": {"type": "integer"},
                    "output_count": {"type": "integer"},
                    "input_count": {"type": "integer"},
                },
            },
            "required_action": {
                "type": "object",
                "description": "`{type: submit_tool_outputs, submit_tool_outputs: {tool_calls: [{id, type: function, "
                "function: {name, arguments}}]}}` while the chat waits for its local tools",
            },
        },
    },
    "CozeApiChatRequest": {
        "type": "object",
        "required": ["bot_id", "additional_messages"],
        "description": "Coze's body; `auto_save_history`, `parameters`, `enable_card`, `extra_params` and "
        "`shortcut_command` are accepted and ignored.",
        "properties": {
            "bot_id": {"type": "string"},
            "user_id": {"type": "string", "description": "Coze's user_id: the session's user (admin shows it)"},
            "stream": {"type": "boolean", "default": False},
            "additional_messages": {"type": "array", "items": MESSAGE},
            "custom_variables": STRING_MAP,
            "meta_data": STRING_MAP,
        },
    },
}

STREAM_EVENTS = (
    "conversation.chat.created, conversation.chat.in_progress, conversation.message.delta, "
    "conversation.message.completed, conversation.chat.completed | conversation.chat.requires_action | "
    "conversation.chat.failed | error, then done: one `event:` and one `data:` line each"
)


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _envelope(description: str, data: dict, **beside) -> dict:
    schema = {
        "type": "object",
        "required": ["code", "msg", "data"],
        "properties": {"code": {"type": "integer", "enum": [0]}, "msg": {"type": "string"}, "data": data, **beside},
    }
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _query(*names: str, required: bool = True) -> list[dict]:
    return [{"name": name, "in": "query", "required": required, "schema": {"type": "string"}} for name in names]


def add_coze_endpoints(result, generator, request, public):
    """drf-spectacular postprocessing hook: describe Coze's own API (plain Django views)."""
    result.setdefault("components", {}).setdefault("schemas", {}).update(COZE_SCHEMAS)
    error = {"description": "Coze's error", "content": {"application/json": {"schema": _ref("CozeApiError")}}}
    errors = {code: error for code in ("400", "401", "403", "404", "409", "413", "415", "429", "502", "503", "504")}
    chat = _ref("CozeApiChat")
    stream = {"text/event-stream": {"schema": {"type": "string", "description": STREAM_EVENTS}}}

    def operation(operation_id: str, summary: str, responses: dict, **extra) -> dict:
        return {
            "operationId": operation_id,
            "summary": summary,
            "tags": ["coze"],
            "security": [{"apiKey": []}],
            "responses": {**responses, **errors},
            **extra,
        }

    chat_ids = _query("conversation_id", "chat_id")
    paths = result["paths"]
    chat_response = _envelope("The chat object", chat)
    chat_response_or_stream = {**chat_response, "content": {**chat_response["content"], **stream}}
    paths["/v3/chat"] = {
        "post": operation(
            "coze_chat",
            "Coze: a chat turn, streamed, or answered `in_progress` at once and run on the server",
            {"200": chat_response_or_stream},
            parameters=_query("conversation_id", required=False),
            requestBody={"required": True, "content": {"application/json": {"schema": _ref("CozeApiChatRequest")}}},
        )
    }
    for method in ("get", "post"):
        paths.setdefault("/v3/chat/retrieve", {})[method] = operation(
            f"coze_chat_retrieve_{method}",
            "Coze: the chat object as stored now",
            {"200": chat_response},
            parameters=chat_ids,
        )
        paths.setdefault("/v3/chat/message/list", {})[method] = operation(
            f"coze_chat_messages_{method}",
            "Coze: the chat's messages (tool calls and outputs, answer, follow-ups)",
            {"200": _envelope("The messages", {"type": "array", "items": _ref("CozeApiMessage")})},
            parameters=chat_ids,
        )
    paths["/v3/chat/cancel"] = {
        "post": operation(
            "coze_chat_cancel",
            "Coze: stop a chat in progress or waiting for its tools (4104 when it has ended)",
            {"200": chat_response},
            requestBody={
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"type": "object", "properties": {"conversation_id": ID, "chat_id": ID}}
                    }
                },
            },
        )
    }
    paths["/v3/chat/submit_tool_outputs"] = {
        "post": operation(
            "coze_submit_tool_outputs",
            "Coze: continue a chat waiting for its local tools' outputs, streamed or not",
            {"200": chat_response_or_stream},
            parameters=chat_ids,
            requestBody={
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["tool_outputs"],
                            "properties": {
                                "tool_outputs": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "properties": {
                                            "tool_call_id": {"type": "string"},
                                            "output": {"type": "string"},
                                        },
                                    },
                                },
                                "stream": {"type": "boolean"},
                            },
                        }
                    }
                },
            },
        )
    }
    conversation = _envelope("The conversation", _ref("CozeApiConversation"))
    create_body = {
        "type": "object",
        "properties": {
            "bot_id": {"type": "string"},
            "user_id": {"type": "string"},
            "messages": {"type": "array", "items": MESSAGE},
            "meta_data": STRING_MAP,
        },
    }
    paths["/v1/conversation/create"] = {
        "post": operation(
            "coze_conversation_create",
            "Coze: a conversation (a session) without a turn; bot and messages optional",
            {"200": conversation},
            requestBody={
                "content": {
                    "application/json": {"schema": create_body},
                    "application/x-www-form-urlencoded": {"schema": create_body},
                    "multipart/form-data": {"schema": create_body},
                }
            },
        )
    }
    for method in ("get", "post"):
        paths.setdefault("/v1/conversation/retrieve", {})[method] = operation(
            f"coze_conversation_retrieve_{method}",
            "Coze: one conversation of the caller",
            {"200": conversation},
            parameters=_query("conversation_id"),
        )
        paths.setdefault("/v1/conversations", {})[method] = operation(
            f"coze_conversation_list_{method}",
            "Coze: the caller's conversations with a bot, newest first",
            {
                "200": _envelope(
                    "A page",
                    {
                        "type": "object",
                        "properties": {
                            "conversations": {"type": "array", "items": _ref("CozeApiConversation")},
                            "has_more": {"type": "boolean"},
                        },
                    },
                )
            },
            parameters=[*_query("bot_id"), *_query("page_num", "page_size", required=False)],
        )
    conversation_id = [{"name": "conversation_id", "in": "path", "required": True, "schema": {"type": "string"}}]
    paths["/v1/conversations/{conversation_id}"] = {
        "delete": operation(
            "coze_conversation_delete",
            "Coze: delete the conversation (the session) and everything in it",
            {"200": _envelope("Deleted", {"type": "object"})},
            parameters=conversation_id,
        )
    }
    paths["/v1/conversations/{conversation_id}/clear"] = {
        "post": operation(
            "coze_conversation_clear",
            "Coze: a new context (a new section); the conversation stays",
            {"200": _envelope("The new section", {"type": "object", "properties": {"id": ID, "conversation_id": ID}})},
            parameters=conversation_id,
        )
    }
    message_path = [
        *conversation_id,
        {"name": "message_id", "in": "path", "required": True, "schema": {"type": "string"}},
    ]
    paths["/v1/conversations/{conversation_id}/messages/{message_id}/feedback"] = {
        "post": operation(
            "coze_message_feedback",
            "Coze: like or unlike an answer (the rating of POST /api/messages/{id}/feedback)",
            {"200": _envelope("Stored; forwarded to Coze in the background", {"type": "object"})},
            parameters=message_path,
            requestBody={
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["feedback_type"],
                            "properties": {
                                "feedback_type": {"type": "string", "enum": ["like", "unlike"]},
                                "reason_types": {
                                    "type": "array",
                                    "items": {"type": "string"},
                                    "description": "Checked, not kept.",
                                },
                                "comment": {"type": "string", "maxLength": MAX_COMMENT_CHARS},
                            },
                        }
                    }
                },
            },
        ),
        "delete": operation(
            "coze_message_feedback_delete",
            "Coze: take an answer's like or unlike back",
            {"200": _envelope("Removed", {"type": "object"})},
            parameters=message_path,
        ),
    }
    paths["/v1/conversation/message/list"] = {
        "post": operation(
            "coze_message_list",
            "Coze: the conversation's questions and answers, a page at a time",
            {
                "200": _envelope(
                    "A page; `first_id`, `last_id` and `has_more` beside `data`",
                    {"type": "array", "items": _ref("CozeApiMessage")},
                    first_id=ID,
                    last_id=ID,
                    has_more={"type": "boolean"},
                )
            },
            parameters=_query("conversation_id"),
            requestBody={
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "order": {"type": "string", "enum": ["asc", "desc"]},
                                "chat_id": {"type": "string", "nullable": True},
                                "before_id": {"type": "string", "nullable": True},
                                "after_id": {"type": "string", "nullable": True},
                                "limit": {"type": "integer", "minimum": 1, "maximum": 50},
                            },
                        }
                    }
                }
            },
        )
    }
    paths["/v1/files/upload"] = {
        "post": operation(
            "coze_file_upload",
            "Coze: upload a file (the limits and types of POST /api/files)",
            {
                "200": _envelope(
                    "The file",
                    {
                        "type": "object",
                        "properties": {
                            "id": ID,
                            "bytes": {"type": "integer"},
                            "created_at": {"type": "integer"},
                            "file_name": {"type": "string"},
                        },
                    },
                )
            },
            requestBody={
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}
                    }
                },
            },
        )
    }
    return result
