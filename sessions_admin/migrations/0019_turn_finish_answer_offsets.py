"""`cozeproject_turn_finish` stores the reply's `answer_offsets` too (its 22nd argument): the
characters each event of the reply added to the answer, for every reply (it was noted only for
resumable ones, after the finish). With them any event id a client was given, by the live stream
or by a replay of the stored answer, resumes exactly after what it delivered once the replay
window has passed (docs/api.md §9, `chat.resume.resuming`).

The function is 0013's with that one argument and one assignment added; `chat.turn.store_orm`
stores the same column, and tests/chat/test_turn_store_parity.py holds both to it.
"""

import importlib

from django.db import migrations

_previous = importlib.import_module("sessions_admin.migrations.0013_turn_finish_function")

OLD_SIGNATURE = """    p_time_zone text
) RETURNS TABLE (stored boolean)"""
NEW_SIGNATURE = """    p_time_zone text,
    p_answer_offsets text
) RETURNS TABLE (stored boolean)"""
OLD_SET = "time_to_first_token_ms = p_ttft_ms, duration_ms = p_duration_ms, finished_at = now()"
NEW_SET = (
    "time_to_first_token_ms = p_ttft_ms, duration_ms = p_duration_ms, finished_at = now(),\n"
    "           answer_offsets = p_answer_offsets"
)
assert OLD_SIGNATURE in _previous.TURN_FINISH and OLD_SET in _previous.TURN_FINISH
TURN_FINISH = _previous.TURN_FINISH.replace(OLD_SIGNATURE, NEW_SIGNATURE).replace(OLD_SET, NEW_SET)

OLD_ARGUMENTS = (
    "bigint, bigint, bigint, text, text, text, text, text, text, bigint, bigint, bigint, integer, integer, "
    "integer, text, text, text[], text, text, text"
)


def create_function(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP FUNCTION IF EXISTS cozeproject_turn_finish({OLD_ARGUMENTS})")
        schema_editor.execute(TURN_FINISH, params=None)  # no placeholders: the body has % signs


def restore_function(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP FUNCTION IF EXISTS cozeproject_turn_finish({OLD_ARGUMENTS}, text)")
        _previous.create_function(apps, schema_editor)


class Migration(migrations.Migration):
    dependencies = [
        ("sessions_admin", "0018_pruned_usage_day"),
    ]

    operations = [migrations.RunPython(create_function, restore_function)]
