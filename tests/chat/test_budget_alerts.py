"""Budget alerts (docs/api.md §11): a POST to CHAT_BUDGET_ALERT_WEBHOOK once per client, period and
threshold, retried with backoff after a failure, never in the way of a chat — against a small
HTTP server run by the test."""

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client

from chat.access import alerts, budgets, client_limits
from sessions_admin.models import ApiClient, BudgetAlert, DailyUsage
from tests.chat.limits_helpers import TRANSPORTS, client_owner, reset_counters, send_turn
from tests.conftest import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


class Webhook:
    """A local HTTP endpoint: records each POSTed JSON body and answers with the next of
    `statuses` (200 once they run out); with `hang` set, holds each request until `release`."""

    def __init__(self):
        self.received: list[dict] = []
        self.statuses: list[int] = []
        self.hang = False
        self.holding = threading.Event()
        self.release = threading.Event()
        webhook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                webhook.received.append(body)
                if webhook.hang:
                    webhook.holding.set()
                    webhook.release.wait(30)
                status = webhook.statuses.pop(0) if webhook.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/budget-alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook(settings, monkeypatch):
    monkeypatch.setattr(alerts, "RETRY_BASE_SECONDS", 0.05)
    with Webhook() as server:
        settings.CHAT_BUDGET_ALERT_WEBHOOK = server.url
        yield server


@pytest.fixture(autouse=True)
def fresh_counters():
    reset_counters()
    yield
    reset_counters()


def tokens_of_one_reply(url: str) -> int:
    """What one "hi" costs in a fresh session (the simulator's usage is deterministic)."""
    _, key = ApiClient.create_with_key(name="measure")
    return send_turn(url, key, "sync").tokens


def test_each_threshold_is_alerted_once_per_client_and_period(asgi_server, webhook, settings):
    settings.CHAT_BUDGET_ALERT_THRESHOLDS = [80, 95, 100]
    tokens = tokens_of_one_reply(asgi_server.url)
    budget = int(tokens * 100 / 85)  # one reply: 85 to 95 % of it
    client, key = ApiClient.create_with_key(name="team-a", daily_token_budget=budget)

    assert send_turn(asgi_server.url, key, "sync").status == 200
    wait_until(lambda: len(webhook.received) == 1)
    assert send_turn(asgi_server.url, key, "sse").status == 200  # under 100 %: allowed, and crosses it
    wait_until(lambda: len(webhook.received) == 3)
    assert send_turn(asgi_server.url, key, "websocket").code == "quota_exceeded"

    expected = [
        {"client": "team-a", "period": "day", "used": tokens, "limit": budget, "threshold": 80},
        {"client": "team-a", "period": "day", "used": 2 * tokens, "limit": budget, "threshold": 95},
        {"client": "team-a", "period": "day", "used": 2 * tokens, "limit": budget, "threshold": 100},
    ]
    assert sorted(webhook.received, key=lambda body: body["threshold"]) == expected
    wait_until(lambda: BudgetAlert.objects.filter(delivered_at__isnull=False).count() == 3)
    # Noticing the same use again (another worker, a later reply) sends nothing new.
    at_limits = client_limits.limits_for(client_owner(client))
    assert alerts.record_alerts(api_client_id=client.pk, owner_key=client.owner_key, budget_limits=at_limits) == []
    assert len(webhook.received) == 3


def test_workers_noticing_the_same_crossing_at_once_send_each_alert_once(webhook, settings):
    settings.CHAT_BUDGET_ALERT_THRESHOLDS = [50, 100]
    client, _ = ApiClient.create_with_key(name="raced", monthly_token_budget=1)
    # The client's replies as the rollup has them (four workers will notice them at once).
    DailyUsage.objects.create(day=budgets.now().date(), bot_id="bot", owner_key=client.owner_key, total_tokens=7)
    budget_limits = client_limits.limits_for(client_owner(client))
    to_send: list[int] = []
    start = threading.Barrier(4)

    def worker():
        start.wait()
        try:
            to_send.extend(
                alerts.record_alerts(api_client_id=client.pk, owner_key=client.owner_key, budget_limits=budget_limits)
            )
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    async def deliver_all():
        return await asyncio.gather(*[alerts.adeliver(pk) for pk in to_send])

    sent = asyncio.run(deliver_all())

    assert sorted(BudgetAlert.objects.values_list("period", "threshold")) == [("month", 50), ("month", 100)]
    assert sent.count(True) == 2
    assert sorted(body["threshold"] for body in webhook.received) == [50, 100]


def test_a_failed_delivery_is_retried_with_backoff(asgi_server, webhook, settings):
    settings.CHAT_BUDGET_ALERT_THRESHOLDS = [100]
    webhook.statuses = [500, 503]
    _, key = ApiClient.create_with_key(name="retried", daily_token_budget=1)

    assert send_turn(asgi_server.url, key, "sync").status == 200

    alert = wait_until(lambda: BudgetAlert.objects.filter(delivered_at__isnull=False).first())
    assert alert.attempts == 3 and alert.last_error == ""
    assert [body["threshold"] for body in webhook.received] == [100, 100, 100]


def test_a_hanging_webhook_never_holds_up_a_chat(asgi_server, webhook, settings):
    settings.CHAT_BUDGET_ALERT_THRESHOLDS = [10]
    webhook.hang = True
    tokens = tokens_of_one_reply(asgi_server.url)
    _, key = ApiClient.create_with_key(name="patient", daily_token_budget=tokens * 10)

    assert send_turn(asgi_server.url, key, "sync").status == 200
    assert webhook.holding.wait(10)  # the alert's POST is in the webhook, unanswered
    answers = [send_turn(asgi_server.url, key, transport).status for transport in TRANSPORTS]

    assert answers == [200] * len(TRANSPORTS)
    assert not webhook.release.is_set() and BudgetAlert.objects.get().delivered_at is None
    webhook.release.set()
    wait_until(lambda: BudgetAlert.objects.get().delivered_at is not None)
    assert len(webhook.received) == 1


def test_an_unreachable_webhook_never_breaks_chatting_and_is_given_up_after_the_last_attempt(
    asgi_server, settings, monkeypatch
):
    monkeypatch.setattr(alerts, "RETRY_BASE_SECONDS", 0.01)
    monkeypatch.setattr(alerts, "MAX_ATTEMPTS", 2)
    settings.CHAT_BUDGET_ALERT_WEBHOOK = "http://127.0.0.1:9/nobody-listens"
    settings.CHAT_BUDGET_ALERT_THRESHOLDS = [1]
    _, key = ApiClient.create_with_key(name="unheard", daily_token_budget=1000)

    answers = [send_turn(asgi_server.url, key, transport).status for transport in TRANSPORTS]

    assert answers == [200] * len(TRANSPORTS)
    alert = wait_until(lambda: BudgetAlert.objects.filter(attempts=2).first())
    assert alert.delivered_at is None and "ConnectError" in alert.last_error


def test_without_a_webhook_alerts_are_recorded_for_admin_and_nothing_is_sent(asgi_server, settings, monkeypatch):
    settings.CHAT_BUDGET_ALERT_WEBHOOK = ""
    settings.CHAT_BUDGET_ALERT_THRESHOLDS = [80, 95, 100]
    posts = []
    monkeypatch.setattr(alerts, "adeliver", lambda alert_pk: posts.append(alert_pk))
    client, key = ApiClient.create_with_key(name="quiet", daily_token_budget=1)
    assert send_turn(asgi_server.url, key, "sync").status == 200
    wait_until(lambda: BudgetAlert.objects.filter(api_client=client).count() == 3)
    assert send_turn(asgi_server.url, key, "sync").code == "quota_exceeded"
    recorded = BudgetAlert.objects.filter(api_client=client).order_by("threshold")
    assert [(alert.threshold, alert.limit, alert.attempts, alert.delivered_at) for alert in recorded] == [
        (80, 1, 0, None),
        (95, 1, 0, None),
        (100, 1, 0, None),
    ]
    assert posts == []


def test_an_alert_whose_sender_died_goes_out_after_the_clients_next_reply(asgi_server, webhook, settings):
    settings.CHAT_BUDGET_ALERT_THRESHOLDS = [100]
    client, key = ApiClient.create_with_key(name="orphaned", monthly_token_budget=1_000_000)
    first_of_month = budgets.now().date().replace(day=1)
    BudgetAlert.objects.create(
        api_client=client, period="month", period_start=first_of_month, threshold=100, used=9, limit=9, attempts=1
    )

    assert send_turn(asgi_server.url, key, "sync").status == 200

    wait_until(lambda: BudgetAlert.objects.get().delivered_at is not None)
    assert webhook.received == [{"client": "orphaned", "period": "month", "used": 9, "limit": 9, "threshold": 100}]


def test_the_webhook_url_is_masked_in_logs_the_database_and_admin(asgi_server, webhook, settings, monkeypatch, caplog):
    """Webhook URLs carry their token (Slack's path, DingTalk's access_token): shown as scheme and
    host only, wherever a failed delivery is told."""
    monkeypatch.setattr(alerts, "MAX_ATTEMPTS", 2)
    settings.CHAT_BUDGET_ALERT_WEBHOOK = webhook.url + "/T0001/B0002/pathS3cret?access_token=queryS3cret"
    settings.CHAT_BUDGET_ALERT_THRESHOLDS = [1]
    webhook.statuses = [404, 404]
    client, key = ApiClient.create_with_key(name="leaky", daily_token_budget=100)
    # A row stored before the masking (given up on), with the URL in its error.
    BudgetAlert.objects.create(
        api_client=client,
        period="month",
        period_start="2026-01-01",
        threshold=50,
        used=1,
        limit=2,
        attempts=2,
        last_error=f"HTTPStatusError: Client error '404 Not Found' for url '{settings.CHAT_BUDGET_ALERT_WEBHOOK}'",
    )

    assert send_turn(asgi_server.url, key, "sync").status == 200
    alert = wait_until(lambda: BudgetAlert.objects.filter(attempts=2, period="day").first())

    staff = User.objects.create_superuser("auditor", "auditor@example.com", "a long staff password")
    browser = Client()
    browser.force_login(staff)
    pages = [
        browser.get("/admin/sessions_admin/budgetalert/"),
        browser.get(f"/admin/sessions_admin/budgetalert/{alert.pk}/change/"),
        browser.get(f"/admin/sessions_admin/apiclient/{client.pk}/change/"),
    ]
    shown = "\n".join(page.content.decode() for page in pages)
    assert [page.status_code for page in pages] == [200, 200, 200]
    assert alert.last_error == "HTTP 404 Not Found"
    assert "not delivered after 2 attempts: HTTP 404 Not Found" in shown
    assert f"for url &#x27;{webhook.url.rsplit('/', 1)[0]}/…&#x27;" in shown  # the old row, masked
    for secret in ("pathS3cret", "queryS3cret"):
        assert secret not in caplog.text
        assert secret not in shown
