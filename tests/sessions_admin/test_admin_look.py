"""What staff read in admin: the site's name, the token usage list's compact columns, and proper
labels for the transports."""

import pytest
from django.urls import reverse

from sessions_admin.admin import milliseconds_text
from sessions_admin.models import Reply
from tests.sessions_admin.factories import make_client, make_conversation, make_session, make_turn

pytestmark = pytest.mark.django_db


def test_admin_pages_name_the_project(staff_client, client):
    index = staff_client.get(reverse("admin:index")).content.decode()
    login = client.get(reverse("admin:login")).content.decode()
    assert '<a href="/admin/">cozeproject admin</a>' in index
    assert "<title>Chat records and API clients | cozeproject admin</title>" in index
    assert "Django administration" not in index and "Django site admin" not in index
    assert "cozeproject admin" in login and "Django administration" not in login


def test_transport_filter_and_rows_use_proper_labels(staff_client):
    conversation = make_conversation(make_session())
    for transport in Reply.Transport:
        make_turn(conversation, transport=transport)
    html = staff_client.get(reverse("admin:sessions_admin_reply_changelist")).content.decode()
    for label in ("SSE", "WebSocket", "Compatibility paths", "Sync API"):
        assert f">{label}</a>" in html  # the filter
        assert f'<td class="field-transport">{label}</td>' in html  # the rows
    for crude in ("Sse", "Websocket", ">Compat<", ">Sync<"):
        assert crude not in html


def test_usage_rows_are_compact_with_the_whole_values_in_tooltips(staff_client):
    session = make_session(client=make_client("analytics"), session_id="s" * 40, bot_id="7500000000000000002")
    make_turn(make_conversation(session), input_tokens=128_000, output_tokens=32_768, ttft_ms=850, duration_ms=95_432)
    html = staff_client.get(reverse("admin:sessions_admin_reply_changelist")).content.decode()
    assert f'title="{"s" * 40} (transcript)">{"s" * 40}</a>' in html
    assert '<span class="cut" title="7500000000000000002">7500000000000000002</span>' in html
    assert '160,768<span class="tokens-split" title="input · output tokens">128,000 · 32,768</span>' in html
    assert '<span title="850 ms">850 ms</span>' in html
    assert '<span title="95,432 ms">1:35 min</span>' in html


def test_latencies_read_in_the_unit_that_fits():
    assert milliseconds_text(None) is None
    assert milliseconds_text(999) == '<span title="999 ms">999 ms</span>'
    assert milliseconds_text(12_345) == '<span title="12,345 ms">12.3 s</span>'
    assert milliseconds_text(245_000) == '<span title="245,000 ms">4:05 min</span>'
