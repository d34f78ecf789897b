"""The turn's writes exist twice: as PostgreSQL functions and statements (`cozeproject_turn_start`,
`cozeproject_turn_finish`, the pause and resume of a reply waiting for local tools: the path the
server takes on PostgreSQL) and as ORM steps (`chat.turn.store_orm`, the path on other
databases). This test runs the same turns through both on PostgreSQL and compares every stored
row, column by column, so a column added to one path and not the other fails here.
(tests/chat/test_turn_store.py states the contract itself.)"""

import datetime

import pytest
from asgiref.sync import async_to_sync
from django.db import connection
from django.db.models import DateTimeField

from chat.domain.errors import ChatError
from chat.domain.events import ToolCall, Usage
from chat.domain.inputs import ChatRequest, Owner
from chat.files import attachments
from chat.turn import store, store_orm, store_tools
from chat.turn.records import TurnOutcome, TurnStart
from sessions_admin.models import ChatSession, Conversation, DailyUsage, Message, Reply

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif("connection.vendor != 'postgresql'", reason="the SQL functions exist on PostgreSQL only"),
]

OWNER = Owner(key="client:parity", api_client_id=None)
BOT, OTHER_BOT = "7000000000000000001", "7000000000000000002"
STORED = (ChatSession, Conversation, Reply, Message, DailyUsage)


def start_sql(start: TurnStart):
    return store._turn_start_pg(start)


def finish_sql(turn, outcome):
    async_to_sync(store.turn_finish)(turn=turn, outcome=outcome)


PATHS = {
    "sql": (start_sql, finish_sql),
    "orm": (store_orm.turn_start, lambda turn, outcome: store_orm.turn_finish(turn=turn, outcome=outcome)),
}


def pause(path, turn, outcome) -> bool:
    if path == "sql":
        return async_to_sync(store_tools.turn_pause)(turn=turn, outcome=outcome, wait_seconds=600)
    return store_orm.turn_pause(turn=turn, outcome=outcome, wait_seconds=600)


def resume(path, session_id, chat_id, outputs, *, waiting_only=True):
    if path == "sql":
        return async_to_sync(store_tools.turn_resume)(
            owner=OWNER, session_id=session_id, chat_id=chat_id, outputs=outputs, waiting_only=waiting_only
        )
    return store_orm.turn_resume(
        owner_key=OWNER.key, session_id=session_id, chat_id=chat_id, outputs=outputs, waiting_only=waiting_only
    )


def waiting_for_tools(chat_id, conversation_id, *names, answered=()):
    return TurnOutcome(
        chat_id=chat_id,
        conversation_id=conversation_id,
        logid="log-tools",
        answer_parts=["Let me ", "check. "],
        tool_calls=tuple(ToolCall(id=f"{chat_id}-{name}", name=name, arguments='{"city":"Oslo"}') for name in names),
        tools_answered=list(answered),
    )


def begin(path, message, *, session_id="s1", bot_id=BOT, user_id=None, token, resumable=False):
    start, _ = PATHS[path]
    return start(
        TurnStart(
            owner=OWNER,
            chat_request=ChatRequest(message=message, session_id=session_id, user_id=user_id, resumable=resumable),
            session_id=session_id,
            bot_id=bot_id,
            transport="sse",
            worker_channel="worker-1",
            lock_token=token,
            attachments=attachments.ResolvedAttachments(),
        )
    )


def end(path, turn, outcome):
    _, finish = PATHS[path]
    finish(turn, outcome)


def completed(answer, conversation_id, **changes):
    fields = {
        "status": Reply.Status.COMPLETED,
        "answer_parts": [answer[:3], answer[3:]],
        "follow_ups": ["And then?"],
        "usage": Usage(3, 4, 7),
        "chat_id": f"chat-{answer}",
        "conversation_id": conversation_id,
        "logid": "log-1",
        "message_id": f"msg-{answer}",
        "first_token_at": 0.0834,
        "duration": 1.2345,
        "event_chars": [0, 3, len(answer) - 3, 0],
    }
    return TurnOutcome(**{**fields, **changes})


def run_turns(path: str) -> list[dict]:
    """A session's life: turns that continue a conversation, fail, are cancelled, switch bots,
    are retried, land after a clear, pause for local tools, and a second session. Returns the
    stored rows while a reply waits, and at the end."""
    first = begin(path, "hello", user_id="u-1", token="t1", resumable=True)
    end(path, first, completed("Hi there", "conv-1"))
    end(path, first, completed("Hi there", "conv-1"))  # a retried finish stores nothing twice

    second = begin(path, "and then?", token="t2")
    end(path, second, completed("Then this", "conv-1", usage=Usage(5, 6, 11), first_token_at=0.512))

    failed = begin(path, "break", token="t3")
    end(
        path,
        failed,
        completed(
            "Par",
            "conv-1",
            status=Reply.Status.FAILED,
            error=ChatError("upstream_error", "Coze refused."),
            follow_ups=[],
            usage=Usage(),
            message_id="",
        ),
    )

    cancelled = begin(path, "stop", token="t4")
    end(path, cancelled, TurnOutcome(status=Reply.Status.CANCELLED, error=ChatError("cancelled"), duration=0.2))

    other_bot = begin(path, "other bot", bot_id=OTHER_BOT, token="t5")
    end(path, other_bot, completed("Other", "conv-2", first_token_at=None))

    cleared = begin(path, "before the clear", bot_id=OTHER_BOT, token="t6")
    ChatSession.objects.filter(session_id="s1").update(current_conversation=None, message_count=0)
    end(path, cleared, completed("Late", "conv-2"))

    fresh = begin(path, "after the clear", bot_id=OTHER_BOT, token="t7")
    end(path, fresh, completed("Fresh", "conv-3", usage=Usage(1, 1, 2)))

    # Local tools: a first turn pauses (its new conversation's id stored then), is claimed back
    # with its outputs and finishes; a second pauses twice and then waits too long.
    tools = begin(path, "weather?", session_id="s3", token="t9")
    assert pause(path, tools, waiting_for_tools("chat-tools", "conv-5", "get_weather", "get_time"))
    while_waiting = stored_rows()
    assert not pause(path, tools, waiting_for_tools("chat-tools", "conv-5", "get_weather"))  # not in progress
    assert resume(path, "s3", "chat-tools", {"chat-tools-get_weather": "sunny"}, waiting_only=False)
    assert resume(path, "s3", "chat-tools", {}) is None  # claimed already
    resumed = resume_after_pause(path, tools, "chat-tools", {"chat-tools-get_time": "noon"})
    end(path, resumed.turn, completed("Let me check. Sunny at noon", "conv-5", chat_id="chat-tools"))

    again = begin(path, "and tomorrow?", session_id="s3", token="t10")
    first_round = waiting_for_tools("chat-again", "conv-5", "get_weather")
    assert pause(path, again, first_round)
    answered = resume(path, "s3", "chat-again", {"chat-again-get_weather": "rain"}).required_action["tool_calls"]
    assert pause(path, again, waiting_for_tools("chat-again", "conv-5", "get_umbrella", answered=answered))
    ChatSession.objects.filter(session_id="s3").update(locked_until=datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC))
    assert resume(path, "s3", "chat-again", {"chat-again-get_umbrella": "yes"}) is None  # its wait has passed
    expired = resume(path, "s3", "chat-again", {}, waiting_only=False)
    end(
        path,
        expired.turn,
        TurnOutcome(
            status=Reply.Status.FAILED,
            error=ChatError("tool_output_timeout"),
            chat_id="chat-again",
            conversation_id="conv-5",
            answer_parts=["Let me check. "],
        ),
    )

    elsewhere = begin(path, "second session", session_id="s2", token="t8")
    ChatSession.objects.filter(session_id="s2").update(lock_token="another-reply")  # its lease passed on
    end(
        path,
        elsewhere,
        completed("Kept", "conv-4", status=Reply.Status.INTERRUPTED, error=ChatError("interrupted"), follow_ups=[]),
    )
    return [while_waiting, stored_rows()]


def resume_after_pause(path, turn, chat_id, outputs):
    """Pause `turn` again after a partial claim, as a second round of calls would, then claim it."""
    claimed = Reply.objects.get(pk=turn.reply_pk)
    outcome = waiting_for_tools(chat_id, "conv-5", answered=claimed.required_action["tool_calls"])
    outcome.tool_calls = ()
    assert pause(path, turn, outcome)
    return resume(path, "s3", chat_id, outputs)


def stored_rows() -> dict[str, list[dict]]:
    """Every stored row, every column. Primary and foreign keys become their row's position (the
    two runs number rows differently); a timestamp becomes whether it is set, and for the lease
    whether it lies in the future."""
    now = datetime.datetime.now(datetime.UTC)
    positions = {
        model: {pk: i for i, pk in enumerate(model.objects.order_by("pk").values_list("pk", flat=True))}
        for model in STORED
    }
    rows = {}
    for model in STORED:
        table = []
        for row in model.objects.order_by("pk").values():
            normal = {}
            for field in model._meta.concrete_fields:
                value = row[field.attname]
                if field.primary_key:
                    value = positions[model][value]
                elif field.is_relation:
                    value = None if value is None else positions[field.related_model].get(value, "elsewhere")
                elif isinstance(field, DateTimeField):
                    value = "future" if field.name == "locked_until" and value and value > now else value is not None
                normal[field.attname] = value
            table.append(normal)
        rows[model.__name__] = table
    return rows


def clear_tables() -> None:
    with connection.cursor() as cursor:
        tables = ", ".join(model._meta.db_table for model in STORED)
        cursor.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")


def test_the_sql_functions_and_the_orm_steps_store_the_same_rows():
    through_sql = run_turns("sql")
    clear_tables()
    through_orm = run_turns("orm")

    assert sum(len(rows) for rows in through_sql[-1].values()) > 30  # the scenario stored what it meant to
    for moment, (sql_rows, orm_rows) in enumerate(zip(through_sql, through_orm, strict=True)):
        for table in sql_rows:
            assert orm_rows[table] == sql_rows[table], (moment, table)
