"""Waking a task when what it waits for happens, in this worker or another.

A cancel waits for its reply to be stored; a resume, for a reply to be kept or to end; a lookup,
for a chat id to be recorded. Each waits on a *topic* (`reply:<pk>`, `owner:<key>`), and the code
that changes that state publishes the topic once the change is committed:

* in this process the publish wakes the topic's watchers at once, on whatever event loop they
  run (tests serve several loops in one process);
* with REDIS_URL it also goes out by Redis pub/sub (one channel per Redis database), and in every
  other worker one subscriber per event loop wakes that loop's watchers.

A wake-up says only "look again": a watcher re-reads the state it waits for, so a duplicate or
unrelated wake-up costs one query and is harmless. The order that makes it lossless: watch first
(subscribed, with Redis), then read the state, then sleep. A Redis message published while a
subscription was broken would be lost, so when a subscriber (re)connects it wakes all of its
loop's watchers to re-read. Callers still bound every wait with a deadline (one, not a loop of
short ones): a state changed by a process that does not publish (an operator's command) is seen
at that deadline or at the next heartbeat.

Without Redis nothing crosses processes: a wait for a reply that runs in another worker (several
workers without REDIS_URL, docs/api.md §9) hears nothing, and looks again every
UNHEARD_POLL_SECONDS instead (`wait_seconds`) — the one case left to polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
import weakref
from collections.abc import AsyncIterator

import redis
import redis.asyncio as aredis
from django.conf import settings

from chat.runtime.tasks import in_background

logger = logging.getLogger(__name__)

CHANNEL_PREFIX = "cozeproject:wakeups:"
# A watcher that starts while Redis is away does not wait longer than this for its subscription;
# it then relies on its own deadline.
SUBSCRIBE_WAIT_SECONDS = 2.0
RECONNECT_DELAYS = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)

# Tags this process's publishes: they come back from Redis, and its watchers were woken already.
_ORIGIN = uuid.uuid4().hex
# The subscriptions' Redis client name (CLIENT LIST shows whose connection is whose).
SUBSCRIBER_NAME = f"cozeproject-wakeups-{_ORIGIN[:12]}"


# How often a wait looks again for a change it cannot hear about (see the module's docstring).
UNHEARD_POLL_SECONDS = 0.5
# This process's cancel channels (chat.turn.cancellation), which a reply records as its worker's.
_local_channels: set[str] = set()


def note_local_channel(name: str) -> None:
    _local_channels.add(name)


def heard_from(worker_channel: str) -> bool:
    """Whether a change to a reply running on `worker_channel` wakes watchers here."""
    return bool(settings.REDIS_URL) or not worker_channel or worker_channel in _local_channels


def wait_seconds(remaining: float, *worker_channels: str) -> float:
    """How long to sleep on a watch before looking again: `remaining`, unless one of the replies
    awaited runs where its changes can't be heard from here."""
    if all(heard_from(channel) for channel in worker_channels):
        return remaining
    return min(remaining, UNHEARD_POLL_SECONDS)


def reply_topic(reply_pk: int) -> str:
    """Published when a reply's record changes: its chat id recorded, it paused, ended, noted."""
    return f"reply:{reply_pk}"


def owner_topic(owner_key: str) -> str:
    """Published when one of the owner's replies records its Coze chat id."""
    return f"owner:{owner_key}"


class Watch:
    """One waiter's interest in some topics; `wait` returns when one was published since the last."""

    __slots__ = ("_event", "loop", "topics")

    def __init__(self, topics: tuple[str, ...]):
        self.topics = topics
        self.loop = asyncio.get_running_loop()
        self._event = asyncio.Event()

    def wake(self) -> None:
        """From any thread."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            self._event.set()
        elif not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._event.set)

    async def wait(self, seconds: float | None) -> bool:
        """Sleep until a topic is published since the last wait (True) or `seconds` pass (False)."""
        if seconds is not None and seconds <= 0:
            return self._consume()
        try:
            async with asyncio.timeout(seconds):
                await self._event.wait()
        except TimeoutError:
            return False
        return self._consume()

    def _consume(self) -> bool:
        woken = self._event.is_set()
        self._event.clear()
        return woken


_lock = threading.Lock()
_watches: dict[str, set[Watch]] = {}


def _watches_of(topic: str, loop: asyncio.AbstractEventLoop | None = None) -> list[Watch]:
    with _lock:
        watches = list(_watches.get(topic, ()))
    return [w for w in watches if loop is None or w.loop is loop]


@contextlib.asynccontextmanager
async def watching(*topics: str) -> AsyncIterator[Watch]:
    """Watch `topics` for the duration of the block. Read the awaited state inside the block,
    after entering it: a change published from then on wakes the watch."""
    watch = Watch(topics)
    with _lock:
        for topic in topics:
            _watches.setdefault(topic, set()).add(watch)
    try:
        if settings.REDIS_URL:
            await _subscriber().ready()
        yield watch
    finally:
        with _lock:
            for topic in topics:
                group = _watches.get(topic)
                if group is not None:
                    group.discard(watch)
                    if not group:
                        del _watches[topic]


def publish(*topics: str) -> None:
    """Wake the watchers of `topics` in this process now, and (with Redis) in every other worker.

    Call it after the change is committed. Never blocks and never raises: a lost Redis publish
    delays a remote watcher to its deadline, it does not break it."""
    for topic in topics:
        for watch in _watches_of(topic):
            watch.wake()
    if settings.REDIS_URL:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # no event loop (a command): remote watchers see it at their deadline
        in_background(_apublish(topics))


async def _apublish(topics: tuple[str, ...]) -> None:
    try:
        await _redis().publish(_channel(), " ".join((_ORIGIN, *topics)))
    except (redis.RedisError, OSError) as exc:
        logger.warning("Could not publish a wake-up (%s): %s", " ".join(topics), exc)


# --- Redis ---------------------------------------------------------------------------------------

_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aredis.Redis] = weakref.WeakKeyDictionary()


def _redis() -> aredis.Redis:
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        client = _clients[loop] = aredis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=2)
    return client


def _channel() -> str:
    db = aredis.connection.parse_url(settings.REDIS_URL).get("db", 0)
    return f"{CHANNEL_PREFIX}{db}"


class _Subscriber:
    """One Redis subscription per event loop, waking that loop's watchers."""

    def __init__(self):
        self.loop = asyncio.get_running_loop()
        self.subscribed = asyncio.Event()
        # Set by the first outcome, subscribed or failed: while Redis is away watchers don't wait
        # for the subscription, only for their own deadline.
        self.settled = asyncio.Event()
        self.task = self.loop.create_task(self._run())

    async def ready(self) -> None:
        if self.settled.is_set():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SUBSCRIBE_WAIT_SECONDS):
                await self.settled.wait()

    async def _run(self) -> None:
        failures = 0
        while True:
            # No socket timeout: an idle subscription reads nothing for hours, and that is fine;
            # keepalive notices a peer that vanished.
            client = aredis.from_url(
                settings.REDIS_URL,
                socket_timeout=None,
                socket_connect_timeout=2,
                socket_keepalive=True,
                client_name=SUBSCRIBER_NAME,
            )
            pubsub = client.pubsub()
            try:
                await pubsub.subscribe(_channel())
                async for message in pubsub.listen():
                    if message["type"] == "subscribe":
                        self.subscribed.set()
                        self.settled.set()
                        failures = 0
                        self._wake_all()  # anything published while we were away is re-read
                    elif message["type"] == "message":
                        self._deliver(message["data"])
            except asyncio.CancelledError:
                raise
            except (redis.RedisError, OSError) as exc:
                self.subscribed.clear()
                self.settled.set()
                if failures == 0:
                    logger.warning("Wake-ups lost their Redis subscription, resubscribing: %s", exc)
                await asyncio.sleep(RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)])
                failures += 1
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                    await client.aclose()

    def _deliver(self, data: bytes) -> None:
        origin, *topics = data.decode().split(" ")
        if origin == _ORIGIN:
            return
        for topic in topics:
            for watch in _watches_of(topic, self.loop):
                watch.wake()

    def _wake_all(self) -> None:
        with _lock:
            watches = {w for group in _watches.values() for w in group if w.loop is self.loop}
        for watch in watches:
            watch.wake()


_subscribers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Subscriber] = weakref.WeakKeyDictionary()


def _subscriber() -> _Subscriber:
    loop = asyncio.get_running_loop()
    subscriber = _subscribers.get(loop)
    if subscriber is None or subscriber.task.done():  # none yet, or stopped with its loop's tasks
        subscriber = _subscribers[loop] = _Subscriber()
    return subscriber
