"""Per-client limits and budgets hold between two real server processes (docs/api.md §11): what one
worker lets through counts in the other, on every transport."""

import json
from datetime import UTC, datetime

import httpx
import pytest

from chat.access import budgets, client_limits
from sessions_admin.models import ApiClient, Reply
from tests.chat.limits_helpers import TRANSPORTS, reset_counters, send_turn
from tests.conftest import TEST_REDIS_URL, auth, needs_redis, wait_until
from tests.test_workers import ServerProcess, open_stream, read_rest

pytestmark = pytest.mark.django_db(transaction=True)

OTHER_BOT = "7000000000000000002"
# About 3 s of deltas: still streaming while the test sends its other turns, even on a loaded machine.
LONG_REPLY = "[sim:slow=200] a long reply, please, for this test"
RESERVE_TOKENS = 40


@pytest.fixture(scope="module")
def workers(simulator, tmp_path_factory, django_db_setup, django_db_blocker):
    """Two server processes on the test database (and Redis), started once for this module."""
    tmp_path = tmp_path_factory.mktemp("limits-workers")
    env = {
        "COZE_ALLOWED_BOT_IDS": OTHER_BOT,
        "CHAT_BUDGET_RESERVE_TOKENS": str(RESERVE_TOKENS),
        "REDIS_URL": TEST_REDIS_URL,  # the workers share Redis wherever one answers
    }
    with django_db_blocker.unblock():
        pair = [ServerProcess(simulator, tmp_path, name, **env) for name in ("a", "b")]
    yield pair
    for worker in pair:
        worker.stop()


@pytest.fixture(autouse=True)
def fresh_counters(settings):
    settings.REDIS_URL = TEST_REDIS_URL  # the counters this process resets are the workers'
    reset_counters()
    yield
    reset_counters()


def test_budgets_and_bot_lists_hold_between_workers_on_every_transport(workers):
    first, second = workers
    _, daily_key = ApiClient.create_with_key(name="daily", daily_token_budget=5)
    _, monthly_key = ApiClient.create_with_key(name="monthly", monthly_token_budget=5)
    _, bots_key = ApiClient.create_with_key(name="bots", allowed_bot_ids=OTHER_BOT)
    now = datetime.now(UTC)
    until_midnight = budgets.seconds_until(budgets.day_reset(now), now)
    until_next_month = budgets.seconds_until(budgets.month_reset(now), now)
    assert send_turn(first.url, daily_key, "sync").status == 200
    assert send_turn(first.url, monthly_key, "sync").status == 200

    for transport in TRANSPORTS:
        daily = send_turn(second.url, daily_key, transport)
        monthly = send_turn(second.url, monthly_key, transport)
        bots = send_turn(second.url, bots_key, transport)
        assert (daily.status, daily.code) == (429, "quota_exceeded"), transport
        assert until_midnight - 60 <= daily.retry_after <= until_midnight, transport
        assert (monthly.status, monthly.code) == (429, "quota_exceeded"), transport
        assert until_next_month - 60 <= monthly.retry_after <= until_next_month, transport
        assert (bots.status, bots.code) == (403, "bot_not_allowed"), transport
    assert send_turn(second.url, bots_key, "sse", bot_id=OTHER_BOT).status == 200


@needs_redis
def test_a_clients_rate_limit_is_shared_between_workers_on_every_transport(workers):
    first, second = workers
    _, key = ApiClient.create_with_key(name="rpm", rate_limit_per_minute=2)
    assert send_turn(first.url, key, "sync").status == 200
    assert send_turn(second.url, key, "sse").status == 200

    for index, transport in enumerate(TRANSPORTS):
        answer = send_turn(workers[index % 2].url, key, transport)
        assert (answer.status, answer.code) == (429, "rate_limited"), transport
        assert 1 <= answer.retry_after <= 60


@needs_redis
def test_a_clients_stream_limit_is_shared_between_workers_on_every_transport(workers):
    first, second = workers
    _, key = ApiClient.create_with_key(name="streams", max_concurrent_streams=1)
    stream, lines, _ = open_stream(first.url, key, {"message": LONG_REPLY, "session_id": "long"})
    rest, reader = read_rest(lines)

    answers = {transport: send_turn(second.url, key, transport) for transport in TRANSPORTS}

    reader.join(30)
    stream.close()
    assert any('"type":"completed"' in line for line in rest)
    for transport, answer in answers.items():
        assert (answer.status, answer.code, answer.retry_after) == (429, "rate_limited", 1), transport
    assert send_turn(second.url, key, "websocket").status == 200


@needs_redis
def test_replies_in_flight_on_both_workers_bound_a_budget(workers):
    first, second = workers
    # A fourth turn finds 3 replies in flight reserving 3 x 40 = 120 tokens, more than the 100 left.
    client, key = ApiClient.create_with_key(name="reserved", daily_token_budget=100)
    streams = []
    for index, worker in enumerate((first, second, first)):
        stream, lines, _ = open_stream(worker.url, key, {"message": LONG_REPLY, "session_id": f"s{index}"})
        streams.append((stream, *read_rest(lines)))

    fourth = send_turn(second.url, key, "sync", session_id="s3")

    for stream, _, reader in streams:
        reader.join(30)
        stream.close()
    assert (fourth.status, fourth.code) == (429, "rate_limited")
    assert Reply.objects.filter(api_client=client).count() == 3
    completed = [json.loads(line[6:]) for _, rest, _ in streams for line in rest if '"type":"completed"' in line]
    spent = sum(event["usage"]["total_tokens"] for event in completed)
    assert len(completed) == 3
    # Ended replies count in full and free their reservations: now the budget alone decides.
    usage = httpx.get(second.url + "/api/usage", headers=auth(key), timeout=30).json()
    after = send_turn(second.url, key, "sync", session_id="s3")
    assert usage["today"] == {"tokens": spent, "replies": 3}
    assert (after.status, after.code) == ((200, None) if spent < 100 else (429, "quota_exceeded"))


def test_a_raised_budget_reaches_every_worker_without_a_restart(workers):
    client, key = ApiClient.create_with_key(name="raised", daily_token_budget=5)
    assert send_turn(workers[0].url, key, "sync").status == 200
    assert [send_turn(worker.url, key, "sync").code for worker in workers] == ["quota_exceeded"] * 2

    # What saving the client's admin page does.
    ApiClient.objects.filter(pk=client.pk).update(daily_token_budget=100_000)

    for worker in workers:
        wait_until(
            lambda url=worker.url: send_turn(url, key, "sync").status == 200,
            timeout=client_limits.LIMITS_CACHE_SECONDS + 10,
            interval=0.5,
        )
