"""Replay buffers of resumable replies (docs/api.md §9): one interface, two backends.

A resumable turn records every event it yields, with its number in the reply (1 for `session`,
then one more per event, `done` last; its `id` on the wire is `chat.domain.event_ids.event_id` of
the reply and that number), so a client that comes back can be sent exactly the events after the
last one it saw, then follow the rest live. Events are rendered by the same functions as the
original stream (`Entry.sse`), so replayed bytes equal the original bytes.

* **Memory** (no REDIS_URL): the event objects themselves, in this process. Per reply at most
  CHAT_RESUME_MAX_EVENTS events and CHAT_RESUME_MAX_CHARS characters of content (the oldest are
  dropped beyond that), at most CHAT_RESUME_MAX_REPLIES replies per process (the oldest ended
  reply is dropped first, then the oldest running one); an ended reply is dropped
  CHAT_RESUME_WINDOW seconds after its end.
* **Redis Streams** (REDIS_URL set): one stream per reply, `XADD … MAXLEN ~ CHAT_RESUME_MAX_EVENTS`
  with the event id as the entry id (`N-0`), written by one task per event loop that sends the
  pending events of all replies together (a pipeline per round trip), so the turn never waits
  for Redis. The key expires CHAT_RESUME_WINDOW seconds after the reply ends (while running,
  CHAT_SESSION_LOCK_TTL + the window, renewed as it runs, so a crashed worker's stream goes too).
  Any worker can follow it with `XREAD BLOCK`.

Whatever is missing (never recorded, evicted, expired, trimmed, Redis away) makes `follow` answer
None, and the caller falls back to the stored reply; a buffer never answers a resume wrongly.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from itertools import islice

import redis
import redis.asyncio as aredis
from django.conf import settings

from chat.domain import event_ids
from chat.domain.events import PING, ChatEvent, Ping
from chat.domain.sse import encode_json, sse_done, sse_event_json
from chat.runtime import wakeups

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Entry:
    """One recorded event: its id, its type (`done` for the end) and the JSON of its data line."""

    id: int
    type: str
    json: str

    def sse(self) -> bytes:
        if self.type == "done":
            return sse_done(self.id)
        return sse_event_json(self.id, self.type, self.json)

    def frame(self) -> dict:
        """The WebSocket frame: the event object with its id."""
        if self.type == "done":
            return {"type": "done", "id": self.id}
        return {**json.loads(self.json), "id": self.id}


def _content_chars(event: ChatEvent) -> int:
    return len(getattr(event, "content", "") or "")


# --- memory -------------------------------------------------------------------------------------


class _MemoryBuffer:
    __slots__ = ("chars", "ended_at", "events", "evicted", "first_id", "max_chars", "max_events", "waiters")

    def __init__(self):
        self.events: deque[tuple[int, ChatEvent | None]] = deque()  # None is `done`
        self.first_id = 1
        self.chars = 0
        self.ended_at: float | None = None
        self.evicted = False
        self.waiters: list[asyncio.Future] = []
        self.max_events = settings.CHAT_RESUME_MAX_EVENTS
        self.max_chars = settings.CHAT_RESUME_MAX_CHARS

    def append(self, event_id: int, event: ChatEvent | None) -> None:
        events = self.events
        events.append((event_id, event))
        if event is not None:
            self.chars += _content_chars(event)
        while (len(events) > self.max_events or self.chars > self.max_chars) and len(events) > 1:
            dropped_id, dropped = events.popleft()
            self.first_id = dropped_id + 1
            if dropped is not None:
                self.chars -= _content_chars(dropped)
        if self.waiters:
            self.wake()

    def wake(self) -> None:
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            loop = waiter.get_loop()
            if loop.is_closed():
                continue
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if loop is running:
                _resolve(waiter)
            else:  # a follower on another thread's event loop (several servers in one process)
                loop.call_soon_threadsafe(_resolve, waiter)


def _resolve(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _MemoryWriter:
    __slots__ = ("buffer",)

    def __init__(self, buffer: _MemoryBuffer):
        self.buffer = buffer

    def append(self, event_id: int, event: ChatEvent) -> None:
        self.buffer.append(event_id, event)

    def end(self, done_id: int) -> None:
        self.buffer.ended_at = time.monotonic()
        self.buffer.append(done_id, None)


class MemoryReplay:
    """Replay buffers in this process's memory (one worker, no Redis)."""

    def __init__(self):
        self._buffers: OrderedDict[int, _MemoryBuffer] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buffers)

    def start(self, reply_pk: int) -> _MemoryWriter:
        self._drop_expired()
        while len(self._buffers) >= settings.CHAT_RESUME_MAX_REPLIES:
            victim = next((pk for pk, buffer in self._buffers.items() if buffer.ended_at is not None), None)
            if victim is None:
                victim = next(iter(self._buffers))
            self._evict(victim)
        buffer = _MemoryBuffer()
        self._buffers[reply_pk] = buffer
        wakeups.publish(wakeups.reply_topic(reply_pk))  # a resume waiting for it can follow it now
        return _MemoryWriter(buffer)

    def _evict(self, reply_pk: int) -> None:
        buffer = self._buffers.pop(reply_pk)
        buffer.evicted = True
        buffer.wake()

    def _drop_expired(self) -> None:
        deadline = time.monotonic() - settings.CHAT_RESUME_WINDOW
        for pk in [pk for pk, b in self._buffers.items() if b.ended_at is not None and b.ended_at < deadline]:
            self._evict(pk)

    def stats(self) -> dict:
        return {
            "replies": len(self._buffers),
            "events": sum(len(b.events) for b in self._buffers.values()),
            "chars": sum(b.chars for b in self._buffers.values()),
        }

    async def follow(self, reply_pk: int, after_id: int, heartbeat: float) -> AsyncIterator[Entry | Ping] | None:
        self._drop_expired()
        buffer = self._buffers.get(reply_pk)
        if buffer is None or after_id + 1 < buffer.first_id:
            return None
        return self._follow(reply_pk, buffer, after_id, heartbeat)

    async def _follow(
        self, reply_pk: int, buffer: _MemoryBuffer, after_id: int, heartbeat: float
    ) -> AsyncIterator[Entry | Ping]:
        next_id = after_id + 1
        while True:
            if buffer.evicted or next_id < buffer.first_id:
                return  # dropped under a slow follower: it ends without `done` and resumes again
            for event_id, event in list(islice(buffer.events, next_id - buffer.first_id, None)):
                if event is None:
                    yield Entry(event_ids.event_id(reply_pk, event_id), "done", "[DONE]")
                    return
                yield Entry(event_ids.event_id(reply_pk, event_id), event.type, encode_json(event.as_dict()))
                next_id = event_id + 1
            if buffer.ended_at is not None:
                return  # the client had everything, `done` included
            waiter = asyncio.get_running_loop().create_future()
            buffer.waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, heartbeat)
            except TimeoutError:
                yield PING


# --- Redis Streams ------------------------------------------------------------------------------

KEY_PREFIX = "cozeproject:replay:"
# A blocking XREAD waits at most this long, so a follower notices a stream that expired.
MAX_BLOCK_SECONDS = 10.0

_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aredis.Redis] = weakref.WeakKeyDictionary()


def _redis() -> aredis.Redis:
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        client = aredis.from_url(settings.REDIS_URL, socket_timeout=MAX_BLOCK_SECONDS + 5, socket_connect_timeout=2)
        _clients[loop] = client
    return client


def _entry_id(raw: bytes) -> int:
    return int(raw.split(b"-", 1)[0])


class _RedisWriter:
    """One reply's stream. Its events go to this event loop's `_RedisFlusher`, which writes the
    events of every reply in flight together, so the turn never waits for Redis."""

    __slots__ = ("broken", "expires_at", "flusher", "key", "reply_pk")

    def __init__(self, reply_pk: int):
        self.reply_pk = reply_pk
        self.key = f"{KEY_PREFIX}{reply_pk}"
        self.flusher = _flusher()
        self.broken = False
        self.expires_at = 0.0  # monotonic time until which the key's running TTL is known to hold

    def append(self, event_id: int, event: ChatEvent) -> None:
        if not self.broken:
            self.flusher.add(self, event_id, event.type, encode_json(event.as_dict()), ended=False)

    def end(self, done_id: int) -> None:
        if not self.broken:
            self.flusher.add(self, done_id, "done", "[DONE]", ended=True)


class _RedisFlusher:
    """Writes the pending events of all of this loop's replies in one pipeline per round trip:
    while one pipeline is in flight the next events queue up, so under load each event costs a
    share of a round trip rather than a whole one."""

    def __init__(self):
        self.pending: list[tuple[_RedisWriter, int, str, str, bool]] = []
        self.task: asyncio.Task | None = None

    def add(self, writer: _RedisWriter, event_id: int, kind: str, data: str, *, ended: bool) -> None:
        self.pending.append((writer, event_id, kind, data, ended))
        if self.task is None:
            from chat.runtime.tasks import in_background  # kept alive until written, whoever awaits it

            self.task = in_background(self._flush())

    async def _flush(self) -> None:
        try:
            while self.pending:
                batch, self.pending = self.pending, []
                await self._write(batch)
        finally:
            self.task = None

    async def _write(self, batch: list[tuple[_RedisWriter, int, str, str, bool]]) -> None:
        window = int(settings.CHAT_RESUME_WINDOW)
        running_ttl = int(settings.CHAT_SESSION_LOCK_TTL) + window
        max_events = settings.CHAT_RESUME_MAX_EVENTS
        now = time.monotonic()
        commands: list[tuple] = []
        writers: dict[_RedisWriter, None] = {}
        opened: list[str] = []  # the topics of replies whose stream this batch creates
        for writer, event_id, kind, data, ended in batch:
            if writer.broken:
                continue
            writers[writer] = None
            if event_id == 1:
                # A stream left under this key by a database that was reset is not this reply's.
                commands.append(("DEL", writer.key))
                opened.append(wakeups.reply_topic(writer.reply_pk))
            commands.append(("XADD", writer.key, "MAXLEN", "~", max_events, f"{event_id}-0", "t", kind, "d", data))
            if ended:
                commands.append(("EXPIRE", writer.key, window))
            elif writer.expires_at < now + running_ttl / 2:
                # A running reply's key outlives its writer by the running TTL (a crashed worker's
                # streams go too); renewed when half of it has passed, not on every event.
                commands.append(("EXPIRE", writer.key, running_ttl))
                writer.expires_at = now + running_ttl
        if not commands:
            return
        client = _redis()
        try:
            if len(commands) == 1:  # the usual case at low load: a pipeline would only add work
                await client.execute_command(*commands[0])
            else:
                pipe = client.pipeline(transaction=False)
                for command in commands:
                    pipe.execute_command(*command)
                await pipe.execute()
            if opened:  # a resume waiting in any worker can follow these now
                wakeups.publish(*opened)
        except (redis.RedisError, OSError) as exc:
            # A stream with a hole would replay wrongly: drop them, resumes get the stored replies.
            logger.warning("Replay buffers could not be written, dropping %d: %s", len(writers), exc)
            for writer in writers:
                writer.broken = True
            try:
                await client.delete(*(writer.key for writer in writers))
            except (redis.RedisError, OSError):
                pass


_flushers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _RedisFlusher] = weakref.WeakKeyDictionary()


def _flusher() -> _RedisFlusher:
    loop = asyncio.get_running_loop()
    flusher = _flushers.get(loop)
    if flusher is None:
        flusher = _flushers[loop] = _RedisFlusher()
    return flusher


class RedisReplay:
    """Replay buffers in Redis Streams, shared by every worker process."""

    def start(self, reply_pk: int) -> _RedisWriter:
        return _RedisWriter(reply_pk)

    async def follow(self, reply_pk: int, after_id: int, heartbeat: float) -> AsyncIterator[Entry | Ping] | None:
        key = f"{KEY_PREFIX}{reply_pk}"
        try:
            pipe = _redis().pipeline(transaction=False)
            pipe.xrange(key, count=1)
            pipe.xrevrange(key, count=1)
            first, last = await pipe.execute()
        except (redis.RedisError, OSError) as exc:
            logger.warning("Replay buffer %s could not be read: %s", key, exc)
            return None
        if not first or after_id + 1 < _entry_id(first[0][0]):
            return None
        last_id, last_fields = _entry_id(last[0][0]), last[0][1]
        ended_before = last_fields[b"t"] == b"done" and last_id <= after_id
        return self._follow(reply_pk, after_id, heartbeat, ended_before)

    async def _follow(
        self, reply_pk: int, after_id: int, heartbeat: float, ended_before: bool
    ) -> AsyncIterator[Entry | Ping]:
        key = f"{KEY_PREFIX}{reply_pk}"
        if ended_before:
            return
        client = _redis()
        next_id = after_id + 1
        block = min(heartbeat, MAX_BLOCK_SECONDS)
        quiet_since = time.monotonic()
        while True:
            try:
                answer = await client.xread({key: f"{next_id - 1}-0"}, count=1000, block=max(1, int(block * 1000)))
                if not answer and not await client.exists(key):
                    return
            except (redis.RedisError, OSError) as exc:
                logger.warning("Replay buffer %s could not be followed: %s", key, exc)
                return  # ends without `done`: the client resumes again
            if not answer:
                if time.monotonic() - quiet_since >= heartbeat * 0.99:
                    quiet_since = time.monotonic()
                    yield PING
                continue
            for raw_id, fields in answer[0][1]:
                event_id = _entry_id(raw_id)
                if event_id != next_id:
                    return  # trimmed under a slow follower: it resumes again
                kind = fields[b"t"].decode()
                yield Entry(event_ids.event_id(reply_pk, event_id), kind, fields[b"d"].decode())
                if kind == "done":
                    return
                next_id += 1
            quiet_since = time.monotonic()


# --- the interface ------------------------------------------------------------------------------

memory = MemoryReplay()
_redis_replay = RedisReplay()


def backend() -> MemoryReplay | RedisReplay:
    """Redis Streams when REDIS_URL is set, else this process's memory."""
    return _redis_replay if settings.REDIS_URL else memory


class Recording:
    """What a resumable turn does with its events: numbers them as its SSE stream does and writes
    them to the buffer. Opened at the `session` event (the reply's row exists by then)."""

    __slots__ = ("next_id", "writer")

    def __init__(self):
        self.writer: _MemoryWriter | _RedisWriter | None = None
        self.next_id = 1

    def add(self, event: ChatEvent, reply_pk: int | None) -> None:
        if self.writer is None:
            if reply_pk is None:
                return
            self.writer = backend().start(reply_pk)
        self.writer.append(self.next_id, event)
        self.next_id += 1

    def end(self, last: ChatEvent | None = None) -> None:
        """The reply ended; `last` is a final event its stream added (a cancel's `error`)."""
        if self.writer is None:
            return
        if last is not None:
            self.writer.append(self.next_id, last)
            self.next_id += 1
        self.writer.end(self.next_id)


async def afollow(reply_pk: int, after_id: int, heartbeat: float) -> AsyncIterator[Entry | Ping] | None:
    """The reply's events after its event number `after_id` (0: all), then live until `done`; None
    when they are not all kept."""
    return await backend().follow(reply_pk, after_id, heartbeat)
