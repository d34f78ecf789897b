"""The usage dashboard's numbers against known records, and its SVG charts.

Records are made with the factories, which add each ended reply to the daily rollup through the
same call as the chat service (`record_reply`), so the dashboard reads what production would.
"""

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.urls import reverse

from sessions_admin import dashboard, rollup
from sessions_admin.models import TTFT_BUCKET_FIELDS, Reply
from tests.sessions_admin.factories import make_client, make_conversation, make_session, make_turn, make_user

NOW = datetime(2026, 3, 10, 15, 0, tzinfo=UTC)


def at(days_ago: int, hour: int = 12) -> datetime:
    return (NOW - timedelta(days=days_ago)).replace(hour=hour, minute=0)


@pytest.fixture
def usage(db):
    """Two bots, three owners, replies over three days (and one outside the window), in the order they happened."""
    acme = make_client("acme")
    ada = make_user("ada")
    acme_chat = make_conversation(make_session(client=acme, session_id="acme-1", bot_id="bot-a"))
    ada_chat = make_conversation(make_session(user=ada, session_id="ada-1", bot_id="bot-b"))
    browser_chat = make_conversation(make_session(browser="c" * 32, session_id="anon-1", bot_id="bot-a"))
    # outside a 7-day window
    make_turn(acme_chat, input_tokens=1000, output_tokens=1000, ttft_ms=9999, started_at=at(20))
    # two days ago
    make_turn(browser_chat, input_tokens=5, output_tokens=5, ttft_ms=200, started_at=at(2))
    cut = {"input_tokens": 0, "output_tokens": 4}
    make_turn(browser_chat, status=Reply.Status.INTERRUPTED, ttft_ms=400, started_at=at(2, 13), **cut)
    make_turn(browser_chat, status=Reply.Status.CANCELLED, ttft_ms=600, started_at=at(2, 14), **cut)
    # today
    make_turn(acme_chat, input_tokens=100, output_tokens=50, ttft_ms=100, started_at=at(0, 9))
    make_turn(acme_chat, input_tokens=200, output_tokens=100, ttft_ms=300, started_at=at(0, 10))
    make_turn(ada_chat, input_tokens=10, output_tokens=10, ttft_ms=500, started_at=at(0, 11))
    make_turn(ada_chat, status=Reply.Status.FAILED, input_tokens=0, output_tokens=0, ttft_ms=None, started_at=at(0, 12))
    return {"acme": acme, "ada": ada}


def test_dashboard_totals_per_day_and_per_bot(usage):
    board = dashboard.usage_dashboard(days=7, now=NOW)

    assert board.start == NOW.date() - timedelta(days=6) and board.end == NOW.date()
    assert len(board.days) == 7
    today, two_days_ago = board.days[-1], board.days[-3]
    assert today.tokens_by_bot == {"bot-a": 450, "bot-b": 20}
    assert two_days_ago.tokens_by_bot == {"bot-a": 18}
    assert (today.replies, today.errors) == (4, 1)
    assert (two_days_ago.replies, two_days_ago.errors) == (3, 1)  # interrupted counts, a user's cancel doesn't
    assert today.error_rate == 0.25
    assert board.days[0].replies == 0 and board.days[0].tokens_by_bot == {}
    assert (board.replies, board.errors, board.tokens) == (7, 2, 488)
    assert (board.input_tokens, board.output_tokens) == (315, 173)
    assert board.bots == ["bot-a", "bot-b"]  # most tokens first


def same_bucket(estimate: float, exact: float) -> bool:
    return rollup.ttft_bucket(round(estimate)) == rollup.ttft_bucket(round(exact))


def test_dashboard_time_to_first_token_average_and_estimated_p95(usage):
    board = dashboard.usage_dashboard(days=7, now=NOW)

    today, two_days_ago = board.days[-1], board.days[-3]
    assert today.ttft_avg_ms == 300  # 100, 300, 500; the failed reply had none
    # p95 is estimated from the histogram: the 95% rank (0.95 * 3 = 2.85) falls in the [400, 566)
    # bucket, interpolated 0.85 of the way; the exact percentile_cont (480) is in that bucket too.
    assert today.ttft_p95_ms == pytest.approx(400 + 0.85 * (566 - 400))
    assert same_bucket(today.ttft_p95_ms, dashboard.percentile([100, 300, 500], 0.95))
    assert two_days_ago.ttft_avg_ms == 400
    assert two_days_ago.ttft_p95_ms == pytest.approx(566 + 0.85 * (800 - 566))  # exact: 580
    assert same_bucket(two_days_ago.ttft_p95_ms, dashboard.percentile([200, 400, 600], 0.95))
    assert board.ttft_avg_ms == pytest.approx(350)
    assert board.ttft_p95_ms == pytest.approx(566 + 0.7 * (800 - 566))  # rank 5.7 of 6
    assert same_bucket(board.ttft_p95_ms, dashboard.percentile([100, 300, 500, 200, 400, 600], 0.95))
    assert board.days[-2].ttft_avg_ms is None and board.days[-2].ttft_p95_ms is None


def test_histogram_percentile_interpolates_within_the_bucket_of_the_rank():
    buckets = [0] * len(TTFT_BUCKET_FIELDS)
    assert dashboard.histogram_percentile(buckets, 0.95) is None
    buckets[rollup.ttft_bucket(30)] = 10  # [0, 50)
    assert dashboard.histogram_percentile(buckets, 0.5) == pytest.approx(25)
    buckets[rollup.ttft_bucket(1000)] = 10  # [800, 1131)
    assert dashboard.histogram_percentile(buckets, 0.95) == pytest.approx(800 + 0.9 * 331)
    buckets[-1] = 100  # 25.6 s and more: open-ended, so its lower bound
    assert dashboard.histogram_percentile(buckets, 0.95) == 25600


def test_dashboard_top_owners_and_sessions_by_tokens(usage):
    board = dashboard.usage_dashboard(days=7, now=NOW)

    assert [(entry.label, entry.tokens, entry.replies) for entry in board.top_owners] == [
        ("API client acme", 450, 2),
        ("user ada", 20, 2),
        ("anonymous browser cccccccc", 18, 3),
    ]
    assert board.top_owners[0].url_filter == f"owner={usage['acme'].owner_key}"
    assert [(entry.label, entry.tokens) for entry in board.top_sessions] == [
        ("acme-1 (API client acme)", 450),
        ("ada-1 (user ada)", 20),
        ("anon-1 (anonymous browser cccccccc)", 18),
    ]


@pytest.fixture
def heavy_history(db):
    """Two sessions whose lifetime tokens are mostly from before the window, and one busy in it."""
    old, recent = at(40), at(1)
    for name, old_tokens, recent_tokens in (("veteran", 1000, 1), ("regular", 900, 2), ("newcomer", 0, 50)):
        chat = make_conversation(make_session(session_id=name))
        if old_tokens:
            make_turn(chat, input_tokens=old_tokens, output_tokens=0, started_at=old)
        make_turn(chat, input_tokens=recent_tokens, output_tokens=0, started_at=recent)


def test_top_sessions_count_only_the_window_even_when_lifetime_totals_rank_them_otherwise(heavy_history):
    # By lifetime tokens the newcomer comes last; the first batch (veteran, regular) can't rule it out.
    top = dashboard.usage_dashboard(days=7, top=1, now=NOW).top_sessions
    assert [(entry.label.split()[0], entry.tokens, entry.replies) for entry in top] == [("newcomer", 50, 1)]
    top = dashboard.usage_dashboard(days=7, top=3, now=NOW).top_sessions
    ranked = [(entry.label.split()[0], entry.tokens) for entry in top]
    assert ranked == [("newcomer", 50), ("regular", 2), ("veteran", 1)]


def test_top_sessions_group_the_window_when_too_many_candidates_are_needed(heavy_history, monkeypatch):
    monkeypatch.setattr(dashboard, "TOP_SESSION_CANDIDATES", 2)
    top = dashboard.usage_dashboard(days=7, top=1, now=NOW).top_sessions
    assert [(entry.label.split()[0], entry.tokens, entry.replies) for entry in top] == [("newcomer", 50, 1)]


def test_a_wider_window_includes_older_replies(usage):
    assert dashboard.usage_dashboard(days=30, now=NOW).tokens == 2488


def test_percentile_matches_sql_percentile_cont():
    assert dashboard.percentile([], 0.95) is None
    assert dashboard.percentile([7], 0.95) == 7
    assert dashboard.percentile([1, 2, 3, 4], 0.5) == 2.5
    assert dashboard.percentile([10, 20, 30, 40, 50], 0.95) == pytest.approx(48)


def test_token_cost_prices_input_and_output_tokens_each(settings):
    settings.CHAT_TOKEN_PRICE_PER_1K = None
    settings.CHAT_PRICE_PER_1K_INPUT_TOKENS = None
    settings.CHAT_PRICE_PER_1K_OUTPUT_TOKENS = None
    assert dashboard.token_cost(1000, 1000) is None
    settings.CHAT_PRICE_PER_1K_INPUT_TOKENS = "0.5"
    assert dashboard.token_cost(1000, 1000) is None  # half the prices is no estimate
    settings.CHAT_PRICE_PER_1K_OUTPUT_TOKENS = "2"
    assert str(dashboard.token_cost(3000, 1000)) == "3.50"
    # One price for both, where either is unset.
    settings.CHAT_PRICE_PER_1K_OUTPUT_TOKENS = None
    settings.CHAT_TOKEN_PRICE_PER_1K = "1"
    assert str(dashboard.token_cost(3000, 1000)) == "2.50"


def test_nice_ticks_and_compact_numbers():
    assert dashboard.nice_ticks(0) == [0, 1]
    assert dashboard.nice_ticks(95) == [0, 25, 50, 75, 100]
    assert dashboard.nice_ticks(1_234_567)[-1] >= 1_234_567
    assert dashboard.compact(12) == "12"
    assert dashboard.compact(12_300) == "12.3k"
    assert dashboard.compact(4_000_000) == "4M"


def test_charts_are_svg_with_escaped_labels_and_one_bar_per_day_and_bot():
    labels = ["Mar 01", "Mar 02"]
    svg = dashboard.stacked_bar_chart(labels, [("<bot & co>", [10, 0]), ("bot-b", [5, 5])], title='Tokens "per" day')

    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert "<bot" not in svg and "&lt;bot &amp; co&gt;" in svg
    assert len(re.findall(r"<rect x=", svg)) == 3 + 2  # three non-zero bars, two legend swatches
    assert "Mar 01 · bot-b: 5" in svg


def test_line_chart_leaves_gaps_for_days_without_data():
    svg = dashboard.line_chart(["a", "b", "c", "d"], [("p95", [100, None, 300, 400])], title="t", unit=" ms")
    assert svg.count("<polyline") == 2
    assert "c · p95: 300 ms" in svg


def test_horizontal_bars_link_and_escape():
    svg = dashboard.horizontal_bar_chart([("<evil>", 10, "/x?owner=a&b=1")], title="top")
    assert "&lt;evil&gt;" in svg and 'href="/x?owner=a&amp;b=1"' in svg
    assert "No usage yet" in dashboard.horizontal_bar_chart([], title="top")


def test_dashboard_page_shows_the_charts_and_numbers(usage, staff_client):
    make_turn(
        make_conversation(make_session(session_id="recent")), input_tokens=1, output_tokens=1, ttft_ms=50
    )  # today, for a window ending now

    response = staff_client.get(reverse("admin:sessions_admin_reply_dashboard"), {"days": 30})

    html = response.content.decode()
    assert response.status_code == 200
    for chart in ("chart-tokens", "chart-replies", "chart-ratings", "chart-ttft", "chart-owners", "chart-sessions"):
        assert f'id="{chart}"' in html
    assert html.count('<svg class="chart"') == 6
    assert "<script" not in html.split('id="content-main"')[1]
    board = response.context["board"]
    assert board.replies >= 1 and len(board.days) == 30


def test_dashboard_page_is_cached_and_can_be_refreshed(db, staff_client):
    page = reverse("admin:sessions_admin_reply_dashboard")
    assert staff_client.get(page).context["board"].replies == 0
    make_turn(make_conversation(make_session()))

    assert staff_client.get(page).context["board"].replies == 0  # cached
    assert staff_client.get(page, {"refresh": 1}).context["board"].replies == 1
    assert staff_client.get(page, {"days": "nonsense"}).status_code == 200
