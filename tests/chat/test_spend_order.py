"""A turn's spend is stored before its admission is given back (docs/api.md §11), with Redis and
Postgres: the moment a reply's stream slot leaves the in-flight set, the daily rollup that
admissions read already holds the reply's tokens — also when the first attempt to store the reply
failed and a background retry stored it; and an admission whose spend read raced such a release
reads the spend again. And the reservation a reply in flight counts for is the
average of the replies that spent tokens, not dragged down by cancelled replies that spent none."""

import asyncio
import time

import pytest
from django.conf import settings as django_settings

from chat.access import admission, budgets, counters
from chat.domain.errors import ChatError
from chat.runtime.db import db_async
from chat.turn import finish, store
from sessions_admin.models import ApiClient, DailyUsage, Reply
from tests.chat.conftest import redis_ok
from tests.chat.limits_helpers import client_owner, reset_counters, send_turn
from tests.conftest import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

# How long the background retry waits for a release that (before the fix) came first.
RELEASE_WAIT_SECONDS = 1.5


@pytest.fixture(autouse=True)
def redis_counters():
    if not redis_ok(django_settings.REDIS_URL):
        pytest.skip("needs REDIS_URL with a running Redis: the slots are Redis's")
    reset_counters()
    yield
    reset_counters()


@pytest.fixture
def releases(monkeypatch):
    """Each stream slot given back, with the spend of its owner as the database held it then, and
    whether the slot was still in Redis's in-flight set at that moment."""
    seen: list[tuple[budgets.Spend, bool]] = []
    release = counters.arelease_slot

    async def observed_release(owner_key: str, slot_id: str) -> None:
        held = await counters.aredis_client().zscore(counters.streams_key(owner_key), slot_id) is not None
        spend = await budgets.aspend_of(owner_key, budgets.now())
        seen.append((spend, held))
        await release(owner_key, slot_id)

    monkeypatch.setattr(counters, "arelease_slot", observed_release)
    return seen


def budgeted_client() -> tuple[ApiClient, str]:
    return ApiClient.create_with_key(name="budgeted", daily_token_budget=1_000_000)


def test_the_slot_is_released_after_the_replys_tokens_are_in_the_rollup(asgi_server, releases):
    client, key = budgeted_client()

    answer = send_turn(asgi_server.url, key, "sse")

    assert answer.status == 200 and answer.tokens > 0
    wait_until(lambda: releases, timeout=10)
    spend, held = releases[0]
    assert held  # observed while the slot was still in flight
    assert spend.today_tokens == answer.tokens == Reply.objects.get(api_client=client).total_tokens


def test_a_finish_stored_by_its_retry_holds_the_slot_until_then(asgi_server, releases, monkeypatch):
    client, key = budgeted_client()
    monkeypatch.setattr(finish, "FINISH_RETRY_DELAYS", (0,))
    real_finish = store.turn_finish
    calls = []

    async def flaky_finish(*, turn, outcome):
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise ConnectionError("the database went away for a moment")
        # The retry: before the fix the slot was released while it waited; give that release the
        # chance to happen (bounded), so the order is observed, not raced.
        deadline = time.monotonic() + RELEASE_WAIT_SECONDS
        while not releases and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await real_finish(turn=turn, outcome=outcome)

    monkeypatch.setattr(store, "turn_finish", flaky_finish)

    answer = send_turn(asgi_server.url, key, "sync")

    assert (answer.status, answer.code) == (503, "service_unavailable")  # told the reply wasn't stored
    wait_until(lambda: releases and Reply.objects.get(api_client=client).total_tokens, timeout=10)
    spend, held = releases[0]
    reply = Reply.objects.get(api_client=client)
    assert len(calls) == 2
    assert held
    assert spend.today_tokens == reply.total_tokens  # the retry stored it before the slot went


def test_cancelled_zero_token_replies_do_not_shrink_the_reservation(settings):
    settings.CHAT_BUDGET_RESERVE_TOKENS = 1000
    client, _ = budgeted_client()
    today = budgets.now().date()
    # 2 completed replies for 90 tokens, and 2 cancelled before Coze counted anything.
    owner_key = client.owner_key
    DailyUsage.objects.create(day=today, bot_id="b", owner_key=owner_key, replies=4, cancelled=2, total_tokens=90)

    assert budgets.reservation_per_reply(budgets.spend_of(client.owner_key, budgets.now())) == 45

    # Only replies that spent nothing: no average yet, the setting.
    DailyUsage.objects.filter(owner_key=client.owner_key).update(replies=3, cancelled=2, failed=1, total_tokens=0)
    assert budgets.reservation_per_reply(budgets.spend_of(client.owner_key, budgets.now())) == 1000


@pytest.mark.asyncio
@pytest.mark.parametrize("backend", ["redis", "memory"])
async def test_an_admission_reads_the_spend_again_when_a_reply_ended_while_it_read(settings, monkeypatch, backend):
    if backend == "memory":
        settings.REDIS_URL = ""
    settings.CHAT_BUDGET_RESERVE_TOKENS = 40
    # Through the service's database threads (closed at the end of the run), not asyncio's.
    client, _ = await db_async(ApiClient.create_with_key)(name="racing", daily_token_budget=100)
    owner = client_owner(client)
    running = await admission.aadmit_turn(owner=owner, bot_id=settings.COZE_BOT_ID)
    read_spend = budgets.aspend_of
    spends = []

    async def spend_read_as_the_running_reply_ends(owner_key, at):
        spend = await read_spend(owner_key, at)
        if not spends:
            # The running reply ends between this read and the atomic step: its 100 tokens are
            # stored, then its slot is given back, in that order.
            await db_async(DailyUsage.objects.create)(
                day=at.date(), bot_id="b", owner_key=owner_key, replies=1, total_tokens=100
            )
            await admission.arelease_turn(running)
        spends.append(spend)
        return spend

    monkeypatch.setattr(budgets, "aspend_of", spend_read_as_the_running_reply_ends)

    with pytest.raises(ChatError) as refused:
        await admission.aadmit_turn(owner=owner, bot_id=settings.COZE_BOT_ID)

    # The first read missed the 100 tokens and found the slot free; the second read has them.
    assert [spend.today_tokens for spend in spends] == [0, 100]
    assert refused.value.code == "quota_exceeded"
