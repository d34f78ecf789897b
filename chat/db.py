"""Running the chat service's database work from async code.

Django's `sync_to_async` gives each request its own thread (and so its own database connection,
held until the response ends). A chat turn streams for seconds, so instead every database call
of the service runs on small fixed pools of threads, each thread keeping one connection: threads
and connections stay bounded (CHAT_DB_THREADS + 3) however many streams are open, and none is
held while streaming.
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

# Separate pools, so that one kind of work can't queue behind another: the chat turns' database
# steps; API-key lookups (a flood of wrong keys waits on its own threads, not ahead of turns);
# the health check (it must answer while a thousand turns queue for the database).
POOLS = ("chat", "auth", "health")
_executors: dict[str, ThreadPoolExecutor] = {}
_executor_lock = threading.Lock()


def _pool_size(pool: str) -> int:
    return settings.CHAT_DB_THREADS if pool == "chat" else 1 if pool == "health" else 2


def _get_executor(pool: str) -> ThreadPoolExecutor:
    with _executor_lock:
        executor = _executors.get(pool)
        if executor is None:
            executor = _executors[pool] = ThreadPoolExecutor(
                max_workers=_pool_size(pool), thread_name_prefix=f"{pool}-db"
            )
        return executor


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


def db_async(func: Callable[P, R] | None = None, *, pool: str = "chat"):
    """Wrap a short sync database function to be awaited from async code, on the threads of `pool`."""
    if func is None:
        return functools.partial(db_async, pool=pool)

    @functools.wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        call = sync_to_async(_run_guarded, thread_sensitive=False, executor=_get_executor(pool))
        return await call(func, *args, **kwargs)

    return wrapper


def close_db_threads() -> None:
    """Close the pools' connections and stop their threads (tests, shutdown). New pools start on demand."""
    with _executor_lock:
        executors = dict(_executors)
        _executors.clear()
    for pool, executor in executors.items():
        workers = _pool_size(pool)
        barrier = threading.Barrier(workers)

        def close_in_this_thread(barrier=barrier) -> None:
            # The barrier makes each worker thread take exactly one of these calls.
            try:
                barrier.wait(timeout=5)
            except threading.BrokenBarrierError:
                pass
            connections.close_all()

        for _ in range(workers):
            executor.submit(close_in_this_thread)
        executor.shutdown(wait=True)
