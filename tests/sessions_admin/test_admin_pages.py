"""The admin pages through Django's test client: who may see them, what they show, and that
nothing in them can be edited or injected."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from sessions_admin.models import ApiClient, ChatSession, Conversation, Message, Reply, hash_api_key
from tests.sessions_admin.factories import make_chat, make_client, make_conversation, make_session, make_turn, make_user

pytestmark = pytest.mark.django_db

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'
ESCAPED = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"


def url(name: str, *args) -> str:
    return reverse(f"admin:sessions_admin_{name}", args=args)


def admin_urls() -> list[str]:
    _, conversation, replies = make_chat(turns=1, client=make_client("acme"))
    return [
        url("conversation_changelist"),
        url("conversation_change", conversation.pk),
        url("chatsession_changelist"),
        url("chatsession_change", conversation.session_id),
        url("reply_changelist"),
        url("reply_change", replies[0].pk),
        url("reply_dashboard"),
        url("reply_export"),
        url("apiclient_changelist"),
    ]


def test_every_admin_page_renders_for_staff(staff_client):
    for page in admin_urls():
        response = staff_client.get(page)
        assert response.status_code == 200, page


def test_anonymous_and_non_staff_users_are_sent_to_the_login_page(client, nonstaff_client):
    for page in admin_urls():
        for visitor in (client, nonstaff_client):
            response = visitor.get(page)
            assert response.status_code == 302, page
            assert response["Location"].startswith(reverse("admin:login")), page


def test_staff_without_view_permission_is_refused(staff_without_permissions_client):
    pages = admin_urls()
    for page in pages:
        assert staff_without_permissions_client.get(page).status_code == 403, page


def test_staff_with_view_permission_can_review_but_not_edit(db):
    from django.contrib.auth.models import Permission
    from django.test import Client

    reviewer = make_user("reviewer", staff=True)
    reviewer.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="sessions_admin",
            codename__in=["view_conversation", "view_reply", "change_conversation", "delete_conversation"],
        )
    )
    browser = Client()
    browser.force_login(reviewer)
    _, conversation, _ = make_chat(turns=1)

    assert browser.get(url("conversation_changelist")).status_code == 200
    page = browser.get(url("conversation_change", conversation.pk))
    assert page.status_code == 200
    # Even with Django's change/delete permissions, the transcript is read-only.
    assert b'name="_save"' not in page.content
    assert browser.get(url("conversation_delete", conversation.pk)).status_code == 403
    assert browser.get(url("reply_dashboard")).status_code == 200


def test_records_cannot_be_added_changed_or_deleted(staff_client):
    session, conversation, replies = make_chat(turns=1)
    message = Message.objects.filter(conversation=conversation).first()

    assert staff_client.get(url("conversation_add")).status_code == 403
    assert staff_client.get(url("reply_add")).status_code == 403
    assert staff_client.get(url("chatsession_add")).status_code == 403
    forged = staff_client.post(
        url("conversation_change", conversation.pk), {"coze_conversation_id": "forged", "bot_id": "forged"}
    )
    assert forged.status_code == 403
    assert staff_client.post(url("reply_change", replies[0].pk), {"total_tokens": 1}).status_code == 403
    assert staff_client.post(url("conversation_delete", conversation.pk), {"post": "yes"}).status_code == 403
    assert staff_client.post(url("chatsession_delete", session.pk), {"post": "yes"}).status_code == 403
    # Messages have no admin at all.
    assert staff_client.get(f"/admin/sessions_admin/message/{message.pk}/change/").status_code == 404
    conversation.refresh_from_db()
    assert conversation.coze_conversation_id != "forged"
    assert Reply.objects.get(pk=replies[0].pk).total_tokens == replies[0].total_tokens


def test_conversation_list_shows_owner_user_bot_counts_tokens_and_status(staff_client):
    client = make_client("acme")
    _, conversation, _ = make_chat(turns=2, client=client, session_id="sess-1", coze_user_id="u-42")

    response = staff_client.get(url("conversation_changelist"))

    html = response.content.decode()
    assert "sess-1" in html
    assert "API client acme" in html
    assert f"owner={client.owner_key}".replace(":", "%3A") in html
    assert "u-42" in html
    assert "bot-a" in html
    row = next(row for row in response.context["cl"].result_list if row.pk == conversation.pk)
    assert row.message_count == 4
    assert row.total_tokens == 60
    assert row.last_status == Reply.Status.COMPLETED
    assert ">ok<" in html


def test_lists_run_a_fixed_number_of_queries_however_many_rows(staff_client, django_assert_max_num_queries):
    for number in range(30):
        make_chat(turns=1, client=make_client(f"c{number}") if number % 2 else None, session_id=f"s{number}")
    # Session, user, bot filter, owner filter, count, page: no query per row.
    with django_assert_max_num_queries(8):
        assert staff_client.get(url("conversation_changelist")).status_code == 200
    with django_assert_max_num_queries(9):
        assert staff_client.get(url("reply_changelist")).status_code == 200
    with django_assert_max_num_queries(8):
        assert staff_client.get(url("chatsession_changelist")).status_code == 200


def test_status_column_and_filter_tell_busy_stuck_failed_cut_and_ok_apart(staff_client):
    now = timezone.now()
    ok = make_chat(turns=1, session_id="ok")[1]
    failed = make_conversation(make_session(session_id="failed"))
    make_turn(failed)
    make_turn(failed, status=Reply.Status.FAILED, answer=None, error_code="upstream_timeout")
    recovered = make_conversation(make_session(session_id="recovered"))
    make_turn(recovered, status=Reply.Status.FAILED, answer=None)
    make_turn(recovered)
    cut = make_conversation(make_session(session_id="cut"))
    make_turn(cut, status=Reply.Status.CANCELLED, answer="partial")
    busy = make_conversation(make_session(session_id="busy", locked_until=now + timedelta(minutes=5)))
    make_turn(busy, status=Reply.Status.IN_PROGRESS, answer=None)
    stuck = make_conversation(make_session(session_id="stuck", locked_until=now - timedelta(minutes=5)))
    make_turn(stuck, status=Reply.Status.IN_PROGRESS, answer=None)

    def shown(status: str) -> set[int]:
        response = staff_client.get(url("conversation_changelist"), {"status": status})
        assert response.status_code == 200
        return {row.pk for row in response.context["cl"].result_list}

    assert shown("busy") == {busy.pk}
    assert shown("stuck") == {stuck.pk}
    assert shown("failed") == {failed.pk}
    assert shown("cut") == {cut.pk}
    assert shown("ok") == {ok.pk, recovered.pk}
    html = staff_client.get(url("conversation_changelist")).content.decode()
    for label in ("busy", "stuck (in progress)", "failed last reply", "last reply cancelled"):
        assert f">{label}<" in html


def test_conversations_filter_by_bot_owner_and_date(staff_client):
    acme = make_client("acme")
    user = make_user("ada")
    old = timezone.now() - timedelta(days=40)
    a = make_chat(turns=1, client=acme, bot_id="bot-a")[1]
    b = make_chat(turns=1, user=user, bot_id="bot-b")[1]
    c = make_chat(turns=1, browser="f" * 32, bot_id="bot-a")[1]
    stale_session = make_session(client=acme, last_activity=old)
    stale = make_conversation(stale_session)
    make_turn(stale, started_at=old)

    def shown(**params) -> set[int]:
        response = staff_client.get(url("conversation_changelist"), params)
        assert response.status_code == 200
        return {row.pk for row in response.context["cl"].result_list}

    assert shown(bot="bot-b") == {b.pk}
    assert shown(owner=acme.owner_key) == {a.pk, stale.pk}
    assert shown(owner=f"user:{user.pk}") == {b.pk}
    assert shown(owner="browsers") == {c.pk}
    assert shown(owner="clients") == {a.pk, stale.pk}
    assert shown(owner="users") == {b.pk}
    week_ago = (timezone.now() - timedelta(days=7)).isoformat()
    assert shown(last_activity__gte=week_ago) == {a.pk, b.pk, c.pk}
    bots = staff_client.get(url("conversation_changelist")).content.decode()
    assert "?bot=bot-a" in bots and "?bot=bot-b" in bots


def test_conversation_search_finds_session_ids_coze_ids_user_ids_and_message_text(staff_client):
    _, by_session, _ = make_chat(turns=1, session_id="needle-session")
    by_user = make_chat(turns=1, coze_user_id="needle-user")[1]
    other = make_chat(turns=1)[1]
    by_text = make_conversation(make_session())
    make_turn(by_text, question="Where is my Refund for order 123?")
    make_chat(turns=1)

    def found(term: str) -> set[int]:
        response = staff_client.get(url("conversation_changelist"), {"q": term})
        assert response.status_code == 200
        return {row.pk for row in response.context["cl"].result_list}

    assert found("needle-session") == {by_session.pk}
    assert found("needle-user") == {by_user.pk}
    assert found(other.coze_conversation_id) == {other.pk}
    assert found("refund for ORDER") == {by_text.pk}
    assert found("nothing like this") == set()
    # Too short for the text index: ids only.
    assert found("12") == set()


def test_transcript_shows_turns_follow_ups_timing_and_marks_failed_and_cut_replies(staff_client):
    session = make_session(session_id="talk")
    conversation = make_conversation(session)
    make_turn(
        conversation,
        question="What's the weather?",
        answer="Sunny.",
        follow_ups=("And tomorrow?",),
        input_tokens=11,
        output_tokens=22,
        ttft_ms=345,
        duration_ms=6789,
    )
    make_turn(conversation, question="Tell me a story", answer="Once upon a", status=Reply.Status.INTERRUPTED)
    make_turn(
        conversation,
        question="Again?",
        answer=None,
        status=Reply.Status.FAILED,
        error_code="upstream_timeout",
        error_detail="Coze went silent.",
        ttft_ms=None,
    )

    response = staff_client.get(url("conversation_change", conversation.pk))

    html = response.content.decode()
    assert response.status_code == 200
    order = [html.index(text) for text in ("What&#x27;s the weather?", "Sunny.", "And tomorrow?", "Tell me a story")]
    assert order == sorted(order)
    assert "tokens 11 in / 22 out / 33 total" in html
    assert "first token 345 ms" in html and "duration 6789 ms" in html
    assert "cut off: interrupted" in html and "partial answer" in html
    assert "failed (upstream_timeout)" in html and "Coze went silent." in html and "(no answer)" in html
    assert "3 turns" in html
    assert 'name="_save"' not in html


def test_long_transcripts_are_paged(staff_client):
    conversation = make_conversation(make_session())
    for number in range(105):
        make_turn(conversation, question=f"q-{number:03d}", answer=f"a-{number:03d}")

    first = staff_client.get(url("conversation_change", conversation.pk)).content.decode()
    second = staff_client.get(url("conversation_change", conversation.pk), {"page": 2}).content.decode()

    assert "q-000" in first and "q-099" in first and "q-100" not in first
    assert "q-100" in second and "q-104" in second and "q-000" not in second
    assert "turns 1\u2013100 of 105" in first


def test_hostile_content_is_escaped_everywhere(staff_client):
    client = make_client(HOSTILE)
    user = make_user("mallory")
    session = make_session(client=client, session_id="s<b>1", coze_user_id=HOSTILE)
    conversation = make_conversation(session)
    make_turn(conversation, question=HOSTILE, answer=HOSTILE, follow_ups=(HOSTILE,), error_detail=HOSTILE)
    user_session = make_session(user=user, session_id="s2")
    make_turn(make_conversation(user_session), question="fine")

    pages = [
        url("conversation_changelist"),
        url("conversation_change", conversation.pk),
        url("chatsession_changelist"),
        url("chatsession_change", session.pk),
        url("reply_changelist"),
        url("reply_change", Reply.objects.filter(session=session).first().pk),
        url("reply_dashboard"),
        url("apiclient_changelist"),
    ]
    for page in pages:
        html = staff_client.get(page).content.decode()
        assert "<script>alert" not in html, page
        assert "<img src=x" not in html, page
    transcript = staff_client.get(url("conversation_change", conversation.pk)).content.decode()
    assert transcript.count(ESCAPED) >= 3  # question, answer, follow-up
    dashboard = staff_client.get(url("reply_dashboard")).content.decode()
    assert "API client &lt;script&gt;" in dashboard


def test_pagination_counts_only_a_few_pages_ahead(staff_client, settings):
    from sessions_admin.admin import CappedCountPaginator

    session = make_session()
    conversations = [make_conversation(session) for _ in range(12)]
    for conversation in conversations:
        make_turn(conversation)

    paginator = CappedCountPaginator(Conversation.objects.order_by("pk"), 2, page_number=1)
    assert paginator.limit == 12 and paginator.count == 12 and not paginator.count_capped
    paginator = CappedCountPaginator(Conversation.objects.order_by("pk"), 1, page_number=2)
    assert paginator.count == 8 and paginator.count_capped  # 7 counted pages + 1 to know there are more
    assert [c.pk for c in paginator.page(2).object_list] == [conversations[1].pk]


def test_usage_list_shows_every_reply_with_tokens_timing_and_totals_for_the_filter(staff_client):
    acme = make_client("acme")
    conversation = make_conversation(make_session(client=acme))
    make_turn(conversation, input_tokens=100, output_tokens=50, ttft_ms=200, transport=Reply.Transport.WEBSOCKET)
    make_turn(conversation, input_tokens=0, output_tokens=0, ttft_ms=None, status="failed", answer=None)
    other = make_conversation(make_session(bot_id="bot-b"))
    make_turn(other, input_tokens=1, output_tokens=2, ttft_ms=400)

    everything = staff_client.get(url("reply_changelist"))
    failed = staff_client.get(url("reply_changelist"), {"status__exact": "failed"})
    by_owner = staff_client.get(url("reply_changelist"), {"owner": acme.owner_key})

    assert everything.status_code == 200
    totals = everything.context["usage_totals"]
    assert (totals["replies"], totals["input_tokens"], totals["output_tokens"], totals["total_tokens"]) == (
        3,
        101,
        52,
        153,
    )
    assert totals["errors"] == 1 and totals["ttft_avg_ms"] == 300
    assert failed.context["usage_totals"]["replies"] == 1
    assert by_owner.context["usage_totals"]["total_tokens"] == 150
    html = everything.content.decode()
    assert "websocket" in html and "API client acme" in html
    assert 'id="usage-totals"' in html and "153" in html
    assert "export.csv" in html and "dashboard/" in html


def test_usage_list_sorts_by_tokens_and_latency(staff_client):
    from sessions_admin.admin import ReplyAdmin

    conversation = make_conversation(make_session())
    small = make_turn(conversation, input_tokens=1, output_tokens=1, ttft_ms=900)
    big = make_turn(conversation, input_tokens=500, output_tokens=500, ttft_ms=100)
    tokens = ReplyAdmin.list_display.index("tokens")
    ttft = ReplyAdmin.list_display.index("first_token")

    by_tokens = staff_client.get(url("reply_changelist"), {"o": f"-{tokens}"}).context["cl"].result_list
    by_ttft = staff_client.get(url("reply_changelist"), {"o": f"{ttft}"}).context["cl"].result_list

    assert [reply.pk for reply in by_tokens] == [big.pk, small.pk]
    assert [reply.pk for reply in by_ttft] == [big.pk, small.pk]


def test_token_cost_is_shown_when_a_price_is_configured(staff_client, settings):
    settings.CHAT_TOKEN_PRICE_PER_1K = "0.002"
    conversation = make_conversation(make_session())
    make_turn(conversation, input_tokens=400_000, output_tokens=100_000)

    usage = staff_client.get(url("reply_changelist"))
    dashboard = staff_client.get(url("reply_dashboard"))

    assert str(usage.context["usage_totals"]["cost"]) == "1.00"
    assert "≈ 1.00" in usage.content.decode()
    assert "≈ 1.00" in dashboard.content.decode()


def test_api_client_creation_shows_the_key_once_and_stores_only_its_hash(staff_client):
    response = staff_client.post(url("apiclient_add"), {"name": "mobile-app"})

    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    raw_key = response.context["raw_key"]
    client = ApiClient.objects.get(name="mobile-app")
    assert client.key_hash == hash_api_key(raw_key)
    assert client.key_prefix == raw_key[:10] and client.is_active
    assert raw_key in response.content.decode()
    assert raw_key not in staff_client.get(url("apiclient_change", client.pk)).content.decode()
    assert raw_key not in staff_client.get(url("apiclient_changelist")).content.decode()


def test_api_clients_can_be_renamed_and_deactivated_but_not_deleted(staff_client):
    client = make_client("old name")
    session = make_session(client=client)

    staff_client.post(url("apiclient_change", client.pk), {"name": "new name", "is_active": ""})
    client.refresh_from_db()
    assert client.name == "new name" and not client.is_active

    other = make_client("other")
    staff_client.post(url("apiclient_changelist"), {"action": "deactivate", "_selected_action": [other.pk]})
    other.refresh_from_db()
    assert not other.is_active
    assert staff_client.post(url("apiclient_delete", client.pk), {"post": "yes"}).status_code == 403
    assert ChatSession.objects.filter(pk=session.pk).exists()
    listing = staff_client.get(url("apiclient_changelist")).content.decode()
    assert "last used" in listing.lower()


def test_admin_index_links_to_the_usage_dashboard(staff_client):
    html = staff_client.get(reverse("admin:index")).content.decode()
    assert url("reply_dashboard") in html


def test_search_for_a_common_word_checks_conversations_in_list_order(staff_client, monkeypatch):
    from sessions_admin import admin as sessions_admin_admin

    monkeypatch.setattr(sessions_admin_admin, "SEARCH_ID_LIMIT", 2)
    with_word = []
    for number in range(4):
        conversation = make_conversation(make_session(session_id=f"w{number}"))
        make_turn(conversation, question=f"a common word, number {number}")
        with_word.append(conversation.pk)
    make_chat(turns=1, session_id="without")
    by_id = make_chat(turns=1, session_id="common")[1]

    response = staff_client.get(url("conversation_changelist"), {"q": "common"})

    assert {row.pk for row in response.context["cl"].result_list} == {*with_word, by_id.pk}


def test_session_page_lists_its_conversations_with_links_to_their_transcripts(staff_client):
    session = make_session(session_id="twice")
    first = make_conversation(session, coze_id="conv-first")
    make_turn(first)
    second = make_conversation(session, coze_id="conv-second")
    make_turn(second)

    html = staff_client.get(url("chatsession_change", session.pk)).content.decode()

    assert url("conversation_change", first.pk) in html and url("conversation_change", second.pk) in html
    assert "conv-second</a> · 2 messages" in html and "(current)" in html


def test_admin_index_hides_the_dashboard_link_without_permission(staff_without_permissions_client):
    response = staff_without_permissions_client.get(reverse("admin:index"))
    assert response.status_code == 200
    assert url("reply_dashboard") not in response.content.decode()


def test_a_reply_page_shows_how_a_resumable_reply_ended_and_how_often_it_was_resumed(staff_client):
    conversation = make_conversation(make_session())
    alone = make_turn(conversation)
    Reply.objects.filter(pk=alone.pk).update(resumable=True, ended_without_client=True, resume_count=3)
    watched = make_turn(conversation, status="cancelled")
    Reply.objects.filter(pk=watched.pk).update(resumable=True, ended_without_client=False)
    plain = make_turn(conversation)

    alone_page = staff_client.get(url("reply_change", alone.pk)).content.decode()
    watched_page = staff_client.get(url("reply_change", watched.pk)).content.decode()
    plain_page = staff_client.get(url("reply_change", plain.pk)).content.decode()
    resumable_only = staff_client.get(url("reply_changelist"), {"resumable__exact": "1"}).context["cl"].result_list

    assert "yes: ran on after its client left, then completed" in alone_page
    assert '<div class="readonly">3</div>' in alone_page
    assert "yes: cancelled with its client reading" in watched_page
    assert '<div class="readonly">no</div>' in plain_page
    assert {reply.pk for reply in resumable_only} == {alone.pk, watched.pk}
