"""Coze's own API (docs/api.md §13): the conversation routes — create, retrieve, list, clear,
delete, message list, a message's feedback — and file upload. A conversation is a session: the
same key reads, lists, clears and deletes it through the gateway's own session API too.
Authentication, errors and the envelope as in `coze_api`.
"""

from django.http import HttpRequest, HttpResponse
from django.http.multipartparser import MultiPartParserError

from chat.access import admission, rates
from chat.conversations import coze_sessions
from chat.domain.errors import ChatError
from chat.domain.inputs import Owner
from chat.files import uploads
from chat.runtime.db import db_async
from chat.transports import coze_wire
from chat.transports.coze_api import coze_view
from chat.transports.coze_requests import (
    MAX_PAGE_SIZE,
    form_or_json_body,
    int_param,
    json_body,
    parse_conversation,
    parse_feedback,
    parse_message_query,
)
from sessions_admin import feedback, feedback_outbox

_feedback_set = db_async(feedback.feedback_set)
_feedback_clear = db_async(feedback.feedback_clear)


def _conversation_id(request: HttpRequest, body: dict | None = None) -> str:
    conversation_id = request.GET.get("conversation_id") or (body or {}).get("conversation_id")
    if not isinstance(conversation_id, str) or not conversation_id:
        raise ChatError("invalid", "conversation_id: Required.", errors={"conversation_id": ["Required."]})
    return conversation_id


@coze_view("POST")
async def conversation_create_view(request: HttpRequest, owner: Owner) -> HttpResponse:
    """POST /v1/conversation/create (JSON or form; `bot_id`, `messages`, `meta_data` optional)."""
    new = parse_conversation(form_or_json_body(request))
    if owner.end_user_id is not None and new.user_id not in ("", owner.end_user_id):
        raise ChatError("forbidden", "This token is for another user_id; send the token's own or none.")
    if new.bot_id:
        await admission.acheck_bot(owner=owner, bot_id=new.bot_id)
    session = await coze_sessions.aconversation_create(
        owner=owner, bot_id=new.bot_id, user_id=new.user_id, messages=new.messages, meta_data=new.meta_data
    )
    return coze_wire.ok(coze_wire.conversation_object(session))


@coze_view("GET", "POST")
async def conversation_retrieve_view(request: HttpRequest, owner: Owner) -> HttpResponse:
    """GET|POST /v1/conversation/retrieve?conversation_id="""
    body = json_body(request) if request.method == "POST" else {}
    session = await coze_sessions.conversation_get(owner=owner, session_id=_conversation_id(request, body))
    return coze_wire.ok(coze_wire.conversation_object(session))


@coze_view("GET", "POST")
async def conversation_list_view(request: HttpRequest, owner: Owner) -> HttpResponse:
    """GET|POST /v1/conversations?bot_id=&page_num=&page_size=: the caller's conversations with
    that bot, newest first."""
    params = {**(json_body(request) if request.method == "POST" else {}), **request.GET.dict()}
    bot_id = params.get("bot_id")
    if not isinstance(bot_id, str) or not bot_id:
        raise ChatError("invalid", "bot_id: Required.", errors={"bot_id": ["Required."]})
    await admission.acheck_bot(owner=owner, bot_id=bot_id)
    page_num = int_param(params, "page_num", default=1, low=1, high=10**6)
    page_size = int_param(params, "page_size", default=MAX_PAGE_SIZE, low=1, high=MAX_PAGE_SIZE)
    found, has_more = await coze_sessions.conversation_list(
        owner=owner, bot_id=bot_id, page_num=page_num, page_size=page_size
    )
    return coze_wire.ok(
        {"conversations": [coze_wire.conversation_object(session) for session in found], "has_more": has_more}
    )


@coze_view("POST")
async def conversation_clear_view(request: HttpRequest, owner: Owner, conversation_id: str) -> HttpResponse:
    """POST /v1/conversations/{id}/clear: a new context (Coze's new section); the session stays."""
    session = await coze_sessions.conversation_clear(owner=owner, session_id=conversation_id)
    return coze_wire.ok({"id": str(session.current_conversation_id), "conversation_id": session.session_id})


@coze_view("DELETE")
async def conversation_delete_view(request: HttpRequest, owner: Owner, conversation_id: str) -> HttpResponse:
    """DELETE /v1/conversations/{id}: the session and everything in it, as DELETE /api/sessions/{id}."""
    await coze_sessions.conversation_delete(owner=owner, session_id=conversation_id)
    return coze_wire.ok({})


@coze_view("POST")
async def message_list_view(request: HttpRequest, owner: Owner) -> HttpResponse:
    """POST /v1/conversation/message/list?conversation_id=: the questions and answers, a page at a
    time, with Coze's cursors (`first_id`, `last_id`, `has_more`) beside `data`."""
    body = json_body(request)
    session_id = _conversation_id(request, body)
    query = parse_message_query(body)
    page = await coze_sessions.message_list(
        owner=owner,
        session_id=session_id,
        order=query.order,
        chat_id=query.chat_id,
        before_id=query.before_id,
        after_id=query.after_id,
        limit=query.limit,
    )
    messages = [coze_wire.stored_message(message, session_id=session_id, bot_id="") for message in page.messages]
    return coze_wire.ok(
        messages,
        first_id=messages[0]["id"] if messages else "0",
        last_id=messages[-1]["id"] if messages else "0",
        has_more=page.has_more,
    )


@coze_view("POST", "DELETE")
async def message_feedback_view(
    request: HttpRequest, owner: Owner, conversation_id: str, message_id: str
) -> HttpResponse:
    """POST|DELETE /v1/conversations/{id}/messages/{id}/feedback: Coze's like / unlike (with
    `reason_types` and `comment`) of an answer, or its removal; the rating of POST
    /api/messages/{id}/feedback, forwarded to Coze the same way."""
    await rates.acheck_request(owner)
    body = json_body(request) if request.method == "POST" else {}
    pk = await coze_sessions.message_pk(owner=owner, session_id=conversation_id, message_id=message_id)
    if request.method == "POST":
        rating, comment = parse_feedback(body)
        await _feedback_set(
            owner_key=owner.key, coze_user_id=owner.end_user_id, message_id=pk, rating=rating, comment=comment
        )
    else:
        await _feedback_clear(owner_key=owner.key, coze_user_id=owner.end_user_id, message_id=pk)
    feedback_outbox.wake()
    return coze_wire.ok({})


@coze_view("POST")
async def file_upload_view(request: HttpRequest, owner: Owner) -> HttpResponse:
    """POST /v1/files/upload (multipart, field `file`): the limits and types of POST /api/files."""
    if (request.content_type or "").lower() != "multipart/form-data":
        raise ChatError("unsupported_media_type", "Send the file as multipart/form-data, field 'file'.")
    try:
        uploaded_file = request.FILES.get("file")
    except MultiPartParserError as error:
        raise ChatError("invalid", f"Malformed multipart body: {error}") from None
    if uploaded_file is None:
        raise ChatError("invalid", "file: send the file as the multipart field 'file'.", errors={"file": ["Required."]})
    chat_file = await uploads.afile_upload(owner=owner, uploaded_file=uploaded_file)
    return coze_wire.ok(
        {
            "id": chat_file.coze_file_id,
            "bytes": chat_file.bytes,
            "created_at": coze_wire.seconds(chat_file.uploaded_at),
            "file_name": chat_file.file_name,
        }
    )
