"""Coze's feedback API for one message (docs/api.md §15): a like or unlike with an optional comment
(`POST /v1/conversations/{conversation_id}/messages/{message_id}/feedback`), or its removal
(`DELETE` on the same path). Called by the ratings' outbox sender, never on a user's request."""

from cozepy.conversations.message.feedback import FeedbackType

from chat.coze.client import aget_client, last_header
from chat.coze.errors import map_exception

FEEDBACK_TYPES = {"like": FeedbackType.LIKE, "unlike": FeedbackType.UNLIKE}


async def afeedback_create(
    *,
    conversation_id: str,
    message_id: str,
    feedback_type: str,
    comment: str = "",
    reason_types: list[str] | None = None,
) -> None:
    """Tell Coze the message was liked or unliked (`feedback_type` "like" or "unlike"), replacing
    any earlier feedback. Raises ChatError when Coze refuses or can't be reached."""
    client = await aget_client()
    try:
        await client.conversations.messages.feedback.create(
            conversation_id=conversation_id,
            message_id=message_id,
            feedback_type=FEEDBACK_TYPES[feedback_type],
            reason_types=reason_types or None,
            comment=comment or None,
        )
    except Exception as exc:
        raise map_exception(exc, logid=last_header("x-tt-logid"), mid_stream=False) from exc


async def afeedback_delete(*, conversation_id: str, message_id: str) -> None:
    """Remove the message's feedback at Coze. Raises ChatError when Coze refuses or can't be reached."""
    client = await aget_client()
    try:
        await client.conversations.messages.feedback.delete(conversation_id=conversation_id, message_id=message_id)
    except Exception as exc:
        raise map_exception(exc, logid=last_header("x-tt-logid"), mid_stream=False) from exc
