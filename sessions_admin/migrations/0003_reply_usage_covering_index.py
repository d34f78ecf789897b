from django.db import migrations

# The usage dashboard aggregates a window of replies by day, bot, owner and session. This index
# holds every column those queries read, so PostgreSQL answers them with an index-only scan of
# the window instead of reading the whole (wide) reply table. PostgreSQL only: elsewhere Django
# would ignore INCLUDE and warn about it.
CREATE_SQL = """
CREATE INDEX IF NOT EXISTS reply_usage_window ON sessions_admin_reply (started_at)
INCLUDE (bot_id, status, input_tokens, output_tokens, total_tokens, time_to_first_token_ms, owner_key, session_id)
"""


def add_index(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE_SQL)


def drop_index(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP INDEX IF EXISTS reply_usage_window")


class Migration(migrations.Migration):

    dependencies = [
        ("sessions_admin", "0002_admin_indexes"),
    ]

    operations = [
        migrations.RunPython(add_index, drop_index, elidable=False),
    ]
