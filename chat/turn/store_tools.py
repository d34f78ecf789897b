"""The database steps of a reply that waits for the client's local tools (docs/api.md §13):
`turn_pause` parks an in-progress reply as `requires_action`, its session still locked (busy)
until CHAT_TOOL_OUTPUT_TIMEOUT from now; `turn_resume` claims a paused reply back to
`in_progress`, once (two concurrent submits can't both continue it), so that its finish
(`chat.turn.store.turn_finish`) stores it like any other reply.

As in `chat.turn.store`: one statement on PostgreSQL from the event loop, the same steps through
the ORM elsewhere (`chat.turn.store_orm`), both run by the parity test.
"""

import json

from django.conf import settings

from chat.domain.inputs import Owner
from chat.runtime.db import apg_fetchone, db_async, on_postgresql
from chat.turn import records, store_orm
from chat.turn.records import PausedTurn, Route, TurnContext, TurnOutcome


async def turn_pause(*, turn: TurnContext, outcome: TurnOutcome, wait_seconds: float) -> bool:
    """Park the reply as `requires_action` with `outcome`'s tool calls and answer so far (one
    transaction): Coze's ids on the Reply (and a new conversation's id on its record, which the
    continuation needs), the session's lease moved to `wait_seconds` from now. Returns False when
    the reply was no longer in progress (nothing stored)."""
    params = _turn_pause_params(turn, outcome, wait_seconds)
    if on_postgresql():
        row = await apg_fetchone(TURN_PAUSE_SQL, params)
        return bool(row and row[0])
    return await _turn_pause_orm(turn=turn, outcome=outcome, wait_seconds=wait_seconds)


_turn_pause_orm = db_async(store_orm.turn_pause)


def _turn_pause_params(turn: TurnContext, outcome: TurnOutcome, wait_seconds: float) -> dict:
    return {
        "reply": turn.reply_pk,
        "session": turn.session_pk,
        "conversation": turn.conversation_pk,
        "lock_token": turn.lock_token,
        "chat_id": outcome.chat_id,
        "logid": outcome.logid,
        "required_action": json.dumps(records.required_action_of(outcome)),
        "coze_conversation_id": outcome.conversation_id if not turn.route.coze_conversation_id else "",
        "wait_seconds": float(wait_seconds),
    }


TURN_PAUSE_SQL = """
WITH reply AS (
    UPDATE sessions_admin_reply
    SET status = 'requires_action', coze_chat_id = %(chat_id)s, coze_logid = %(logid)s,
        required_action = %(required_action)s::jsonb
    WHERE id = %(reply)s AND status = 'in_progress'
    RETURNING id
), conversation AS (
    UPDATE sessions_admin_conversation SET coze_conversation_id = %(coze_conversation_id)s
    WHERE id = %(conversation)s AND coze_conversation_id = '' AND %(coze_conversation_id)s <> ''
      AND EXISTS (SELECT 1 FROM reply)
    RETURNING id
), session AS (
    UPDATE sessions_admin_chatsession
    SET locked_until = NOW() + make_interval(secs => %(wait_seconds)s::float8), last_activity = NOW()
    WHERE id = %(session)s AND lock_token = %(lock_token)s AND EXISTS (SELECT 1 FROM reply)
    RETURNING id
)
SELECT (SELECT count(*) FROM reply), (SELECT count(*) FROM conversation), (SELECT count(*) FROM session)
"""


async def turn_resume(
    *, owner: Owner, session_id: str, chat_id: str, outputs: dict[str, str], waiting_only: bool
) -> PausedTurn | None:
    """Claim the paused reply `chat_id` of the owner's session back to `in_progress` (and its
    session's lease for CHAT_SESSION_LOCK_TTL), recording `outputs` (by tool call id) on its calls.

    `waiting_only`: only while the reply still waits (its lease, the tool deadline, has not passed)
    — the client's outputs; otherwise at any time (the deadline's own expiry, a cancel). Either way
    only the session's latest reply, and only once: None when there is no such paused reply.
    """
    params = {
        "owner": owner.key,
        "session_id": session_id,
        "chat_id": chat_id,
        "outputs": json.dumps(outputs),
        "waiting_only": waiting_only,
        "ttl": float(settings.CHAT_SESSION_LOCK_TTL),
    }
    if on_postgresql():
        row = await apg_fetchone(TURN_RESUME_SQL, params)
        return None if row is None else _paused_turn(row, owner_key=owner.key, session_id=session_id)
    return await _turn_resume_orm(
        owner_key=owner.key, session_id=session_id, chat_id=chat_id, outputs=outputs, waiting_only=waiting_only
    )


_turn_resume_orm = db_async(store_orm.turn_resume)


def _paused_turn(row: tuple, *, owner_key: str, session_id: str) -> PausedTurn:
    reply_pk, session_pk, conversation_pk, lock_token, coze_user_id, bot_id, transport = row[:7]
    required_action, coze_conversation_id, transcript_hash, question = row[7:]
    turn = TurnContext(
        session_pk=session_pk,
        session_id=session_id,
        conversation_pk=conversation_pk,
        reply_pk=reply_pk,
        lock_token=lock_token,
        route=Route(coze_conversation_id=coze_conversation_id, bot_id=bot_id, coze_user_id=coze_user_id),
        owner_key=owner_key,
        transport=transport,
        question=question or "",
        transcript_hash=transcript_hash,
    )
    return PausedTurn(turn=turn, required_action=required_action or {})


# The reply must be the session's latest (a lease that lapsed may have passed to a later reply)
# and, for the client's outputs, still within its wait. The outputs go onto the calls that have
# none yet, in the calls' order.
TURN_RESUME_SQL = """
WITH target AS (
    SELECT r.id AS reply_id, s.id AS session_pk
    FROM sessions_admin_reply r JOIN sessions_admin_chatsession s ON s.id = r.session_id
    WHERE s.owner_key = %(owner)s AND s.session_id = %(session_id)s AND r.coze_chat_id = %(chat_id)s
      AND r.status = 'requires_action'
      AND NOT EXISTS (
          SELECT 1 FROM sessions_admin_reply later WHERE later.session_id = r.session_id AND later.id > r.id
      )
      AND (NOT %(waiting_only)s OR s.locked_until > NOW())
    FOR UPDATE OF r, s
), reply AS (
    UPDATE sessions_admin_reply r
    SET status = 'in_progress',
        required_action = jsonb_set(r.required_action, '{tool_calls}', COALESCE((
            SELECT jsonb_agg(
                CASE WHEN NOT call ? 'output' AND %(outputs)s::jsonb ? (call ->> 'id')
                     THEN call || jsonb_build_object('output', %(outputs)s::jsonb -> (call ->> 'id'))
                     ELSE call END
                ORDER BY position)
            FROM jsonb_array_elements(r.required_action -> 'tool_calls') WITH ORDINALITY AS calls(call, position)
        ), '[]'::jsonb))
    FROM target WHERE r.id = target.reply_id
    RETURNING r.id, r.conversation_id, r.bot_id, r.transport, r.required_action
), session AS (
    UPDATE sessions_admin_chatsession s
    SET locked_until = NOW() + make_interval(secs => %(ttl)s::float8), last_activity = NOW()
    FROM target WHERE s.id = target.session_pk
    RETURNING s.id, s.lock_token, s.coze_user_id
)
SELECT reply.id, session.id, reply.conversation_id, session.lock_token, session.coze_user_id, reply.bot_id,
       reply.transport, reply.required_action, c.coze_conversation_id, c.transcript_hash,
       (SELECT m.content FROM sessions_admin_message m
        WHERE m.reply_id = reply.id AND m.kind = 'question' ORDER BY m.id LIMIT 1)
FROM reply JOIN session ON TRUE JOIN sessions_admin_conversation c ON c.id = reply.conversation_id
"""
