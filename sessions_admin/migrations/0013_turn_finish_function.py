"""The end of a chat turn as one PostgreSQL function: one round trip instead of eight.

`chat.turn.store.turn_finish` calls it on PostgreSQL, from the event loop; other databases run the
same steps through the ORM (`_turn_finish_orm`). Both keep one contract, which the turn-store tests
check on both: the Reply's outcome, the answer and follow-ups, the conversation's and session's
counters, the lock released if still this turn's, and the reply added to the daily usage rollup,
all in one transaction; and nothing stored twice when the Reply has ended already.
"""

from django.db import migrations

# The rollup's time-to-first-token histogram columns as they are at this migration.
TTFT_BUCKETS = [f"ttft_bucket_{index:02d}" for index in range(20)]

ROLLUP_COUNTERS = [
    "replies",
    "failed",
    "cancelled",
    "interrupted",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "ttft_count",
    "ttft_sum_ms",
    *TTFT_BUCKETS,
]

ROLLUP_VALUES = [
    "1",
    "(p_status = 'failed')::int",
    "(p_status = 'cancelled')::int",
    "(p_status = 'interrupted')::int",
    "p_input_tokens",
    "p_output_tokens",
    "p_total_tokens",
    "(p_ttft_ms IS NOT NULL)::int",
    "coalesce(p_ttft_ms, 0)",
    *(f"(p_ttft_bucket IS NOT DISTINCT FROM {index})::int" for index in range(len(TTFT_BUCKETS))),
]

TURN_FINISH = r"""
CREATE OR REPLACE FUNCTION cozeproject_turn_finish(
    p_reply bigint,
    p_session bigint,
    p_conversation bigint,
    p_lock_token text,
    p_status text,
    p_chat_id text,
    p_logid text,
    p_error_code text,
    p_error_detail text,
    p_input_tokens bigint,
    p_output_tokens bigint,
    p_total_tokens bigint,
    p_ttft_ms integer,
    p_ttft_bucket integer,
    p_duration_ms integer,
    p_answer text,
    p_message_id text,
    p_follow_ups text[],
    p_coze_conversation text,
    p_transcript_hash text,
    p_time_zone text
) RETURNS TABLE (stored boolean)
LANGUAGE plpgsql AS $$
-- p_answer: NULL when no answer message is stored (nothing came and the reply did not complete).
-- p_coze_conversation: Coze's id for a conversation this turn started, else ''.
-- p_transcript_hash: the conversation's new digest, NULL to keep it.
DECLARE
    r record;
    v_answered integer := (p_answer IS NOT NULL)::integer;
BEGIN
    UPDATE sessions_admin_reply
       SET status = p_status, coze_chat_id = p_chat_id, coze_logid = p_logid,
           error_code = p_error_code, error_detail = p_error_detail,
           input_tokens = p_input_tokens, output_tokens = p_output_tokens, total_tokens = p_total_tokens,
           time_to_first_token_ms = p_ttft_ms, duration_ms = p_duration_ms, finished_at = now()
     WHERE id = p_reply AND status = 'in_progress'
    RETURNING started_at, bot_id, owner_key INTO r;
    IF NOT FOUND THEN
        -- Stored before (a retry after a lost acknowledgement): only release the lock, if still ours.
        UPDATE sessions_admin_chatsession SET lock_token = '', locked_until = NULL
         WHERE id = p_session AND lock_token = p_lock_token;
        RETURN QUERY SELECT false;
        RETURN;
    END IF;
    IF p_answer IS NOT NULL THEN
        INSERT INTO sessions_admin_message (
            conversation_id, reply_id, role, kind, content, content_type, coze_message_id, attachments, created_at
        ) VALUES (p_conversation, p_reply, 'assistant', 'answer', p_answer, 'text', p_message_id, '[]', now());
    END IF;
    INSERT INTO sessions_admin_message (
        conversation_id, reply_id, role, kind, content, content_type, coze_message_id, attachments, created_at
    )
    SELECT p_conversation, p_reply, 'assistant', 'follow_up', follow_up.content, 'text', '', '[]', now()
      FROM unnest(p_follow_ups) WITH ORDINALITY AS follow_up(content, position)
     ORDER BY follow_up.position;
    UPDATE sessions_admin_conversation
       SET last_activity = now(),
           message_count = message_count + v_answered,
           total_tokens = total_tokens + p_total_tokens,
           coze_conversation_id = CASE WHEN p_coze_conversation <> '' THEN p_coze_conversation
                                       ELSE coze_conversation_id END,
           transcript_hash = coalesce(p_transcript_hash, transcript_hash)
     WHERE id = p_conversation;
    -- The answer counts only if the session still talks in this conversation (not cleared meanwhile);
    -- the lock is released only if still ours (a lease that lapsed may have passed to another reply).
    UPDATE sessions_admin_chatsession
       SET last_activity = now(),
           input_tokens = input_tokens + p_input_tokens,
           output_tokens = output_tokens + p_output_tokens,
           total_tokens = total_tokens + p_total_tokens,
           message_count = CASE WHEN current_conversation_id = p_conversation THEN message_count + v_answered
                                ELSE message_count END,
           lock_token = CASE WHEN lock_token = p_lock_token THEN '' ELSE lock_token END,
           locked_until = CASE WHEN lock_token = p_lock_token THEN NULL ELSE locked_until END
     WHERE id = p_session;
    -- The daily usage rollup (sessions_admin.rollup); last, so its row lock is held briefly.
    IF p_status <> 'in_progress' THEN
        INSERT INTO sessions_admin_dailyusage AS d (day, bot_id, owner_key, %(counters)s)
        VALUES ((r.started_at AT TIME ZONE p_time_zone)::date, r.bot_id, r.owner_key, %(values)s)
        ON CONFLICT (day, bot_id, owner_key) DO UPDATE SET %(updates)s;
    END IF;
    RETURN QUERY SELECT true;
END;
$$;
""" % {  # noqa: UP031 - the body is full of braces; names are the migration's own constants
    "counters": ", ".join(ROLLUP_COUNTERS),
    "values": ", ".join(ROLLUP_VALUES),
    "updates": ", ".join(f"{name} = d.{name} + excluded.{name}" for name in ROLLUP_COUNTERS),
}


def create_function(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(TURN_FINISH, params=None)  # no placeholders: the body has % signs


def drop_function(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP FUNCTION IF EXISTS cozeproject_turn_finish")


class Migration(migrations.Migration):
    dependencies = [
        ("sessions_admin", "0012_reply_resume_database_defaults"),
    ]

    operations = [migrations.RunPython(create_function, drop_function)]
