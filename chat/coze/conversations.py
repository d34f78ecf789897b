"""Coze conversations: created ahead of their first chat (a Coze client that creates a
conversation with messages, docs/api.md §13, gets them kept by Coze as the conversation's
context), and deleted — whole, or a turn's messages — when retention deletes them here (§15)."""

import asyncio
import logging
from dataclasses import dataclass, field

from chat.coze.chats import build_messages
from chat.coze.client import aclose_clients, aget_client, last_header
from chat.coze.errors import map_exception
from chat.domain.errors import ChatError

logger = logging.getLogger(__name__)


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


# --- deletions (retention: docs/api.md §15) ---------------------------------------------------------

# Coze's code for a conversation that does not exist (any more): what was to be deleted is gone.
CONVERSATION_GONE = 4002
# Deletions in flight at once: a prune of thousands keeps to a polite pace.
DELETE_CONCURRENCY = 8


@dataclass(frozen=True, slots=True)
class TurnAtCoze:
    """One turn's messages at Coze: the ids recorded here, and the chat's id, whose messages Coze
    lists (the user's question among them, whose id is not recorded)."""

    conversation_id: str
    chat_id: str = ""
    message_ids: tuple[str, ...] = ()


@dataclass(slots=True)
class DeletionResult:
    """How many of the conversations and turns handed over are gone at Coze, and which are not:
    `failures` maps each (a conversation id, or a TurnAtCoze) to why, as `code (Coze code N)`.
    Each failure is logged too, with its ids and Coze's code and log id, never with text."""

    deleted: int = 0
    failures: dict = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return len(self.failures)


def delete_at_coze(*, conversations: list[str], turns: list[TurnAtCoze]) -> DeletionResult:
    """Delete these conversations (`DELETE /v1/conversations/{id}`) and these turns' messages
    (`POST /v1/conversation/message/delete`) at Coze. For the sync callers of retention (commands,
    admin actions): runs its own event loop; never raises for Coze's or the network's failures,
    it counts them. What Coze says is already gone counts as deleted."""
    return asyncio.run(_adelete_at_coze(conversations, turns))


async def _adelete_at_coze(conversations: list[str], turns: list[TurnAtCoze]) -> DeletionResult:
    client = await aget_client()
    result = DeletionResult()
    limit = asyncio.Semaphore(DELETE_CONCURRENCY)

    async def one(item, job) -> None:
        async with limit:
            failure = await job
        if failure is None:
            result.deleted += 1
        else:
            result.failures[item] = failure

    jobs = [(conversation_id, _adelete_conversation(client, conversation_id)) for conversation_id in conversations]
    jobs += [(turn, _adelete_turn(client, turn)) for turn in turns]
    try:
        await asyncio.gather(*(one(item, job) for item, job in jobs))
    finally:
        await aclose_clients()  # this loop ends with the call
    return result


def _failure(exc: Exception) -> ChatError:
    return map_exception(exc, logid=last_header("x-tt-logid"), mid_stream=False)


def _reason(error: ChatError) -> str:
    return f"{error.code} (Coze code {error.upstream_code})" if error.upstream_code is not None else error.code


def _deletion_failed(exc: Exception, what: str) -> str | None:
    """A deletion's failure: None when Coze no longer has the conversation (gone counts as deleted),
    else logged with `what` was not deleted and returned as the reason."""
    error = _failure(exc)
    if error.upstream_code == CONVERSATION_GONE:
        return None
    logger.warning(
        "Coze did not delete %s: %s (code %s, logid %s)", what, error.code, error.upstream_code, error.logid or "-"
    )
    return _reason(error)


async def _adelete_conversation(client, conversation_id: str) -> str | None:
    """None when the conversation is gone at Coze, else why not."""
    try:
        await client.conversations.delete(conversation_id=conversation_id)
    except Exception as exc:  # noqa: BLE001 - any failure is mapped, logged and counted
        return _deletion_failed(exc, f"conversation {conversation_id}")
    return None


async def _adelete_turn(client, turn: TurnAtCoze) -> str | None:
    """Delete the turn's messages, those recorded and those Coze lists for its chat; None when
    they are gone at Coze, else why not."""
    message_ids = list(turn.message_ids)
    try:
        if turn.chat_id:
            listed = await client.conversations.messages.list(
                conversation_id=turn.conversation_id, chat_id=turn.chat_id
            )
            async for message in listed:
                if message.id not in message_ids:
                    message_ids.append(message.id)
        for message_id in message_ids:
            await client.conversations.messages.delete(conversation_id=turn.conversation_id, message_id=message_id)
    except Exception as exc:  # noqa: BLE001 - any failure is mapped, logged and counted
        return _deletion_failed(
            exc, f"the messages of chat {turn.chat_id or '-'} in conversation {turn.conversation_id}"
        )
    return None
