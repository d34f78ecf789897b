"""Running the chat service's database work from async code.

Django's `sync_to_async` gives each request its own thread (and so its own database connection,
held until the response ends). A chat turn streams for seconds, so instead every database call
of the service runs on small fixed pools of threads, each thread keeping one connection: threads
and connections stay bounded (CHAT_DB_THREADS + 3) however many streams are open, and none is
held while streaming.
"""

import asyncio
import contextlib
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
from django.db import InterfaceError, OperationalError, connection, connections, transaction

from chat.domain.errors import ChatError

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


# --- bounded lock waits ---------------------------------------------------------------------------
#
# No statement of the chat waits on a row lock for longer than CHAT_DB_LOCK_TIMEOUT (PostgreSQL's
# lock_timeout): a row held by a stuck transaction (a worker frozen mid-transaction, a staff
# member's open psql session) makes the statement fail at once instead of holding one of the
# worker's few connections, which would delay every other session's turns behind it. A lock wait
# that ends so means another transaction holds the session: `session_busy`.

BUSY_DETAIL = "This session is busy in another transaction; retry shortly."


def lock_timeout_ms() -> int:
    return max(1, round(settings.CHAT_DB_LOCK_TIMEOUT * 1000))


def session_busy() -> ChatError:
    return ChatError("session_busy", BUSY_DETAIL)


def is_lock_timeout(exc: BaseException) -> bool:
    """Whether `exc` (psycopg's, or Django's wrapping of it) is a lock wait that ran out."""
    return isinstance(exc, psycopg.errors.LockNotAvailable) or isinstance(
        exc.__cause__, psycopg.errors.LockNotAvailable
    )


@contextlib.contextmanager
def bounded_locks():
    """A transaction (on this thread's connection) whose lock waits end after CHAT_DB_LOCK_TIMEOUT;
    one that ends so raises ChatError `session_busy` (the transaction rolled back)."""
    try:
        with transaction.atomic():
            if connection.vendor == "postgresql":
                with connection.cursor() as cursor:
                    cursor.execute("SELECT set_config('lock_timeout', %s, true)", [f"{lock_timeout_ms()}ms"])
            yield
    except OperationalError as exc:
        if is_lock_timeout(exc):
            raise session_busy() from exc
        raise


def _run_guarded(func: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    for attempt in (1, 2):
        try:
            return func(*args, **kwargs)
        except (OperationalError, InterfaceError) as exc:
            if is_lock_timeout(exc):
                raise session_busy() from exc  # a held row, not a lost connection: no retry
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
    _finish_connections_of_ended_loops()
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
# The statements on the way to a turn's first byte (the session's route, the start of the turn as
# one function call, Coze's chat id) are single statements, so on PostgreSQL they run straight
# from the event loop on psycopg's async connections: no thread hop and no ORM on the critical
# path. Each event loop (a worker has one) keeps at most CHAT_DB_THREADS of them.


class _LoopConnections:
    """The async connections of one event loop: at most `size` at once, idle ones kept."""

    def __init__(self, size: int):
        self.generation = _pool_generation
        self.slots = asyncio.Semaphore(size)
        self.idle: list[psycopg.AsyncConnection] = []

    async def acquire(self) -> psycopg.AsyncConnection:
        await self.slots.acquire()
        try:
            if self.idle:
                return self.idle.pop()
            return await psycopg.AsyncConnection.connect(_conninfo(), autocommit=True)
        except BaseException:
            self.slots.release()
            raise

    async def release(self, conn: psycopg.AsyncConnection, *, reusable: bool) -> None:
        self.slots.release()
        if reusable and not conn.closed and self.generation == _pool_generation:
            self.idle.append(conn)
        else:
            await conn.close()

    async def drop_idle(self) -> None:
        """Close the idle connections: once one turned out dropped by the server (a restart, a
        failover, terminated backends), the others most likely were too, and each would fail a
        statement before being replaced."""
        idle, self.idle = self.idle, []
        for conn in idle:
            await conn.close()

    def finish(self) -> None:
        """Close the idle connections without a running loop (the loop that owned them has ended)."""
        for conn in self.idle:
            conn.pgconn.finish()
        self.idle.clear()


_loop_connections: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopConnections]" = (
    weakref.WeakKeyDictionary()
)
# Bumped by close_db_threads: every loop's connections are then replaced (new settings, tests).
_pool_generation = 0


def on_postgresql() -> bool:
    return connections["default"].vendor == "postgresql"


def _conninfo() -> str:
    params = connections["default"].get_connection_params()
    for psycopg_only in ("cursor_factory", "context", "server_side_binding", "prepare_threshold"):
        params.pop(psycopg_only, None)
    params.setdefault("connect_timeout", 3)
    # Every statement sent from the event loop (the turn's functions among them) waits on a row lock
    # at most CHAT_DB_LOCK_TIMEOUT (see bounded_locks).
    params["options"] = f"{params.get('options') or ''} -c lock_timeout={lock_timeout_ms()}".strip()
    return psycopg.conninfo.make_conninfo(**{key: value for key, value in params.items() if value is not None})


def _connections_of_this_loop() -> _LoopConnections:
    loop = asyncio.get_running_loop()
    pool = _loop_connections.get(loop)
    if pool is None or pool.generation != _pool_generation:
        if pool is not None:
            pool.finish()
        _finish_connections_of_ended_loops()
        pool = _loop_connections[loop] = _LoopConnections(settings.CHAT_DB_THREADS)
    return pool


def _finish_connections_of_ended_loops() -> None:
    # A loop that ended (tests start many) can't close its connections any more: do it for it.
    for loop, pool in list(_loop_connections.items()):
        if loop.is_closed():
            pool.finish()
            _loop_connections.pop(loop, None)


async def apg_fetchone(sql: str, params: list | dict) -> tuple | None:
    """Run one statement (its own transaction) on PostgreSQL from the event loop; its first row.

    Raises ChatError("session_busy") when a row it must lock stays held for CHAT_DB_LOCK_TIMEOUT,
    and ChatError("service_unavailable") when the database can't be reached, after one retry
    on a fresh connection (as `_run_guarded` does for the threads). The statements sent here are
    safe to resend: the turn's start and finish recognise their own earlier commit.
    """
    for attempt in (1, 2):
        pool = _connections_of_this_loop()
        try:
            conn = await pool.acquire()
        except psycopg.Error as exc:
            logger.error("Database unavailable: %s", exc)
            raise ChatError("service_unavailable", "The database is unavailable; retry shortly.") from exc
        try:
            cursor = await conn.execute(sql, params)
            row = await cursor.fetchone()
        except psycopg.errors.LockNotAvailable as exc:
            await pool.release(conn, reusable=True)  # the statement's own transaction rolled back
            raise session_busy() from exc
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            await pool.release(conn, reusable=False)
            await pool.drop_idle()
            if attempt == 2:
                logger.error("Database unavailable: %s", exc)
                raise ChatError("service_unavailable", "The database is unavailable; retry shortly.") from exc
            continue
        except BaseException:
            await pool.release(conn, reusable=False)  # failed or cancelled mid-statement: state unknown
            raise
        await pool.release(conn, reusable=True)
        return row
    raise AssertionError("unreachable")
