"""Stopping a reply that streams in another worker process.

Each worker process listens on one channel-layer channel (Redis when REDIS_URL is set). A turn
records that channel name on its Reply; a cancel request handled by any worker sends a message
there, and the worker that owns the stream stops it. One listener per process, not per stream.

With Redis a cancel is an entry in a sorted set that waits (up to the layer's expiry, 60 s) until
the listener takes it: one sent while the listener reconnects is delivered after, not lost. The
layer's connections get a socket timeout longer than its 5 s blocking pop (settings.py), so an
idle listener reads quietly instead of timing out every few seconds.
"""

import asyncio
import logging
import weakref

from channels.layers import get_channel_layer

from chat.runtime import wakeups

logger = logging.getLogger(__name__)

# One listening channel per event loop (a worker has one; tests create several).
_channels: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, str]" = weakref.WeakKeyDictionary()
_listeners: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task]" = weakref.WeakKeyDictionary()


async def aworker_channel() -> str:
    """This process's cancel channel, starting its listener on first use ("" without a layer)."""
    loop = asyncio.get_running_loop()
    name = _channels.get(loop)
    if name is not None:
        if _listeners[loop].done():  # stopped with its loop's tasks: listen again on the same channel
            _listeners[loop] = loop.create_task(_listen(get_channel_layer(), name))
        return name
    layer = get_channel_layer()
    if layer is None:
        return ""
    # The default prefix on purpose: channels-redis serves all of a process's channels from one
    # receive loop keyed by prefix, and a second prefix would wait behind the first forever.
    name = await layer.new_channel()
    if loop in _channels:  # another turn won the race while we awaited
        return _channels[loop]
    _channels[loop] = name
    wakeups.note_local_channel(name)
    _listeners[loop] = loop.create_task(_listen(layer, name))
    return name


async def _listen(layer, name: str) -> None:
    from chat.turn.control import running_turns

    failures = 0
    while True:
        try:
            message = await layer.receive(name)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever the layer raises, the listener must live on
            # Redis away for a moment: keep listening (the cancels sent meanwhile wait in Redis),
            # saying so once per outage rather than once per retry.
            if failures == 0:
                logger.warning("Cancel listener could not read from the channel layer; retrying: %r", exc)
            failures += 1
            await asyncio.sleep(min(0.1 * 2**failures, 2.0))  # a retry's backoff
            continue
        if failures:
            logger.warning("Cancel listener reads from the channel layer again")
            failures = 0
        control = running_turns.get(message.get("chat_id", ""))
        if control is not None:
            control.stop("cancelled")


async def asend_cancel(*, worker_channel: str, chat_id: str) -> None:
    layer = get_channel_layer()
    if layer is None or not worker_channel:
        return
    await layer.send(worker_channel, {"type": "chat.cancel", "chat_id": chat_id})
