"""export_chat_data and the admin's JSON Lines export of selected conversations."""

import json
from datetime import timedelta
from io import StringIO

import pytest
from asgiref.sync import async_to_sync
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from sessions_admin import export
from sessions_admin import feedback as fb
from sessions_admin.models import Conversation, Reply
from tests.sessions_admin.factories import make_client, make_conversation, make_session, make_turn

pytestmark = pytest.mark.django_db
CHANGELIST = reverse("admin:sessions_admin_conversation_changelist")


def run(*args) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("export_chat_data", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture
def records():
    shop = make_client("shop")
    now = timezone.now()
    rated = make_conversation(make_session(client=shop, session_id="rated", coze_user_id="u-7"))
    first = make_turn(rated, question="Où est ma commande ?", answer="En route 🚚", follow_ups=("Suivi ?",))
    second = make_turn(
        rated, question="and <b>now</b>?", answer="partial", status=Reply.Status.CANCELLED, error_code="cancelled"
    )
    answer = first.messages.get(kind="answer")
    fb.feedback_set(owner_key=shop.owner_key, message_id=answer.pk, rating="down", comment="too vague")
    old = make_conversation(make_session(browser="f" * 32, session_id="old", last_activity=now - timedelta(days=30)))
    make_turn(old, started_at=now - timedelta(days=30))
    return {"shop": shop, "rated": rated, "old": old, "first": first, "second": second, "answer": answer}


def test_each_line_is_a_conversation_with_messages_ratings_replies_and_usage(records):
    out, err = run()
    by_session = {line["session_id"]: line for line in lines(out)}
    assert set(by_session) == {"rated", "old"}
    line = by_session["rated"]
    rated, first, answer = records["rated"], records["first"], records["answer"]
    assert {
        key: line[key] for key in ("schema", "id", "conversation_id", "owner", "owner_name", "user_id", "bot_id")
    } == {
        "schema": 1,
        "id": rated.pk,
        "conversation_id": rated.coze_conversation_id,
        "owner": records["shop"].owner_key,
        "owner_name": "API client shop",
        "user_id": "u-7",
        "bot_id": "bot-a",
    }
    assert [(m["role"], m["type"], m["content"]) for m in line["messages"]] == [
        ("user", "question", "Où est ma commande ?"),
        ("assistant", "answer", "En route 🚚"),
        ("assistant", "follow_up", "Suivi ?"),
        ("user", "question", "and <b>now</b>?"),
        ("assistant", "answer", "partial"),
    ]
    rated_message = line["messages"][1]
    assert rated_message["id"] == answer.pk and rated_message["chat_id"] == first.coze_chat_id
    assert rated_message["feedback"]["rating"] == "down" and rated_message["feedback"]["comment"] == "too vague"
    assert line["messages"][0]["feedback"] is None and line["messages"][0]["attachments"] == []
    assert [(r["chat_id"], r["status"], r["error_code"]) for r in line["replies"]] == [
        (first.coze_chat_id, "completed", None),
        (records["second"].coze_chat_id, "cancelled", "cancelled"),
    ]
    assert line["replies"][0]["usage"] == {"input_tokens": 10, "output_tokens": 20, "total_tokens": 30}
    assert line["usage"] == {"replies": 2, "input_tokens": 20, "output_tokens": 40, "total_tokens": 60}
    # The lines are on stdout alone; the summary went to stderr.
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith("Exported 2 conversations (7 messages, 1 ratings, 3 replies) to standard output in")
    )


def test_since_and_client_narrow_the_export(records):
    today = timezone.localdate().isoformat()
    assert [line["session_id"] for line in lines(run("--since", today)[0])] == ["rated"]
    assert [line["session_id"] for line in lines(run("--client", "shop")[0])] == ["rated"]
    with pytest.raises(CommandError, match="YYYY-MM-DD"):
        run("--since", "yesterday")
    with pytest.raises(CommandError, match="No API client"):
        run("--client", "nobody")


def test_output_goes_to_a_file_with_the_summary_on_stdout(records, tmp_path):
    target = tmp_path / "export.jsonl"
    out, _ = run("--output", str(target))
    assert len(lines(target.read_text(encoding="utf-8"))) == 2
    assert (
        out.strip()
        .splitlines()[-1]
        .startswith(f"Exported 2 conversations (7 messages, 1 ratings, 3 replies) to {target}")
    )


def test_pages_of_any_size_give_the_same_lines_and_every_query_is_bounded(records, monkeypatch):
    big = make_conversation(make_session(session_id="big"))
    for number in range(9):
        make_turn(big, question=f"q{number}", follow_ups=("f",) if number % 2 else ())
    expected = run()[0]
    monkeypatch.setattr(export, "CONVERSATION_PAGE", 2)
    monkeypatch.setattr(export, "ROW_PAGE", 3)
    monkeypatch.setattr(export, "CHUNK_CHARS", 10)
    with CaptureQueriesContext(connection) as queries:
        small = run()[0]
    assert small == expected
    reads = [query["sql"] for query in queries.captured_queries if "sessions_admin_message" in query["sql"]]
    assert reads and all("LIMIT 3" in sql for sql in reads)


def test_chunks_stay_small_even_inside_a_long_conversation(records, monkeypatch):
    long = make_conversation(make_session(session_id="long"))
    for number in range(30):
        make_turn(long, question=f"question {number} " + "x" * 200)
    whole = "".join(export.iter_export(Conversation.objects.all()))
    monkeypatch.setattr(export, "CHUNK_CHARS", 1000)
    chunks = list(export.iter_export(Conversation.objects.all()))
    # About CHUNK_CHARS each, the one long line spread over many of them, nothing lost.
    assert len(chunks) > 10 and max(len(chunk) for chunk in chunks) < 2000
    assert "".join(chunks) == whole


def test_the_async_iterator_gives_the_same_lines(records):
    async def collect() -> str:
        return "".join([chunk async for chunk in export.aiter_export(Conversation.objects.all())])

    assert async_to_sync(collect)() == "".join(export.iter_export(Conversation.objects.all()))


def test_admin_exports_the_selected_conversations_as_a_download(records, staff_client):
    response = staff_client.post(
        CHANGELIST, {"action": "export_jsonl", "_selected_action": [records["rated"].pk], "index": 0}
    )
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"] == "application/jsonl; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="conversations-')
    body = b"".join(response.streaming_content).decode()
    assert [line["session_id"] for line in lines(body)] == ["rated"]


def test_admin_export_needs_view_permission(records, staff_without_permissions_client):
    response = staff_without_permissions_client.post(
        CHANGELIST, {"action": "export_jsonl", "_selected_action": [records["rated"].pk], "index": 0}
    )
    assert response.status_code == 403


def test_the_export_picks_the_iterator_that_suits_the_server():
    from django.test import AsyncRequestFactory, RequestFactory

    asgi = export.export_response(AsyncRequestFactory().get("/"), Conversation.objects.all())
    wsgi = export.export_response(RequestFactory().get("/"), Conversation.objects.all())
    assert asgi.is_async and not wsgi.is_async
