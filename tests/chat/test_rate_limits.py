"""Per-owner rate limits: requests per minute and concurrent streams, on every transport."""

import threading

import pytest
import redis
from django.conf import settings as django_settings

from chat.access import admission, client_limits, counters
from chat.domain.errors import ChatError
from tests.chat.limits_helpers import Owner
from tests.chat.test_limits import await_admitted
from tests.conftest import auth, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fresh_counters():
    counters.local_counters.windows.clear()
    counters.local_counters.streams.clear()
    client_limits._client_rows.clear()
    if django_settings.REDIS_URL:
        client = redis.from_url(django_settings.REDIS_URL)
        keys = list(client.scan_iter("cozeproject:*"))
        if keys:
            client.delete(*keys)


def test_requests_over_the_minute_limit_answer_429_with_retry_after(http, api_key, settings):
    settings.CHAT_RATE_LIMIT_PER_MINUTE = 3

    statuses = [http.post("/api/chat", json={"message": "hi"}, headers=auth(api_key)).status_code for _ in range(2)]
    statuses.append(http.get("/api/sessions", headers=auth(api_key)).status_code)
    limited = [
        http.post("/api/chat", json={"message": "hi"}, headers=auth(api_key)),
        http.post("/api/chat/stream", json={"message": "hi"}, headers=auth(api_key)),
        http.get("/api/sessions", headers=auth(api_key)),
    ]

    assert statuses == [200, 200, 200]
    for response in limited:
        assert response.status_code == 429, response.text
        assert response.json()["code"] == "rate_limited"
        assert 1 <= int(response.headers["retry-after"]) <= 60


def test_the_limit_is_per_client(http, api_key, other_api_key, settings):
    settings.CHAT_RATE_LIMIT_PER_MINUTE = 1
    assert http.post("/api/chat", json={"message": "a"}, headers=auth(api_key)).status_code == 200
    assert http.post("/api/chat", json={"message": "b"}, headers=auth(api_key)).status_code == 429

    assert http.post("/api/chat", json={"message": "c"}, headers=auth(other_api_key)).status_code == 200


def test_concurrent_streams_over_the_limit_answer_429_until_one_ends(http, asgi_server, api_key, settings):
    settings.CHAT_MAX_CONCURRENT_STREAMS = 1
    results = {}

    def slow_turn():
        results["slow"] = http.post(
            "/api/chat", json={"message": "[sim:slow=60] busy", "session_id": "one"}, headers=auth(api_key)
        )

    worker = threading.Thread(target=slow_turn)
    worker.start()
    from sessions_admin.models import Reply

    wait_until(lambda: Reply.objects.filter(status="in_progress").exists())

    second = http.post("/api/chat/stream", json={"message": "me too", "session_id": "two"}, headers=auth(api_key))
    worker.join(30)

    assert second.status_code == 429
    assert second.json()["code"] == "rate_limited" and second.headers["retry-after"]
    assert results["slow"].status_code == 200
    after = http.post("/api/chat", json={"message": "now?", "session_id": "two"}, headers=auth(api_key))
    assert after.status_code == 200


@pytest.mark.asyncio
async def test_a_stream_slot_of_a_crashed_worker_lapses(settings):
    settings.CHAT_MAX_CONCURRENT_STREAMS = 1
    settings.CHAT_SESSION_LOCK_TTL = 0.2
    owner = Owner(key="client:lapse")
    crashed = await admission.aadmit_turn(owner=owner, bot_id=settings.COZE_BOT_ID)
    crashed.renewal.cancel()  # its worker died: nobody renews or releases the slot
    with pytest.raises(ChatError):
        await admission.aadmit_turn(owner=owner, bot_id=settings.COZE_BOT_ID)

    # Admitted again once the unrenewed slot has lapsed (polled, with a bound).
    await admission.arelease_turn(await await_admitted(owner, settings.COZE_BOT_ID))


@pytest.mark.asyncio
async def test_limiter_lets_requests_through_when_redis_is_down(settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    settings.CHAT_RATE_LIMIT_PER_MINUTE = 1
    settings.CHAT_MAX_CONCURRENT_STREAMS = 1
    counters.async_clients.clear()
    owner = Owner(key="client:redis-down")
    try:
        admissions = [await admission.aadmit_turn(owner=owner, bot_id=settings.COZE_BOT_ID) for _ in range(3)]
        assert [admission.slot_id for admission in admissions] == ["", "", ""]
    finally:
        counters.async_clients.clear()
