"""Budgets in admin: each client's use against its budgets (a bar per budget), the alerts sent,
and the dashboard's spend per client."""

from datetime import UTC, date, datetime

from django.urls import reverse

from sessions_admin.dashboard import client_budgets
from sessions_admin.models import ApiClient, BudgetAlert, DailyUsage


def url(name: str, *args) -> str:
    return reverse(f"admin:sessions_admin_{name}", args=args)


def spend(client: ApiClient, day: date, tokens: int, bot_id: str = "bot") -> None:
    DailyUsage.objects.create(day=day, bot_id=bot_id, owner_key=client.owner_key, replies=1, total_tokens=tokens)


def test_the_client_list_shows_a_bar_per_budget(staff_client, db):
    today = datetime.now(UTC).date()
    client, _ = ApiClient.create_with_key(name="team-a", daily_token_budget=1000, monthly_token_budget=10_000)
    spend(client, today, 250)
    spend(client, today, 50, bot_id="other bot")
    if today.day > 1:
        spend(client, today.replace(day=1), 700)
    ApiClient.create_with_key(name="team-b")

    page = staff_client.get(url("apiclient_changelist")).content.decode()

    month = 300 + (700 if today.day > 1 else 0)
    assert '<progress value="300" max="1000"></progress> 300 of 1,000 tokens (30%)' in page
    assert f'<progress value="{month}" max="10000"></progress> {month:,} of 10,000 tokens' in page
    assert "0 tokens (no budget)" in page


def test_the_client_page_shows_use_and_alerts_sent_and_a_budget_can_be_raised(staff_client, db):
    today = datetime.now(UTC).date()
    client, _ = ApiClient.create_with_key(name="team-a", daily_token_budget=100)
    spend(client, today, 120)
    BudgetAlert.objects.create(
        api_client=client,
        period="day",
        period_start=today,
        threshold=100,
        used=120,
        limit=100,
        attempts=1,
        delivered_at=datetime.now(UTC),
    )

    page = staff_client.get(url("apiclient_change", client.pk)).content.decode()
    saved = staff_client.post(
        url("apiclient_change", client.pk),
        {"name": "team-a", "is_active": "on", "daily_token_budget": "5000", "allowed_bot_ids": ""},
    )

    assert '<progress value="100" max="100"></progress> 120 of 100 tokens (120%)' in page
    assert "100%</td><td>120 of 100</td><td>delivered" in page
    assert saved.status_code == 302
    client.refresh_from_db()
    assert client.daily_token_budget == 5000 and client.monthly_token_budget is None
    alerts = staff_client.get(url("budgetalert_changelist")).content.decode()
    assert "team-a" in alerts and "delivered" in alerts


def test_the_dashboard_shows_spend_per_client_against_budget_most_used_first(staff_client, db):
    today = datetime.now(UTC).date()
    low, _ = ApiClient.create_with_key(name="low", daily_token_budget=1000)
    high, _ = ApiClient.create_with_key(name="high <b>", monthly_token_budget=100)
    ApiClient.create_with_key(name="idle")
    spend(low, today, 100)
    spend(high, today, 90)

    rows = client_budgets()
    page = staff_client.get(url("reply_dashboard")).content.decode()

    assert [(row.name, row.today_tokens, row.month_tokens) for row in rows] == [("high <b>", 90, 90), ("low", 100, 100)]
    assert 'id="client-budgets"' in page and "high &lt;b&gt;" in page
    assert "90 of 100 tokens (90%)" in page and "100 of 1,000 tokens (10%)" in page
