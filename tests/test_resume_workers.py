"""Resuming across worker processes (docs/api.md §9): with Redis a client that reconnects to
another worker continues the reply byte for byte; without Redis it gets the stored reply once the
reply ends; a session cancel reaches the worker the reply runs on."""

import httpx
import pytest

from sessions_admin.models import Reply
from tests.chat.conftest import clear_redis_buffers
from tests.chat.test_resume import (
    TRICKY,
    deltas_of,
    event_data,
    event_id,
    numbers,
    resume,
    split_events,
    start_and_drop,
)
from tests.conftest import auth, wait_until
from tests.test_workers import start_worker  # noqa: F401 - start_worker is a fixture

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_reply_dropped_on_one_worker_resumes_on_another_through_redis(start_worker, api_key, redis_url):  # noqa: F811
    clear_redis_buffers(redis_url)
    first, second = start_worker("a"), start_worker("b")
    body = {"message": "[sim:slow=40][sim:echo]" + TRICKY, "session_id": "roaming", "resumable": True}
    seen = start_and_drop(first.url, api_key, body)

    rest = split_events(resume(second.url, api_key, "roaming", event_id(seen[-1])).content)

    assert numbers(seen + rest) == list(range(1, len(seen) + len(rest) + 1))
    assert deltas_of(seen) + deltas_of(rest) == event_data(rest[-2])["content"] == TRICKY
    assert rest[-1].endswith(b"event: done\ndata: [DONE]\n\n")
    assert b"".join(split_events(resume(second.url, api_key, "roaming").content)) == b"".join(seen + rest)
    reply = Reply.objects.get()
    assert reply.status == "completed" and reply.resumable and reply.ended_without_client


def test_a_session_cancel_on_one_worker_stops_a_resumable_reply_running_on_another(start_worker, api_key, redis_url):  # noqa: F811
    clear_redis_buffers(redis_url)
    first, second = start_worker("a"), start_worker("b")
    body = {"message": "[sim:slow=100][sim:echo]" + TRICKY, "session_id": "far", "resumable": True}
    seen = start_and_drop(first.url, api_key, body, deltas=2)

    cancelled = httpx.post(f"{second.url}/api/sessions/far/cancel", headers=auth(api_key), timeout=30)

    assert cancelled.status_code == 200
    assert cancelled.json() == {"session_id": "far", "chat_id": event_data(seen[0])["chat_id"], "status": "cancelled"}
    assert wait_until(lambda: Reply.objects.get().status == "cancelled")
    rest = split_events(resume(second.url, api_key, "far", event_id(seen[-1])).content)
    assert event_data(rest[-2])["code"] == "cancelled"


def test_without_redis_another_worker_sends_the_stored_reply_once_it_ends(start_worker, api_key):  # noqa: F811
    first, second = start_worker("a", REDIS_URL=""), start_worker("b", REDIS_URL="")
    body = {"message": "[sim:slow=20][sim:echo]" + TRICKY, "session_id": "local", "resumable": True}
    seen = start_and_drop(first.url, api_key, body)

    stored = split_events(resume(second.url, api_key, "local", event_id(seen[-1])).content)

    data = [event_data(f) for f in stored]
    assert [d if d == "[DONE]" else d["type"] for d in data] == ["session", "delta", "completed", "[DONE]"]
    assert deltas_of(seen) + data[1]["content"] == data[2]["content"] == TRICKY
    assert Reply.objects.get().status == "completed"
    # The worker that ran it still replays its events as they were.
    rest = split_events(resume(first.url, api_key, "local", event_id(seen[-1])).content)
    assert deltas_of(seen) + deltas_of(rest) == TRICKY
