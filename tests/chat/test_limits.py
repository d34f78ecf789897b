"""Limits and token budgets per API client (docs/api.md §11): each limit on each transport, budget
resets at UTC midnight and month start, replies in flight against a budget, stream slots,
GET /api/usage, and admin edits taking effect without a restart."""

import asyncio
import threading
import time as wall_clock
from datetime import UTC, date, datetime, time, timedelta

import pytest
from django.conf import settings as django_settings
from django.test import Client

from chat.access import admission, budgets, client_limits, counters
from chat.domain.errors import ChatError
from sessions_admin.models import ApiClient, Reply
from tests.chat.limits_helpers import TRANSPORTS, Owner, client_owner, reset_counters, send_turn
from tests.conftest import auth, await_until, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

OTHER_BOT = "7000000000000000002"
# About 3 s of deltas: still streaming while the test sends its other turns, even on a loaded machine.
LONG_REPLY = "[sim:slow=200] a long reply, please, for this test"


@pytest.fixture(autouse=True)
def fresh_counters():
    reset_counters()
    yield
    reset_counters()


class Clock:
    """`chat.access.budgets.now`, set by the test; None = the real time."""

    def __init__(self):
        self.at: datetime | None = None

    def __call__(self) -> datetime:
        return self.at or datetime.now(UTC)


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(budgets, "now", fake)
    return fake


def today_at(hour: int, minute: int = 0, second: int = 0, *, day: date | None = None) -> datetime:
    return datetime.combine(day or datetime.now(UTC).date(), time(hour, minute, second), UTC)


def last_day_of_month(day: date) -> date:
    return budgets.month_reset(today_at(0, day=day)).date() - timedelta(days=1)


def new_client(**fields) -> tuple[ApiClient, str]:
    return ApiClient.create_with_key(name="limited app", **fields)


# --- each limit on each transport -------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_used_up_daily_budget_answers_quota_exceeded_until_utc_midnight(asgi_server, clock, transport):
    client, key = new_client(daily_token_budget=5)
    clock.at = today_at(23)
    assert send_turn(asgi_server.url, key, "sync").status == 200  # 0 < 5: allowed, and spends more than 5

    refused = send_turn(asgi_server.url, key, transport)

    assert (refused.status, refused.code, refused.retry_after) == (429, "quota_exceeded", 3600)
    assert Reply.objects.filter(api_client=client).count() == 1  # refused before anything was stored


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_used_up_monthly_budget_answers_quota_exceeded_until_the_first_of_next_month(asgi_server, clock, transport):
    _, key = new_client(monthly_token_budget=5, daily_token_budget=10_000)
    clock.at = today_at(12)
    assert send_turn(asgi_server.url, key, "sync").status == 200

    refused = send_turn(asgi_server.url, key, transport)

    first_of_next_month = budgets.month_reset(clock.at)
    assert (refused.status, refused.code) == (429, "quota_exceeded")
    assert refused.retry_after == (first_of_next_month - clock.at).total_seconds()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_clients_own_rate_limit_answers_rate_limited(asgi_server, settings, transport):
    settings.CHAT_RATE_LIMIT_PER_MINUTE = 100
    _, key = new_client(rate_limit_per_minute=1)
    _, other_key = new_client()
    assert send_turn(asgi_server.url, key, "sync").status == 200

    refused = send_turn(asgi_server.url, key, transport)

    assert (refused.status, refused.code) == (429, "rate_limited")
    assert 1 <= refused.retry_after <= 60
    assert send_turn(asgi_server.url, other_key, transport).status == 200  # the default, 100, for the other


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_clients_own_stream_limit_answers_rate_limited_while_its_replies_run(asgi_server, settings, transport):
    settings.CHAT_MAX_CONCURRENT_STREAMS = 100
    client, key = new_client(max_concurrent_streams=1)
    slow = threading.Thread(
        target=send_turn,
        args=(asgi_server.url, key, "sync"),
        kwargs={"message": LONG_REPLY, "session_id": "a"},
    )
    slow.start()
    wait_until(lambda: Reply.objects.filter(api_client=client, status="in_progress").exists())

    refused = send_turn(asgi_server.url, key, transport, session_id="b")

    slow.join(30)
    assert (refused.status, refused.code, refused.retry_after) == (429, "rate_limited", 1)
    assert send_turn(asgi_server.url, key, transport, session_id="b").status == 200


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_client_limited_to_some_bots_gets_bot_not_allowed_for_others(asgi_server, settings, transport):
    settings.COZE_ALLOWED_BOT_IDS = [settings.COZE_BOT_ID, OTHER_BOT]
    _, key = new_client(allowed_bot_ids=OTHER_BOT)
    _, unrestricted_key = new_client()

    refused = send_turn(asgi_server.url, key, transport)  # no bot_id: the server's default bot

    assert (refused.status, refused.code) == (403, "bot_not_allowed")
    assert send_turn(asgi_server.url, unrestricted_key, transport).status == 200
    if transport != "compat":  # the earlier /chat has no bot_id field
        assert send_turn(asgi_server.url, key, transport, bot_id=OTHER_BOT).status == 200


# --- resets, with the budget clock ------------------------------------------------------------


def test_the_daily_budget_resets_at_utc_midnight(http, clock):
    _, key = new_client(daily_token_budget=5)
    clock.at = today_at(10)
    assert http.post("/api/chat", json={"message": "hi"}, headers=auth(key)).status_code == 200

    clock.at = today_at(23, 59, 59)
    last_second = http.post("/api/chat", json={"message": "hi"}, headers=auth(key))
    clock.at = today_at(0) + timedelta(days=1)
    next_day = http.post("/api/chat", json={"message": "hi"}, headers=auth(key))

    assert last_second.status_code == 429 and last_second.headers["Retry-After"] == "1"
    assert next_day.status_code == 200


def test_the_monthly_budget_resets_on_the_first_of_the_month(http, clock):
    _, key = new_client(monthly_token_budget=5)
    real_today = datetime.now(UTC).date()
    clock.at = today_at(10)
    assert http.post("/api/chat", json={"message": "hi"}, headers=auth(key)).status_code == 200

    clock.at = today_at(23, 59, 59, day=last_day_of_month(real_today))
    last_second = http.post("/api/chat", json={"message": "hi"}, headers=auth(key))
    clock.at = budgets.month_reset(clock.at)
    next_month = http.post("/api/chat", json={"message": "hi"}, headers=auth(key))

    assert last_second.status_code == 429 and last_second.json()["code"] == "quota_exceeded"
    assert last_second.headers["Retry-After"] == "1"
    assert next_month.status_code == 200


def test_reset_moments_are_utc_midnights():
    at = datetime(2026, 12, 31, 22, 30, tzinfo=UTC)
    assert budgets.day_reset(at) == datetime(2027, 1, 1, tzinfo=UTC)
    assert budgets.month_reset(at) == datetime(2027, 1, 1, tzinfo=UTC)
    assert budgets.month_reset(datetime(2026, 2, 1, tzinfo=UTC)) == datetime(2026, 3, 1, tzinfo=UTC)
    assert budgets.seconds_until(budgets.day_reset(at), at) == 5400


# --- replies in flight against a budget -------------------------------------------------------


@pytest.mark.asyncio
async def test_concurrent_first_turns_are_bounded_by_reservations_of_the_replies_in_flight(settings):
    settings.CHAT_BUDGET_RESERVE_TOKENS = 40
    client, _ = await asyncio.to_thread(new_client, daily_token_budget=100)
    owner = client_owner(client)

    results = await asyncio.gather(
        *[admission.aadmit_turn(owner=owner, bot_id=settings.COZE_BOT_ID) for _ in range(6)], return_exceptions=True
    )

    admitted = [result for result in results if isinstance(result, admission.Admission)]
    refused = [result for result in results if isinstance(result, ChatError)]
    # 0, 40 and 80 tokens reserved are under 100; the fourth would find 120 reserved.
    assert len(admitted) == 3 and len(refused) == 3
    assert {error.code for error in refused} == {"rate_limited"}
    await admission.arelease_turn(admitted[0])
    again = await admission.aadmit_turn(owner=owner, bot_id=settings.COZE_BOT_ID)
    for held in [*admitted[1:], again]:
        await admission.arelease_turn(held)


def test_the_reservation_per_reply_becomes_the_clients_average(settings):
    settings.CHAT_BUDGET_RESERVE_TOKENS = 1000
    assert budgets.reservation_per_reply(budgets.Spend()) == 1000
    assert budgets.reservation_per_reply(budgets.Spend(month_tokens=90, month_replies=4)) == 22


# --- stream slots (issue 10, item 4) ----------------------------------------------------------


async def _past(wall_time: float) -> bool:
    return wall_clock.time() > wall_time


async def await_admitted(owner: Owner, bot_id: str, timeout: float = 5.0) -> admission.Admission:
    """Admit a turn as soon as the limits let it in (polled, with a bound)."""
    admitted = []

    async def admit() -> bool:
        try:
            admitted.append(await admission.aadmit_turn(owner=owner, bot_id=bot_id))
        except ChatError as error:
            assert error.code == "rate_limited"
        return bool(admitted)

    await await_until(admit, timeout=timeout)
    return admitted[0]


@pytest.mark.asyncio
async def test_a_stream_slot_is_renewed_while_its_reply_runs_past_the_lease(settings, monkeypatch):
    settings.CHAT_MAX_CONCURRENT_STREAMS = 1
    settings.CHAT_SESSION_LOCK_TTL = 0.3
    owner = Owner(key="client:long-reply")
    renewals, four_leases = [], asyncio.Event()
    real_renew = counters.arenew_slot

    async def counted_renew(owner_key, slot_id):
        await real_renew(owner_key, slot_id)
        renewals.append(slot_id)
        if len(renewals) >= 12:  # renewed three times per lease: four leases have passed
            four_leases.set()

    monkeypatch.setattr(counters, "arenew_slot", counted_renew)
    running = await admission.aadmit_turn(owner=owner, bot_id=settings.COZE_BOT_ID)

    await asyncio.wait_for(four_leases.wait(), 10)
    with pytest.raises(ChatError) as refused:
        await admission.aadmit_turn(owner=owner, bot_id=settings.COZE_BOT_ID)

    await admission.arelease_turn(running)
    assert refused.value.code == "rate_limited"
    await admission.arelease_turn(await admission.aadmit_turn(owner=owner, bot_id=settings.COZE_BOT_ID))


@pytest.mark.asyncio
async def test_the_in_process_counters_forget_owners_that_hold_nothing(settings):
    settings.REDIS_URL = ""
    settings.CHAT_MAX_CONCURRENT_STREAMS = 5
    settings.CHAT_SESSION_LOCK_TTL = 0.2
    for browser in range(50):
        held = await admission.aadmit_turn(owner=Owner(key=f"browser:{browser}"), bot_id=settings.COZE_BOT_ID)
        assert held.slot_id
        await admission.arelease_turn(held)
    crashed = await admission.aadmit_turn(owner=Owner(key="browser:crashed"), bot_id=settings.COZE_BOT_ID)
    crashed.renewal.cancel()
    assert list(counters.local_counters.streams) == ["browser:crashed"]

    # Once the unrenewed slot's recorded expiry has passed (polled, with a bound), the next
    # admission drops it.
    expiry = max(counters.local_counters.streams["browser:crashed"].values())
    await await_until(lambda: _past(expiry))
    await admission.arelease_turn(
        await admission.aadmit_turn(owner=Owner(key="browser:crashed"), bot_id=settings.COZE_BOT_ID)
    )

    assert counters.local_counters.streams == {}


# --- GET /api/usage ---------------------------------------------------------------------------


def test_usage_reports_todays_and_this_months_replies_limits_and_what_is_left(http, asgi_server, settings):
    settings.CHAT_RATE_LIMIT_PER_MINUTE = 600
    settings.CHAT_MAX_CONCURRENT_STREAMS = 200
    _, key = new_client(daily_token_budget=1000, monthly_token_budget=20_000, max_concurrent_streams=3)
    _, other_key = new_client()
    tokens = [send_turn(asgi_server.url, key, transport).tokens for transport in ("sync", "sse", "websocket")]
    send_turn(asgi_server.url, other_key, "sync")  # someone else's use is not ours

    usage = http.get("/api/usage", headers=auth(key))

    assert usage.status_code == 200
    spent = sum(tokens)
    assert spent > 0
    assert usage.json() == {
        "today": {"tokens": spent, "replies": 3},
        "month": {"tokens": spent, "replies": 3},
        "limits": {"rpm": 600, "max_streams": 3, "daily_tokens": 1000, "monthly_tokens": 20_000},
        "remaining": {"daily_tokens": 1000 - spent, "monthly_tokens": 20_000 - spent},
    }


def test_usage_of_a_client_without_budgets_has_no_remaining(http, settings):
    settings.CHAT_RATE_LIMIT_PER_MINUTE = 0
    settings.CHAT_MAX_CONCURRENT_STREAMS = 7
    _, key = new_client()

    body = http.get("/api/usage", headers=auth(key)).json()

    assert body["limits"] == {"rpm": None, "max_streams": 7, "daily_tokens": None, "monthly_tokens": None}
    assert body["remaining"] == {"daily_tokens": None, "monthly_tokens": None}
    assert body["today"] == {"tokens": 0, "replies": 0}
    assert http.get("/api/usage").status_code == 401


def test_usage_starts_afresh_each_utc_day_and_month(http, clock):
    _, key = new_client()
    clock.at = today_at(9)
    tokens = http.post("/api/chat", json={"message": "hi"}, headers=auth(key)).json()["usage"]["total_tokens"]
    same_day = http.get("/api/usage", headers=auth(key)).json()
    clock.at = today_at(0) + timedelta(days=1)
    next_day = http.get("/api/usage", headers=auth(key)).json()
    clock.at = budgets.month_reset(today_at(9))
    next_month = http.get("/api/usage", headers=auth(key)).json()

    assert same_day["today"] == same_day["month"] == {"tokens": tokens, "replies": 1}
    assert next_day["today"] == {"tokens": 0, "replies": 0}
    tomorrow_in_this_month = (today_at(0) + timedelta(days=1)).day != 1
    assert next_day["month"] == ({"tokens": tokens, "replies": 1} if tomorrow_in_this_month else next_day["today"])
    assert next_month["today"] == next_month["month"] == {"tokens": 0, "replies": 0}


# --- admin edits ------------------------------------------------------------------------------


def test_staff_raising_a_budget_in_admin_takes_effect_without_a_restart(http, clock, admin_user):
    client, key = new_client(daily_token_budget=5)
    clock.at = today_at(12)
    assert http.post("/api/chat", json={"message": "hi"}, headers=auth(key)).status_code == 200
    assert http.post("/api/chat", json={"message": "hi"}, headers=auth(key)).status_code == 429
    staff = Client()
    staff.force_login(admin_user)

    page = staff.get(f"/admin/sessions_admin/apiclient/{client.pk}/change/")
    saved = staff.post(
        f"/admin/sessions_admin/apiclient/{client.pk}/change/",
        {
            "name": client.name,
            "is_active": "on",
            "rate_limit_per_minute": "",
            "max_concurrent_streams": "",
            "daily_token_budget": "100000",
            "monthly_token_budget": "",
            "allowed_bot_ids": "",
        },
    )

    assert page.status_code == 200 and b"progress" in page.content
    assert saved.status_code == 302, saved.content.decode()[:2000]
    # Other workers read the client's row again within LIMITS_CACHE_SECONDS; so does this one.
    wait_until(
        lambda: http.get("/api/usage", headers=auth(key)).json()["limits"]["daily_tokens"] == 100_000,
        timeout=client_limits.LIMITS_CACHE_SECONDS + 5,
        interval=0.2,
    )
    assert http.post("/api/chat", json={"message": "hi"}, headers=auth(key)).status_code == 200


def test_create_api_key_sets_the_clients_limits(settings):
    from io import StringIO

    from django.core.management import call_command

    settings.COZE_ALLOWED_BOT_IDS = [settings.COZE_BOT_ID, OTHER_BOT]
    out = StringIO()
    call_command(
        "create_api_key",
        "backend",
        "--rpm=120",
        "--max-streams=30",
        "--daily-tokens=50000",
        "--monthly-tokens=1000000",
        f"--bots={OTHER_BOT}",
        stdout=out,
    )

    client = ApiClient.objects.get(name="backend")
    assert (
        client.rate_limit_per_minute,
        client.max_concurrent_streams,
        client.daily_token_budget,
        client.monthly_token_budget,
        client.allowed_bots,
    ) == (120, 30, 50_000, 1_000_000, [OTHER_BOT])
    assert out.getvalue().splitlines()[-1].startswith("cz_")


def test_create_api_key_refuses_a_bot_the_server_does_not_allow():
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match="COZE_ALLOWED_BOT_IDS"):
        call_command("create_api_key", "backend", "--bots=123")
    assert not ApiClient.objects.exists()
    assert django_settings.CHAT_BUDGET_ALERT_THRESHOLDS == [80, 95, 100]
