"""The turn's writes exist twice: as PostgreSQL functions (`cozeproject_turn_start`,
`cozeproject_turn_finish`, the path the server takes on PostgreSQL) and as ORM steps
(`chat.turn.store_orm`, the path on other databases). This test runs the same turns through both
on PostgreSQL and compares every stored row, column by column, so a column added to one path and
not the other fails here. (tests/chat/test_turn_store.py states the contract itself.)"""

import datetime

import pytest
from asgiref.sync import async_to_sync
from django.db import connection
from django.db.models import DateTimeField

from chat.domain.errors import ChatError
from chat.domain.events import Usage
from chat.domain.inputs import ChatRequest, Owner
from chat.files import attachments
from chat.turn import store, store_orm
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
    }
    return TurnOutcome(**{**fields, **changes})


def run_turns(path: str) -> None:
    """A session's life: turns that continue a conversation, fail, are cancelled, switch bots,
    are retried, land after a clear, and a second session."""
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

    elsewhere = begin(path, "second session", session_id="s2", token="t8")
    ChatSession.objects.filter(session_id="s2").update(lock_token="another-reply")  # its lease passed on
    end(
        path,
        elsewhere,
        completed("Kept", "conv-4", status=Reply.Status.INTERRUPTED, error=ChatError("interrupted"), follow_ups=[]),
    )


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
    run_turns("sql")
    through_sql = stored_rows()
    clear_tables()
    run_turns("orm")
    through_orm = stored_rows()

    assert sum(len(rows) for rows in through_sql.values()) > 30  # the scenario stored what it meant to
    for table in through_sql:
        assert through_orm[table] == through_sql[table], table
