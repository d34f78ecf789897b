"""Coze conversations created ahead of their first chat: a Coze client that creates a
conversation with messages (docs/api.md §13) gets them kept by Coze as the conversation's context."""

from chat.coze.chats import build_messages
from chat.coze.client import aget_client, last_header
from chat.coze.errors import map_exception


async def aconversation_create(*, bot_id: str, messages: list[dict], meta_data: dict[str, str]) -> str:
    """Create a Coze conversation holding `messages` (Coze message objects, as a chat's
    additional_messages); returns its id. Raises ChatError when Coze refuses or can't be reached."""
    client = await aget_client()
    try:
        conversation = await client.conversations.create(
            messages=build_messages(message=None, additional_messages=messages),
            bot_id=bot_id or None,
            meta_data=meta_data or None,
        )
    except Exception as exc:
        raise map_exception(exc, logid=last_header("x-tt-logid"), mid_stream=False) from exc
    return conversation.id
