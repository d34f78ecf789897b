"""Stopping a reply that streams in another worker process.

Each worker process listens on one channel-layer channel (Redis when REDIS_URL is set). A turn
records that channel name on its Reply; a cancel request handled by any worker sends a message
there, and the worker that owns the stream stops it. One listener per process, not per stream.
"""

import asyncio
import logging
import weakref

from channels.layers import get_channel_layer

logger = logging.getLogger(__name__)

# One listening channel per event loop (a worker has one; tests create several).
_channels: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, str]" = weakref.WeakKeyDictionary()
_listeners: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task]" = weakref.WeakKeyDictionary()


async def aworker_channel() -> str:
    """This process's cancel channel, starting its listener on first use ("" without a layer)."""
    loop = asyncio.get_running_loop()
    name = _channels.get(loop)
    if name is not None:
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
    _listeners[loop] = loop.create_task(_listen(layer, name))
    return name


async def _listen(layer, name: str) -> None:
    from chat.turn.control import running_turns

    while True:
        try:
            message = await layer.receive(name)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Redis away for a moment: keep listening rather than losing cancels for good.
            logger.warning("Cancel listener could not read from the channel layer; retrying", exc_info=True)
            await asyncio.sleep(1)
            continue
        control = running_turns.get(message.get("chat_id", ""))
        if control is not None:
            control.stop("cancelled")


async def asend_cancel(*, worker_channel: str, chat_id: str) -> None:
    layer = get_channel_layer()
    if layer is None or not worker_channel:
        return
    await layer.send(worker_channel, {"type": "chat.cancel", "chat_id": chat_id})
