"""Staff review in admin: ratings (filters, transcript, dashboard), how replies ended, what each page
counts, prices, owners by name, budgets over their limit."""

from datetime import UTC, datetime, timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from sessions_admin import admin as records_admin
from sessions_admin import dashboard
from sessions_admin import feedback as fb
from sessions_admin.models import ApiClient, BudgetAlert, DailyUsage, Message, Reply
from tests.sessions_admin.factories import make_client, make_conversation, make_session, make_turn, make_user

pytestmark = pytest.mark.django_db
CONVERSATIONS = reverse("admin:sessions_admin_conversation_changelist")


def answer_of(reply: Reply) -> Message:
    return reply.messages.get(kind=Message.Kind.ANSWER)


def listed(staff_client, **query) -> set[str]:
    response = staff_client.get(CONVERSATIONS, query)
    assert response.status_code == 200
    return {row.session.session_id for row in response.context["cl"].result_list}


def rate(reply: Reply, rating: str, comment: str = "") -> None:
    fb.feedback_set(owner_key=reply.owner_key, message_id=answer_of(reply).pk, rating=rating, comment=comment)


@pytest.fixture
def rated():
    client = make_client("shop")
    chats = {}
    for name in ("liked", "disliked", "both", "unrated"):
        conversation = make_conversation(make_session(client=client, session_id=name))
        chats[name] = [make_turn(conversation), make_turn(conversation)]
    rate(chats["liked"][0], "up")
    rate(chats["disliked"][1], "down", "wrong")
    rate(chats["both"][0], "up")
    rate(chats["both"][1], "down")
    return chats


def test_conversations_filter_by_rating(staff_client, rated):
    assert listed(staff_client, rating="down") == {"disliked", "both"}
    assert listed(staff_client, rating="up") == {"liked", "both"}
    assert listed(staff_client, rating="any") == {"liked", "disliked", "both"}
    assert listed(staff_client) == {"liked", "disliked", "both", "unrated"}
    filters = staff_client.get(CONVERSATIONS).content.decode()
    assert "Has a thumbs-down" in filters and "Has a thumbs-up" in filters


def test_conversations_filter_by_any_reply_ending_each_way(staff_client):
    by_status = {}
    for status in Reply.Status:
        by_status[status] = {f"has-{status}-1", f"has-{status}-2"}
        for session_id in by_status[status]:
            conversation = make_conversation(make_session(session_id=session_id))
            make_turn(conversation, status=status)
            # Later replies end otherwise: the filter is about any reply, not the last one.
            make_turn(conversation, status=Reply.Status.COMPLETED)
    everyone = set().union(*by_status.values())
    for status in Reply.Status:
        expected = by_status[status] if status != Reply.Status.COMPLETED else everyone
        assert listed(staff_client, reply_status=status) == expected, status
    html = staff_client.get(CONVERSATIONS).content.decode()
    for label in ("waiting for tool outputs (requires_action)", "interrupted (its worker died)", "still in progress"):
        assert label in html


def test_the_transcript_shows_each_rating_and_comment_beside_its_answer(staff_client, rated):
    disliked = rated["disliked"]
    fb.feedback_set(
        owner_key=disliked[0].owner_key, message_id=answer_of(disliked[0]).pk, rating="up", comment="<b>great</b>"
    )
    url = reverse("admin:sessions_admin_conversation_change", args=[disliked[0].conversation_id])
    html = staff_client.get(url).content.decode()

    def beside(message: Message) -> str:
        return html.split(f'id="message-{message.pk}"')[1].split('<div class="meta">')[0]

    assert "👍 rated up: <q>&lt;b&gt;great&lt;/b&gt;</q>" in beside(answer_of(disliked[0]))
    assert "👎 rated down: <q>wrong</q>" in beside(answer_of(disliked[1]))
    assert "<b>great</b>" not in html
    assert "1 up · 1 down" in html  # the summary line's count


def test_the_transcript_comes_first_and_the_fields_fold_away(staff_client, rated):
    url = reverse("admin:sessions_admin_conversation_change", args=[rated["liked"][0].conversation_id])
    html = staff_client.get(url).content.decode()
    assert html.index('id="conversation-facts"') < html.index('id="transcript"')
    assert "<details" in html.split('id="conversation-facts"')[1].split('id="transcript"')[0]


def test_the_dashboard_shows_the_share_of_rated_answers_rated_down_per_day(staff_client, rated):
    now = timezone.now()
    old = make_conversation(make_session(session_id="old"))
    rate(make_turn(old, started_at=now - timedelta(days=3)), "down")

    board = dashboard.usage_dashboard(days=7)
    today = board.days[-1]
    three_days_ago = board.days[-4]
    assert (today.rated_up, today.rated_down) == (2, 2) and today.down_share == 0.5
    assert (three_days_ago.rated_up, three_days_ago.rated_down) == (0, 1)
    assert (board.rated, board.rated_down) == (5, 3)

    html = staff_client.get(reverse("admin:sessions_admin_reply_dashboard"), {"days": 7}).content.decode()
    card = html.split('id="rated-down-share"')[1].split("</div>")[0]
    assert "60.0%" in card and "of 5 rated answers rated down" in card
    assert 'id="chart-ratings"' in html and "rated down: 50.0%" in html


def test_each_page_says_what_it_counts(staff_client, rated):
    pages = {
        "conversation_changelist": "clearing a session starts a new conversation",
        "chatsession_changelist": "scoped to its owner",
        "reply_changelist": "these totals can be lower than the usage dashboard",
        "reply_dashboard": "which count every reply as it ends",
    }
    for name, words in pages.items():
        assert words in staff_client.get(reverse(f"admin:sessions_admin_{name}")).content.decode(), name


def test_the_index_links_each_page_once_and_explains_the_records(staff_client):
    html = staff_client.get(reverse("admin:index")).content.decode()
    guide = html.split('id="records-guide"')[1].split("</table>")[0]
    assert "A session has one or more conversations" in guide
    # The guide's link, and the app list's name and "View" link: one page, one name.
    assert html.count(f'href="{reverse("admin:sessions_admin_reply_changelist")}"') == 3
    assert "Token usage per reply" not in html
    # The guide is inside the main column, so the sidebar ("Recent actions") lines up with it.
    assert html.index('id="content-main"') < html.index('id="records-guide"') < html.index('id="content-related"')


def test_costs_appear_only_with_token_prices_and_otherwise_say_how_to_get_them(staff_client, settings):
    settings.CHAT_TOKEN_PRICE_PER_1K = None
    settings.CHAT_PRICE_PER_1K_INPUT_TOKENS = None
    settings.CHAT_PRICE_PER_1K_OUTPUT_TOKENS = None
    reply = make_turn(make_conversation(make_session()), input_tokens=2000, output_tokens=1000)
    pages = [
        reverse("admin:sessions_admin_conversation_change", args=[reply.conversation_id]),
        reverse("admin:sessions_admin_chatsession_change", args=[reply.session_id]),
        reverse("admin:sessions_admin_reply_change", args=[reply.pk]),
    ]
    for page in pages:
        html = staff_client.get(page).content.decode()
        assert "Estimated cost" not in html and "set CHAT_" not in html, page
    usage = staff_client.get(reverse("admin:sessions_admin_reply_changelist")).content.decode()
    board = staff_client.get(reverse("admin:sessions_admin_reply_dashboard"), {"refresh": 1}).content.decode()
    for html in (usage, board):
        assert "no token prices set" in html and "CHAT_PRICE_PER_1K_INPUT_TOKENS" in html

    settings.CHAT_PRICE_PER_1K_INPUT_TOKENS = "1"
    settings.CHAT_PRICE_PER_1K_OUTPUT_TOKENS = "4"
    for page in pages:
        assert "≈ 6.00" in staff_client.get(page).content.decode(), page  # 2 at 1, and 1 at 4
    assert "≈ 6.00" in staff_client.get(reverse("admin:sessions_admin_reply_changelist")).content.decode()


def test_an_owner_picked_from_a_row_is_named_not_keyed(staff_client):
    user = make_user("alice")
    make_conversation(make_session(user=user, session_id="hers"))
    html = staff_client.get(CONVERSATIONS, {"owner": f"user:{user.pk}"}).content.decode()
    filters = html.split('id="changelist-filter"')[1]
    assert "user alice" in filters and f">user:{user.pk}<" not in filters
    gone = dashboard.owner_labels(["client:999", "user:998", "client:x"])
    assert gone == {
        "client:999": "API client #999 (deleted)",
        "user:998": "user #998 (deleted)",
        "client:x": "client:x",
    }


def test_an_over_budget_client_shows_red(staff_client):
    today = datetime.now(UTC).date()
    over = make_client("over")
    ApiClient.objects.filter(pk=over.pk).update(daily_token_budget=100)
    under = make_client("under")
    ApiClient.objects.filter(pk=under.pk).update(daily_token_budget=1000)
    for client, tokens in ((over, 150), (under, 10)):
        DailyUsage.objects.create(day=today, bot_id="b", owner_key=client.owner_key, replies=1, total_tokens=tokens)

    listing = staff_client.get(reverse("admin:sessions_admin_apiclient_changelist")).content.decode()
    board = staff_client.get(reverse("admin:sessions_admin_reply_dashboard")).content.decode()
    for html in (listing, board):
        assert html.count('class="budget-use over-budget"') == 1
        assert "150 of 100 tokens (150%)<strong> over budget</strong>" in html
        assert ".budget-use.over-budget" in html  # the stylesheet that makes it red
    page = staff_client.get(reverse("admin:sessions_admin_apiclient_change", args=[over.pk])).content.decode()
    assert 'class="budget-use over-budget"' in page and ".budget-use.over-budget" in page


def test_alerts_recorded_without_a_webhook_say_so(staff_client, settings):
    settings.CHAT_BUDGET_ALERT_WEBHOOK = ""
    client = make_client("quiet")
    BudgetAlert.objects.create(
        api_client=client, period="day", period_start=timezone.now().date(), threshold=100, used=120, limit=100
    )
    html = staff_client.get(reverse("admin:sessions_admin_budgetalert_changelist")).content.decode()
    assert "recorded (no CHAT_BUDGET_ALERT_WEBHOOK set)" in html


def test_the_outbox_to_coze_is_listed_by_state(staff_client, rated):
    from sessions_admin.models import FeedbackForward

    FeedbackForward.objects.filter(pk=FeedbackForward.objects.order_by("pk").first().pk).update(
        attempts=fb.MAX_FORWARD_ATTEMPTS, last_error="HTTP 502"
    )
    url = reverse("admin:sessions_admin_feedbackforward_changelist")
    assert len(staff_client.get(url, {"state": "pending"}).context["cl"].result_list) == 3
    given_up = staff_client.get(url, {"state": "given_up"})
    assert len(given_up.context["cl"].result_list) == 1 and "HTTP 502" in given_up.content.decode()


@pytest.mark.parametrize("limit", [5_000, 0])  # rare: by the replies' ids; common: each conversation's last reply
def test_the_last_reply_status_filter_finds_the_same_either_way(staff_client, monkeypatch, limit):
    monkeypatch.setattr(records_admin, "STATUS_ID_LIMIT", limit)
    expected = {}
    for status in (Reply.Status.FAILED, Reply.Status.CANCELLED, Reply.Status.INTERRUPTED, Reply.Status.COMPLETED):
        conversation = make_conversation(make_session(session_id=f"last-{status}"))
        make_turn(conversation, status=Reply.Status.FAILED)  # an earlier failure doesn't count
        make_turn(conversation, status=status)
        expected[status] = f"last-{status}"
    assert listed(staff_client, status="failed") == {expected[Reply.Status.FAILED]}
    assert listed(staff_client, status="cut") == {expected[Reply.Status.CANCELLED], expected[Reply.Status.INTERRUPTED]}


def test_counts_read_in_the_singular_when_there_is_one(staff_client):
    session = make_session(session_id="single")
    conversation = make_conversation(session, coze_id="conv-one")
    make_turn(conversation, answer=None, status=Reply.Status.FAILED)  # the question alone: one message
    html = staff_client.get(reverse("admin:sessions_admin_chatsession_change", args=[session.pk])).content.decode()
    assert "conv-one</a> · 1 message · 30 tokens" in html
    assert records_admin.plural(1, "attempt") == "1 attempt"
    assert records_admin.plural(2_000, "client") == "2,000 clients"
