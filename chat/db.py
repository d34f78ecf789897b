"""Running the chat service's database work from async code.

Django's `sync_to_async` gives each request its own thread (and so its own database connection,
held until the response ends). A chat turn streams for seconds, so instead every database call
of the service runs on small fixed pools of threads, each thread keeping one connection: threads
and connections stay bounded (CHAT_DB_THREADS + 3) however many streams are open, and none is
held while streaming.
"""

import asyncio
import functools
import logging
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

import psycopg
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import InterfaceError, OperationalError, connections
from psycopg_pool import AsyncConnectionPool, PoolTimeout

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
    """Close the pools' connections and stop their threads (tests, shutdown). New pools start on demand.

    The event loops' async pools are replaced on their next use."""
    global _pool_generation
    _pool_generation += 1
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


# --- PostgreSQL statements on the event loop ---------------------------------------------------
#
# The two statements on the way to a turn's first byte (the session's route, the start of the
# turn as one function call) are single statements, so on PostgreSQL they run straight from the
# event loop on psycopg's async pool: no thread hop and no ORM on the critical path. One small
# pool per event loop (a worker has one), its connections bounded by CHAT_DB_THREADS.

_async_pools: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[int, AsyncConnectionPool]]" = (
    weakref.WeakKeyDictionary()
)
# Bumped by close_db_threads: every loop's pool is then replaced on its next use (new settings).
_pool_generation = 0
# How long a statement waits for a connection of the async pool before the turn is refused.
ASYNC_POOL_WAIT_SECONDS = 5.0


def on_postgresql() -> bool:
    return connections["default"].vendor == "postgresql"


def _conninfo() -> str:
    params = connections["default"].get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    params.pop("server_side_binding", None)
    params.pop("prepare_threshold", None)
    params.setdefault("connect_timeout", 3)
    return psycopg.conninfo.make_conninfo(**{key: value for key, value in params.items() if value is not None})


async def _apool() -> AsyncConnectionPool:
    loop = asyncio.get_running_loop()
    generation, pool = _async_pools.get(loop, (None, None))
    if pool is not None and generation != _pool_generation:
        await _aclose_pool()
        pool = None
    if pool is None:
        pool = AsyncConnectionPool(
            _conninfo(),
            min_size=1,
            max_size=settings.CHAT_DB_THREADS,
            kwargs={"autocommit": True},
            open=False,
            name="chat-async",
        )
        _async_pools[loop] = (_pool_generation, pool)
        await pool.open()
    return pool


async def apg_fetchone(sql: str, params: list) -> tuple | None:
    """Run one statement (its own transaction) on PostgreSQL from the event loop; its first row.

    Raises ChatError("service_unavailable") when the database can't be reached, after one retry
    on a fresh connection (as `_run_guarded` does for the threads).
    """
    for attempt in (1, 2):
        try:
            pool = await _apool()
            async with pool.connection(timeout=ASYNC_POOL_WAIT_SECONDS) as conn:
                cursor = await conn.execute(sql, params)
                return await cursor.fetchone()
        except PoolTimeout as exc:  # no connection to be had: the database is down or overloaded
            logger.error("Database unavailable: %s", exc)
            raise ChatError("service_unavailable", "The database is unavailable; retry shortly.") from exc
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            await _aclose_pool()
            if attempt == 2:
                logger.error("Database unavailable: %s", exc)
                raise ChatError("service_unavailable", "The database is unavailable; retry shortly.") from exc
    raise AssertionError("unreachable")


async def _aclose_pool() -> None:
    _, pool = _async_pools.pop(asyncio.get_running_loop(), (None, None))
    if pool is not None:
        await pool.close()
