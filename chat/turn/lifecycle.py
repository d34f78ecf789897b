"""A worker's start and end.

Start: the worker's heartbeat begins (`chat.turn.leases`: it renews the leases of the replies this
worker runs and, in every round, ends crashed workers' replies as interrupted and fails replies
whose wait for local tool outputs has passed; a first round runs at once), the deadlines of the
replies still waiting for tool outputs are armed in this worker too, the sender of the ratings'
outbox starts (`sessions_admin.feedback_outbox`), and the SIGTERM handler is installed.

End: on SIGTERM, replies in flight end with a retryable `interrupted` error and are stored as
interrupted, before the server's own shutdown runs. ASGI servers don't tell the application about
SIGTERM before they cancel its tasks, so the handler chains to the server's own: it is installed
at start-up, once the server's handler is in place — at the ASGI lifespan startup event where the
server sends one (uvicorn), else on the worker's first request of any kind (daphne has no lifespan
events; its first request is usually a health check).
"""

import asyncio
import logging
import os
import signal
import threading

logger = logging.getLogger(__name__)

SHUTDOWN_GRACE_SECONDS = 5.0

_started = False
_background: set[asyncio.Task] = set()


def process_started() -> None:
    """Once per process, on the event loop: recover crashed replies, install the SIGTERM handler.
    On every call: make sure this loop's sender of the ratings' outbox runs."""
    global _started
    _start_feedback_sender()
    if _started:
        return
    _started = True
    task = asyncio.get_running_loop().create_task(_recover_stuck_replies())
    _background.add(task)
    task.add_done_callback(_background.discard)
    if threading.current_thread() is threading.main_thread():
        _install_sigterm_handler()


async def _recover_stuck_replies() -> None:
    from chat.turn import leases, tools

    leases.ensure_keeper()
    await leases.asweep()  # the first round at once: replies a crash (maybe this worker's) left

    try:
        await tools.arearm_expiries()
    except Exception:  # best effort: crash recovery fails them once their wait has passed
        logger.warning("Could not arm the deadlines of replies waiting for tool outputs", exc_info=True)


def _start_feedback_sender() -> None:
    # Ratings made before a restart, and retries, are sent by whichever worker runs next.
    from sessions_admin import feedback_outbox

    feedback_outbox.start()


def _install_sigterm_handler() -> None:
    loop = asyncio.get_running_loop()
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame) -> None:
        loop.call_soon_threadsafe(lambda: loop.create_task(_shutdown(previous, signum, frame)))

    signal.signal(signal.SIGTERM, on_sigterm)


async def ainterrupt_all_turns(grace_seconds: float = SHUTDOWN_GRACE_SECONDS) -> int:
    """Stop every turn of this process as `interrupted` and wait (bounded) until they are stored."""
    from chat.turn.control import active_turns

    controls = list(active_turns)
    for control in controls:
        control.stop("interrupted")
    tasks = [control.task for control in controls if control.task is not None]
    if tasks:
        await asyncio.wait(tasks, timeout=grace_seconds)
        # Let the transports flush the final error event and `done` to their clients.
        await asyncio.sleep(0.2)
    return len(controls)


class ProcessLifecycle:
    """ASGI wrapper that runs `process_started` at start-up and answers the lifespan protocol."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    process_started()
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        process_started()
        return await self.app(scope, receive, send)


async def _shutdown(previous, signum, frame) -> None:
    count = await ainterrupt_all_turns()
    logger.warning("SIGTERM: interrupted %d repl%s in flight; shutting down", count, "y" if count == 1 else "ies")
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
