"""What a dead worker's reply left in its Redis replay buffer (`chat.resume.replay`), read and closed
by the worker that ends the reply for it (crash recovery, `chat.turn.recovery`).

Synchronous, for the database thread that ends the reply in the same breath: the answer so far
(the reply's `delta` contents, when the buffer still holds its events from the first one on), and
the buffer closed as a stream that ended: the reply's `error`, then `done`, kept for
CHAT_RESUME_WINDOW like any ended reply's, so a client following it (or coming back) gets what was
kept, the error and `done`, with the ids the rest would have had.
"""

import json
import logging
import threading
from dataclasses import dataclass

import redis
from django.conf import settings

from chat.domain.events import ChatEvent
from chat.domain.sse import encode_json
from chat.resume.replay import KEY_PREFIX

logger = logging.getLogger(__name__)

_client: redis.Redis | None = None
_client_lock = threading.Lock()


def _redis() -> redis.Redis:
    global _client
    with _client_lock:
        if _client is None:
            _client = redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=2)
        return _client


@dataclass(frozen=True, slots=True)
class KeptReply:
    """A reply's buffer as its worker left it."""

    last_id: int  # the number of its last event (events count from 1 within the reply)
    ended: bool  # its last event is `done`: the worker ended it
    # The answer so far and the characters each event added to it; None when the buffer no longer
    # starts at the reply's first event (trimmed), so the answer can't be told whole.
    answer: str | None
    answer_chars: tuple[int, ...] = ()


def kept_reply(reply_pk: int) -> KeptReply | None:
    """The reply's buffer in Redis; None without Redis, without a buffer, or when Redis is away."""
    if not settings.REDIS_URL:
        return None
    try:
        entries = _redis().xrange(f"{KEY_PREFIX}{reply_pk}")
    except (redis.RedisError, OSError) as exc:
        logger.warning("The replay buffer of reply %s could not be read: %s", reply_pk, exc)
        return None
    if not entries:
        return None
    numbers = [int(raw_id.split(b"-", 1)[0]) for raw_id, _ in entries]
    kinds = [fields[b"t"].decode() for _, fields in entries]
    last_id, ended = numbers[-1], kinds[-1] == "done"
    if numbers[0] != 1:
        return KeptReply(last_id=last_id, ended=ended, answer=None)
    chars, parts = [], []
    for kind, (_, fields) in zip(kinds, entries, strict=True):
        if kind == "done":
            break
        content = json.loads(fields[b"d"])["content"] if kind == "delta" else ""
        parts.append(content)
        chars.append(len(content))
    return KeptReply(last_id=last_id, ended=ended, answer="".join(parts), answer_chars=tuple(chars))


def close_kept(reply_pk: int, kept: KeptReply, last: ChatEvent) -> None:
    """End the buffer of a reply that a dead worker left running: `last` (its error), then `done`,
    both kept for the window. Best effort: without it a follower ends when the buffer expires."""
    if kept.ended:
        return
    key = f"{KEY_PREFIX}{reply_pk}"
    pipe = _redis().pipeline(transaction=True)
    pipe.xadd(key, {"t": last.type, "d": encode_json(last.as_dict())}, id=f"{kept.last_id + 1}-0")
    pipe.xadd(key, {"t": "done", "d": "[DONE]"}, id=f"{kept.last_id + 2}-0")
    pipe.expire(key, int(settings.CHAT_RESUME_WINDOW))
    try:
        pipe.execute()
    except (redis.RedisError, OSError) as exc:
        logger.warning("The replay buffer of reply %s could not be closed: %s", reply_pk, exc)
