"""Waits that wake on the event (chat.runtime.wakeups): a publish wakes its topic's watchers at
once, on any event loop of this process and, through Redis, in other processes; a resume of a
reply it cannot follow sleeps until the reply ends instead of polling its status."""

import threading
import time

import httpx
import pytest
import redis

from chat.resume import resuming
from chat.runtime import wakeups
from tests.conftest import auth

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def no_redis(settings):
    settings.REDIS_URL = ""


@pytest.mark.asyncio
async def test_a_publish_wakes_the_watchers_of_its_topic_only(no_redis):
    async with wakeups.watching("reply:1") as one, wakeups.watching("reply:2") as two:
        wakeups.publish("reply:1")

        assert await one.wait(5) is True
        assert await two.wait(0.05) is False  # a bounded look, the expected outcome being no wake
        assert await one.wait(0) is False  # consumed: one publish, one wake


@pytest.mark.asyncio
async def test_a_publish_before_the_wait_is_not_lost(no_redis):
    async with wakeups.watching("reply:3") as watch:
        wakeups.publish("reply:3")  # between reading the state and sleeping
        started = time.monotonic()
        assert await watch.wait(5) is True
        assert time.monotonic() - started < 1


@pytest.mark.asyncio
async def test_a_publish_from_another_thread_wakes_a_watcher_on_this_loop(no_redis):
    async with wakeups.watching("reply:4") as watch:
        threading.Thread(target=wakeups.publish, args=("reply:4",)).start()
        assert await watch.wait(5) is True


@pytest.mark.asyncio
async def test_a_publish_in_another_process_wakes_through_redis(redis_url):
    async with wakeups.watching("reply:5") as watch:
        # What another worker's publish puts on the wire: its own origin, then the topics.
        channel = wakeups._channel()
        listeners = redis.from_url(redis_url).publish(channel, "another-process reply:6 reply:5")

        assert listeners >= 1
        assert await watch.wait(5) is True


@pytest.mark.asyncio
async def test_this_process_own_publishes_do_not_come_back_twice(redis_url):
    async with wakeups.watching("reply:7") as watch:
        wakeups.publish("reply:7")
        assert await watch.wait(5) is True
        # The Redis echo of our own publish is skipped: the next wake is a timeout.
        assert await watch.wait(0.3) is False


@pytest.mark.asyncio
async def test_a_resubscription_wakes_every_watcher_to_look_again(redis_url):
    async with wakeups.watching("reply:8") as watch:
        subscriber = wakeups._subscriber()
        admin = redis.from_url(redis_url)
        # Cut this process's subscription (its connection is named), as a Redis restart would.
        mine = [c["id"] for c in admin.client_list() if c.get("name") == wakeups.SUBSCRIBER_NAME]
        assert mine
        for client_id in mine:
            admin.client_kill_filter(_id=client_id)

        assert await watch.wait(10) is True  # woken by the reconnection, nothing was published
        assert subscriber.subscribed.is_set()


def test_a_resume_of_a_reply_it_cannot_follow_sleeps_until_the_reply_ends(asgi_server, api_key, monkeypatch, settings):
    settings.REDIS_URL = ""
    looks = []
    real_status = resuming._reply_status

    async def counted_status(reply_pk):
        looks.append(time.monotonic())
        return await real_status(reply_pk)

    monkeypatch.setattr(resuming, "_reply_status", counted_status)
    # Not resumable: nothing is buffered, a resume waits for the stored reply. About 2 s long.
    body = {"message": "[sim:slow=100][sim:echo]" + "a reply of twenty tokens or so, " * 2, "session_id": "slow"}
    with httpx.Client(base_url=asgi_server.url, timeout=30) as client:
        with client.stream("POST", "/api/chat/stream", json=body, headers=auth(api_key)) as live:
            lines = live.iter_lines()
            next(line for line in lines if line.startswith("event: delta"))
            resumed = {}
            resumer = threading.Thread(
                target=lambda: resumed.update(
                    response=httpx.get(f"{asgi_server.url}/api/sessions/slow/stream", headers=auth(api_key), timeout=30)
                )
            )
            resumer.start()
            rest = list(lines)
            done_at = time.monotonic()
            resumer.join(30)

    assert "data: [DONE]" in rest
    assert b"event: completed" in resumed["response"].content
    # One look when it arrived, one when the reply's end woke it: not one per half second.
    assert len(looks) <= 3, looks
    assert looks[-1] - done_at < 1.0


@pytest.mark.asyncio
async def test_a_watch_wait_is_bounded_by_its_deadline(no_redis):
    async with wakeups.watching("reply:10") as watch:
        started = time.monotonic()
        assert await watch.wait(0.1) is False
        assert 0.05 < time.monotonic() - started < 2


def test_without_redis_only_a_reply_of_another_worker_is_looked_at_again_on_a_timer(settings):
    wakeups.note_local_channel("specific.here!1")
    settings.REDIS_URL = ""
    assert wakeups.wait_seconds(10.0, "specific.here!1") == 10.0  # this process publishes its changes
    assert wakeups.wait_seconds(10.0, "specific.there!2") == wakeups.UNHEARD_POLL_SECONDS  # nobody tells us
    settings.REDIS_URL = "redis://127.0.0.1:6379/0"
    assert wakeups.wait_seconds(10.0, "specific.there!2") == 10.0  # Redis carries it


@pytest.mark.asyncio
async def test_with_redis_away_a_watch_waits_for_nothing_but_its_own_deadline(settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    started = time.monotonic()
    async with wakeups.watching("reply:11") as watch:
        wakeups.publish("reply:11")  # still wakes this process's watchers
        assert await watch.wait(5) is True
    async with wakeups.watching("reply:11"):
        pass
    assert time.monotonic() - started < wakeups.SUBSCRIBE_WAIT_SECONDS
