"""The gateway's ASGI application plus a query counter, for measuring database work per turn.

Every SQL statement Django executes, on any thread, increments a counter (a connection execute
wrapper installed as each connection opens), and so does every statement the turn sends from the
event loop on its own async connections (`chat.turn.store`'s `apg_fetchone`); `GET /_bench/queries`
answers the counts as JSON. Used only by the benchmark's "database work per turn" step, never for
the timing runs.
"""

import json
import os
import threading

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cozeproject.settings")

from django.db.backends.signals import connection_created

from cozeproject.asgi import application as gateway

_lock = threading.Lock()
_counts = {"queries": 0, "kinds": {}}


def _kind(sql: str) -> str:
    """`UPDATE sessions_admin_chatsession`, `SAVEPOINT`, …: the verb and the table it acts on."""
    words = sql.replace('"', "").split()
    verb = words[0].upper() if words else "?"
    keyword = {"INSERT": "INTO", "SELECT": "FROM", "DELETE": "FROM", "UPDATE": "UPDATE"}.get(verb)
    if keyword in words[:-1]:
        return f"{verb} {words[words.index(keyword) + 1].split('(')[0]}"
    return verb


def _tally(sql: str) -> None:
    kind = _kind(sql)
    with _lock:
        _counts["queries"] += 1
        _counts["kinds"][kind] = _counts["kinds"].get(kind, 0) + 1


def _count(execute, sql, params, many, context):
    _tally(sql)
    return execute(sql, params, many, context)


def _count_event_loop_statements() -> None:
    from chat.turn import store  # once the ASGI application has set Django up

    uncounted = store.apg_fetchone

    async def apg_fetchone(sql: str, params: list):
        _tally(sql)
        return await uncounted(sql, params)

    store.apg_fetchone = apg_fetchone


_count_event_loop_statements()


def _install(sender, connection, **kwargs):
    if _count not in connection.execute_wrappers:
        connection.execute_wrappers.append(_count)


connection_created.connect(_install)


async def application(scope, receive, send):
    if scope["type"] == "http" and scope["path"] == "/_bench/queries":
        body = json.dumps(_counts).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})
        return
    await gateway(scope, receive, send)
