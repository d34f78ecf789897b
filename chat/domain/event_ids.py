"""The `id` of a reply's events (SSE `id:`, the WebSocket frames' `"id"`), docs/api.md §9.

An id names its reply and a place in it: `reply * 10,000,000 + 2 * n` for the reply's n-th event
(n from 1: `session` is 1, `done` the last). Reply numbers only grow, so ids increase across all of
a session's replies whatever the transport (one that shows no ids still uses up its reply's), and
an id of an earlier reply can never be taken for a place in a later one.

Odd ids are the `session` event of a replay of the stored answer (after the replay window): sent
after event n, it carries `reply * 10,000,000 + 2 * n + 1` — the same place as event n, yet
above it — so that resuming from it continues exactly after what that replay delivered.

Events that belong to no reply (a WebSocket turn or resume refused before a reply existed) are
numbered 1, 2 (their `error`, then `done`): below every reply's ids, and naming none.
"""

from dataclasses import dataclass

PER_REPLY = 10_000_000
# A stored reply's `answer_offsets` when where its events were in the answer is not known (a crashed
# worker's reply whose replay buffer was gone): a resume from inside it gets how it ended.
UNKNOWN_OFFSETS = "?"
MAX_NUMBER = PER_REPLY // 2 - 1  # events of one reply that can be told apart


@dataclass(frozen=True, slots=True)
class EventRef:
    """What an id names: a reply (None: none), the number of its event the client had, and whether
    the id was that of a stored replay's `session` event sent after it."""

    reply_pk: int | None
    number: int
    replayed_session: bool = False


def event_id(reply_pk: int | None, number: int) -> int:
    """The id of event `number` (from 1) of reply `reply_pk` (None or 0: events of no reply)."""
    if not reply_pk:
        return number
    return reply_pk * PER_REPLY + 2 * min(number, MAX_NUMBER)


def replayed_session_id(reply_pk: int, after_number: int) -> int:
    """The id of a stored replay's `session` event, sent after event `after_number`."""
    return event_id(reply_pk, after_number) + 1


def parse(value: int) -> EventRef:
    """What id `value` names (0: nothing, a resume from the start)."""
    reply_pk, rest = divmod(value, PER_REPLY)
    if not reply_pk:
        return EventRef(reply_pk=None, number=value)
    return EventRef(reply_pk=reply_pk, number=rest // 2, replayed_session=bool(rest % 2))
