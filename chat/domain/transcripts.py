"""Transcript digests: pure functions, no Django.

An OpenAI client resends the whole history on every call. To find the session that history
belongs to without reading transcripts, each conversation keeps a digest of its answered turns
(`Conversation.transcript_hash`), extended by one step per turn when the turn finishes, and the
OpenAI path computes the same digest from the request's earlier messages and looks it up.

The digest starts from the owner and the bot, so equal histories of different owners or bots
never meet in the index. A new conversation starts with `transcript_start`; conversations from
before digests existed keep "" and are never matched. A turn counts once its answer is stored
(a question whose reply failed before any text is not part of what the client saw either).
Content is compared without leading and trailing whitespace, which clients and front-ends trim.
"""

import hashlib
import json
from collections.abc import Iterable

USER = "user"
ASSISTANT = "assistant"


def _digest(*parts: str) -> str:
    # JSON keeps the parts unambiguous whatever they contain; 128 bits are plenty for equality
    # within one owner's sessions.
    return hashlib.blake2b(json.dumps(parts, ensure_ascii=False).encode(), digest_size=16).hexdigest()


def transcript_start(*, owner_key: str, bot_id: str) -> str:
    """The digest of an empty conversation of this owner with this bot."""
    return _digest("transcript", owner_key, bot_id)


def transcript_extend(previous: str, messages: Iterable[tuple[str, str]]) -> str:
    """`previous` extended by `(role, content)` messages, in order (role: USER or ASSISTANT)."""
    digest = previous
    for role, content in messages:
        digest = _digest(digest, role, content.strip())
    return digest


def transcript_hash(*, owner_key: str, bot_id: str, messages: Iterable[tuple[str, str]]) -> str:
    """The digest of a whole transcript: what a conversation holds after these messages."""
    return transcript_extend(transcript_start(owner_key=owner_key, bot_id=bot_id), messages)
