"""The start of a chat turn as one PostgreSQL function: one round trip instead of eight.

`chat.turn.store.turn_start` calls it on PostgreSQL (other databases run the same steps through
the ORM, `_turn_start_orm`); both must keep to the same contract, which the turn-store tests
check on both. A column added to these tables without a database default must be added here too
(the INSERTs fail loudly otherwise).
"""

from django.db import migrations

TURN_START = r"""
CREATE OR REPLACE FUNCTION cozeproject_turn_start(
    p_owner_key text,
    p_api_client_id bigint,
    p_user_id integer,
    p_session_id text,
    p_requested_user text,
    p_default_user text,
    p_bot_id text,
    p_transport text,
    p_worker_channel text,
    p_question text,
    p_content_type text,
    p_attachments jsonb,
    p_lock_token text,
    p_lock_seconds double precision,
    p_check_route boolean,
    p_expected_conversation text,
    p_expected_user text,
    p_transcript_start text,
    p_resumable boolean
) RETURNS TABLE (
    outcome text,
    session_pk bigint,
    conversation_pk bigint,
    reply_pk bigint,
    question_pk bigint,
    coze_conversation_id text,
    coze_user_id text,
    transcript_hash text,
    question text
)
LANGUAGE plpgsql AS $$
DECLARE
    s sessions_admin_chatsession%ROWTYPE;
    c sessions_admin_conversation%ROWTYPE;
    v_new boolean;
    v_user text;
    v_coze text;
    v_reply bigint;
    v_question bigint;
BEGIN
    -- The session under a row lock: a clear or delete waits for this turn's start, then sees it.
    SELECT * INTO s FROM sessions_admin_chatsession
     WHERE owner_key = p_owner_key AND session_id = p_session_id FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO sessions_admin_chatsession (
            owner_key, api_client_id, user_id, session_id, coze_user_id, bot_id, current_conversation_id,
            created_at, last_activity, cleared_at, message_count, input_tokens, output_tokens, total_tokens,
            lock_token, locked_until
        ) VALUES (
            p_owner_key, p_api_client_id, p_user_id, p_session_id,
            coalesce(nullif(p_requested_user, ''), p_default_user), p_bot_id, NULL,
            now(), now(), NULL, 0, 0, 0, 0, '', NULL
        ) ON CONFLICT (owner_key, session_id) DO NOTHING;
        -- Two first turns raced to create it: both lock the one row, in turn.
        SELECT * INTO s FROM sessions_admin_chatsession
         WHERE owner_key = p_owner_key AND session_id = p_session_id FOR UPDATE;
    ELSIF s.lock_token = p_lock_token THEN
        -- This very start committed before (a retry after its acknowledgement was lost).
        RETURN QUERY
            SELECT 'started', s.id, r.conversation_id, r.id, m.id, cv.coze_conversation_id::text,
                   s.coze_user_id::text, cv.transcript_hash::text, m.content
              FROM sessions_admin_reply r
              JOIN sessions_admin_conversation cv ON cv.id = r.conversation_id
              JOIN sessions_admin_message m ON m.reply_id = r.id AND m.kind = 'question'
             WHERE r.session_id = s.id
             ORDER BY r.id DESC LIMIT 1;
        RETURN;
    END IF;
    IF s.locked_until IS NOT NULL AND s.locked_until >= now() THEN
        RETURN QUERY SELECT 'busy', s.id, NULL::bigint, NULL::bigint, NULL::bigint, NULL::text, NULL::text,
                            NULL::text, NULL::text;
        RETURN;
    END IF;
    IF s.current_conversation_id IS NOT NULL THEN
        SELECT * INTO c FROM sessions_admin_conversation WHERE id = s.current_conversation_id;
    END IF;
    v_new := c.id IS NULL OR c.bot_id <> p_bot_id;
    v_user := coalesce(nullif(p_requested_user, ''), s.coze_user_id);
    v_coze := CASE WHEN v_new THEN '' ELSE c.coze_conversation_id END;
    IF p_check_route AND (v_coze <> p_expected_conversation OR v_user <> p_expected_user) THEN
        RETURN QUERY SELECT 'route_changed', s.id, NULL::bigint, NULL::bigint, NULL::bigint, v_coze, v_user,
                            NULL::text, NULL::text;
        RETURN;
    END IF;
    IF v_new THEN
        -- A new context: first turn, after a clear, or the client switched bots.
        INSERT INTO sessions_admin_conversation (
            session_id, coze_conversation_id, bot_id, created_at, last_activity, message_count, total_tokens,
            transcript_hash
        ) VALUES (s.id, '', p_bot_id, now(), now(), 1, 0, p_transcript_start)
        RETURNING * INTO c;
    ELSE
        UPDATE sessions_admin_conversation SET last_activity = now(), message_count = message_count + 1
         WHERE id = c.id;
    END IF;
    UPDATE sessions_admin_chatsession
       SET lock_token = p_lock_token,
           locked_until = now() + p_lock_seconds * interval '1 second',
           current_conversation_id = c.id,
           bot_id = p_bot_id,
           coze_user_id = v_user,
           last_activity = now(),
           message_count = CASE WHEN v_new THEN 1 ELSE message_count + 1 END
     WHERE id = s.id;
    INSERT INTO sessions_admin_reply (
        session_id, conversation_id, owner_key, api_client_id, user_id, bot_id, coze_chat_id, coze_logid, status,
        error_code, error_detail, transport, input_tokens, output_tokens, total_tokens, time_to_first_token_ms,
        duration_ms, worker_channel, started_at, finished_at, resumable, ended_without_client, resume_count,
        answer_offsets
    ) VALUES (
        s.id, c.id, p_owner_key, p_api_client_id, p_user_id, p_bot_id, '', '', 'in_progress',
        '', '', p_transport, 0, 0, 0, NULL, NULL, p_worker_channel, now(), NULL, p_resumable, NULL, 0, ''
    ) RETURNING id INTO v_reply;
    INSERT INTO sessions_admin_message (
        conversation_id, reply_id, role, kind, content, content_type, coze_message_id, attachments, created_at
    ) VALUES (
        c.id, v_reply, 'user', 'question', p_question, p_content_type, '', p_attachments, now()
    ) RETURNING id INTO v_question;
    RETURN QUERY SELECT 'started', s.id, c.id, v_reply, v_question, v_coze, v_user, c.transcript_hash::text, p_question;
END;
$$;
"""


def create_function(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(TURN_START, params=None)  # no placeholders: the body has % signs


def drop_function(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP FUNCTION IF EXISTS cozeproject_turn_start")


class Migration(migrations.Migration):
    dependencies = [
        ("sessions_admin", "0010_reply_resumable_end_and_resume_count"),
    ]

    operations = [migrations.RunPython(create_function, drop_function)]
