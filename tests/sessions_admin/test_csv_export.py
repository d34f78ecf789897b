"""CSV export of the usage list: its content, the current filter, and streaming in pages."""

import csv
import io

import pytest
from asgiref.sync import async_to_sync
from django.urls import reverse

from sessions_admin import csv_export
from sessions_admin.models import Reply
from tests.sessions_admin.factories import make_client, make_conversation, make_session, make_turn

pytestmark = pytest.mark.django_db

EXPORT = reverse("admin:sessions_admin_reply_export")


def read_csv(response) -> list[dict]:
    assert response.streaming
    body = b"".join(response.streaming_content).decode()
    return list(csv.DictReader(io.StringIO(body)))


def test_export_streams_every_reply_with_its_usage(staff_client):
    acme = make_client("acme")
    conversation = make_conversation(make_session(client=acme, session_id="sess-9", bot_id="bot-a"))
    reply = make_turn(
        conversation, input_tokens=12, output_tokens=30, ttft_ms=250, duration_ms=900, transport=Reply.Transport.SYNC
    )

    response = staff_client.get(EXPORT)

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"].startswith('attachment; filename="token-usage-')
    rows = read_csv(response)
    assert rows == [
        {
            "reply_id": str(reply.pk),
            "started_at": reply.started_at.isoformat(),
            "finished_at": reply.finished_at.isoformat(),
            "status": "completed",
            "error_code": "",
            "transport": "sync",
            "bot_id": "bot-a",
            "owner_key": acme.owner_key,
            "api_client": "acme",
            "user": "",
            "session_id": "sess-9",
            "coze_conversation_id": conversation.coze_conversation_id,
            "coze_chat_id": reply.coze_chat_id,
            "input_tokens": "12",
            "output_tokens": "30",
            "total_tokens": "42",
            "time_to_first_token_ms": "250",
            "duration_ms": "900",
            "estimated_cost": "",
        }
    ]


def test_export_follows_the_changelist_filter(staff_client):
    conversation = make_conversation(make_session())
    make_turn(conversation)
    failed = make_turn(conversation, status=Reply.Status.FAILED, answer=None, error_code="upstream_error")

    rows = read_csv(staff_client.get(EXPORT, {"status__exact": "failed"}))

    assert [row["reply_id"] for row in rows] == [str(failed.pk)]
    assert rows[0]["error_code"] == "upstream_error"


def test_export_reads_in_pages_newest_first(staff_client, monkeypatch):
    monkeypatch.setattr(csv_export, "PAGE_SIZE", 3)
    conversation = make_conversation(make_session())
    replies = [make_turn(conversation, input_tokens=n, output_tokens=0) for n in range(8)]

    response = staff_client.get(EXPORT)
    chunks = list(response.streaming_content)

    assert len(chunks) == 1 + 3  # the header, then pages of 3, 3 and 2 rows
    rows = list(csv.DictReader(io.StringIO(b"".join(chunks).decode())))
    assert [int(row["reply_id"]) for row in rows] == [reply.pk for reply in reversed(replies)]


def test_export_under_asgi_iterates_asynchronously(monkeypatch):
    monkeypatch.setattr(csv_export, "PAGE_SIZE", 2)
    conversation = make_conversation(make_session())
    for _ in range(5):
        make_turn(conversation)

    async def collect() -> list[str]:
        return [chunk async for chunk in csv_export.aiter_csv(Reply.objects.all())]

    chunks = async_to_sync(collect)()
    assert len(chunks) == 1 + 3
    assert sum(chunk.count("\r\n") for chunk in chunks) == 6


def test_export_neutralises_spreadsheet_formulas_and_adds_cost(staff_client, settings):
    settings.CHAT_TOKEN_PRICE_PER_1K = "2"
    client = make_client('=HYPERLINK("http://evil")')
    make_turn(make_conversation(make_session(client=client, session_id="+cmd")), input_tokens=500, output_tokens=0)

    rows = read_csv(staff_client.get(EXPORT))

    assert rows[0]["api_client"] == '\'=HYPERLINK("http://evil")'
    assert rows[0]["session_id"] == "'+cmd"
    assert rows[0]["estimated_cost"] == "1.00"


def test_export_is_for_staff_only(client, nonstaff_client, staff_without_permissions_client):
    assert client.get(EXPORT).status_code == 302
    assert nonstaff_client.get(EXPORT).status_code == 302
    assert staff_without_permissions_client.get(EXPORT).status_code == 403


def test_export_picks_the_iterator_that_suits_the_server():
    from django.test import AsyncRequestFactory, RequestFactory

    asgi = csv_export.usage_csv_response(AsyncRequestFactory().get(EXPORT), Reply.objects.all())
    wsgi = csv_export.usage_csv_response(RequestFactory().get(EXPORT), Reply.objects.all())

    # Django would otherwise buffer the whole export in memory to adapt one to the other.
    assert asgi.is_async and not wsgi.is_async


@pytest.mark.django_db(transaction=True)
def test_export_streams_through_the_real_asgi_server(asgi_server, http, monkeypatch):
    from django.test import Client

    from tests.sessions_admin.factories import make_user

    monkeypatch.setattr(csv_export, "PAGE_SIZE", 2)
    conversation = make_conversation(make_session(session_id="over-asgi"))
    for _ in range(5):
        make_turn(conversation)
    browser = Client()
    browser.force_login(make_user("asgi-staff", superuser=True))
    cookies = {"sessionid": browser.cookies["sessionid"].value}

    with http.stream("GET", EXPORT, cookies=cookies) as response:
        assert response.status_code == 200
        body = "".join(response.iter_text())

    rows = list(csv.DictReader(io.StringIO(body)))
    assert len(rows) == 5 and {row["session_id"] for row in rows} == {"over-asgi"}
