"""`cozeproject_turn_start` takes the session's row lock with NOWAIT: a session whose row another
transaction holds (a stuck transaction, a staff member's open psql session) answers `session_busy`
at once instead of holding one of the worker's few connections while it waits, so the worker's
other sessions are never delayed behind it. A lock that is free is taken as before; every other
wait of the function is bounded by the connection's lock_timeout (CHAT_DB_LOCK_TIMEOUT).

The function is 0011's with NOWAIT on its two row locks; same arguments. `chat.turn.store_orm`
asks for the same lock (`nowait=True`).
"""

import importlib

from django.db import migrations

_previous = importlib.import_module("sessions_admin.migrations.0011_turn_start_function")

LOCK = "WHERE owner_key = p_owner_key AND session_id = p_session_id FOR UPDATE;"
assert _previous.TURN_START.count(LOCK) == 2
TURN_START = _previous.TURN_START.replace(LOCK, LOCK.replace("FOR UPDATE;", "FOR UPDATE NOWAIT;"))


def create_function(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(TURN_START, params=None)  # no placeholders: the body has % signs


class Migration(migrations.Migration):
    dependencies = [
        ("sessions_admin", "0019_turn_finish_answer_offsets"),
    ]

    operations = [migrations.RunPython(create_function, _previous.create_function)]
