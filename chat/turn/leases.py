"""Each worker's heartbeat: it renews the leases of the replies it runs, and ends the replies whose
lease lapsed because their worker died (`chat.turn.recovery`).

A running reply holds its session's lock as a lease of CHAT_SESSION_LOCK_TTL in the database's
clock. One task per event loop (a worker has one) renews the leases of all the replies it runs in
one transaction every `interval()` (a third of the TTL, at most 9 s), however quiet the replies
are, so a reply of any length keeps its lease while its worker lives and loses it within the TTL
once the worker dies. In the same round it ends other workers' replies whose lease has lapsed, so a
dead worker's reply is ended `interrupted` within TTL + `interval()` of its last renewal, by
whichever worker is alive, not at the next start-up.

A reply whose lease lapsed anyway while its worker lives (the database was away for longer than
the TTL) has been ended by then: the heartbeat finds it `interrupted` and stops it here as such,
rather than let it run on unstored.
"""

import asyncio
import logging
import weakref
from dataclasses import dataclass

from django.conf import settings

from chat.runtime import wakeups
from chat.runtime.db import db_async
from chat.turn import recovery, store
from chat.turn.control import TurnControl
from chat.turn.records import TurnContext

logger = logging.getLogger(__name__)

# At most 9 s, so that a round's own time can't push an ending past the promised TTL + 10 s.
MAX_INTERVAL_SECONDS = 9.0


def interval() -> float:
    """Seconds between two rounds: three renewals per lease, and a dead worker's replies ended at
    most this long after their lease lapsed."""
    return min(MAX_INTERVAL_SECONDS, settings.CHAT_SESSION_LOCK_TTL / 3)


@dataclass(frozen=True, slots=True)
class _Held:
    session_pk: int
    lock_token: str
    control: TurnControl | None  # None: the reply has ended here, its finish is still being stored
    loop: asyncio.AbstractEventLoop


_held: dict[int, _Held] = {}  # by reply
_keepers: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task]" = weakref.WeakKeyDictionary()


def hold(turn: TurnContext, control: TurnControl | None = None) -> None:
    """A reply of this event loop runs (`control`), or has ended here and its finish is being
    retried (None: the worker still has its answer, so nobody must end it as crashed meanwhile):
    its lease is renewed until `let_go` with the same `control`."""
    loop = asyncio.get_running_loop()
    _held[turn.reply_pk] = _Held(turn.session_pk, turn.lock_token, control, loop)
    ensure_keeper()


def let_go(turn: TurnContext, control: TurnControl | None = None) -> None:
    held = _held.get(turn.reply_pk)
    if held is not None and held.control is control:
        del _held[turn.reply_pk]


def ensure_keeper() -> None:
    """Start this event loop's heartbeat, once."""
    loop = asyncio.get_running_loop()
    keeper = _keepers.get(loop)
    if keeper is None or keeper.done():
        _keepers[loop] = loop.create_task(_keep(), name="lease keeper")


async def _keep() -> None:
    while True:
        await asyncio.sleep(interval())
        await aone_round()


async def aone_round() -> None:
    """One round: renew this loop's leases, then end the replies of dead workers. Never raises (a
    round that fails is logged and the next one tries again)."""
    try:
        await arenew()
    except Exception as exc:  # noqa: BLE001 - the next round tries again, well within the TTL
        logger.warning("Could not renew the leases of running replies: %s", exc)
    await asweep()


async def arenew() -> int:
    """Renew the leases of this loop's running replies; stop those crash recovery ended meanwhile.
    Returns how many were stopped."""
    loop = asyncio.get_running_loop()
    mine = {reply_pk: held for reply_pk, held in list(_held.items()) if held.loop is loop}
    if not mine:
        return 0
    ended = await store.turn_renew_leases([(pk, held.session_pk, held.lock_token) for pk, held in mine.items()])
    stopped = 0
    for reply_pk in ended:
        control = mine[reply_pk].control
        if control is not None and not control.stopping:
            logger.warning("Reply %s lost its lease (ended as interrupted elsewhere); stopping it", reply_pk)
            control.stop("interrupted")
            stopped += 1
    return stopped


async def asweep() -> int:
    """End the replies of dead workers (and the waits for tool outputs that passed). Returns how
    many replies it ended. Never raises."""
    try:
        ended_replies = await db_async(recovery.end_dead_replies)()
        expired = await db_async(recovery.fail_expired_pauses)()
    except Exception as exc:  # noqa: BLE001 - best effort: the next round tries again
        logger.warning("Could not end the replies of crashed workers: %s", exc)
        return 0
    # Wake whoever waits for those replies' ends (a resume, a cancel), here and in other workers.
    wakeups.publish(*(wakeups.reply_topic(reply_pk) for reply_pk in ended_replies))
    ended = len(ended_replies)
    if expired:
        logger.warning(
            "Failed %d repl%s whose wait for local tool outputs had passed", expired, "y" if expired == 1 else "ies"
        )
    if ended:
        logger.warning(
            "Ended %d repl%s of a crashed worker (lease lapsed) as interrupted", ended, "y" if ended == 1 else "ies"
        )
    return ended
