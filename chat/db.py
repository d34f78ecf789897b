"""Running the chat service's database work from async code.

Django's `sync_to_async` gives each request its own thread (and so its own database connection,
held until the response ends). A chat turn streams for seconds, so instead every database call
of the service runs on a small fixed pool of threads, each keeping one connection: threads and
connections stay bounded however many streams are open, and none is held while streaming.
"""

import functools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import InterfaceError, OperationalError, connections

from chat.errors import ChatError

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _get_executor() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=settings.CHAT_DB_THREADS, thread_name_prefix="chat-db")
        return _executor


def _run_guarded(func: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    for attempt in (1, 2):
        try:
            return func(*args, **kwargs)
        except (OperationalError, InterfaceError) as exc:
            # A dropped or refused connection: throw it away so the next try reconnects. One
            # retry covers a pooled connection the database closed meanwhile (restart, failover);
            # the functions run in a transaction, so nothing was half-written.
            connections.close_all()
            if attempt == 2:
                logger.error("Database unavailable: %s", exc)
                raise ChatError("service_unavailable", "The database is unavailable; retry shortly.") from exc
    raise AssertionError("unreachable")


def db_async(func: Callable[P, R]) -> Callable[P, "R"]:
    """Wrap a short sync database function to be awaited from the chat service."""

    @functools.wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        call = sync_to_async(_run_guarded, thread_sensitive=False, executor=_get_executor())
        return await call(func, *args, **kwargs)

    return wrapper


def close_db_threads() -> None:
    """Close the pool's connections and stop its threads (tests, shutdown). A new pool starts on demand."""
    global _executor
    with _executor_lock:
        executor, _executor = _executor, None
    if executor is None:
        return
    workers = settings.CHAT_DB_THREADS
    barrier = threading.Barrier(workers)

    def close_in_this_thread() -> None:
        # The barrier makes each worker thread take exactly one of these calls.
        try:
            barrier.wait(timeout=5)
        except threading.BrokenBarrierError:
            pass
        connections.close_all()

    for _ in range(workers):
        executor.submit(close_in_this_thread)
    executor.shutdown(wait=True)
