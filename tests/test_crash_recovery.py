"""A dead worker's replies are ended by the workers that survive it, while they run (docs/api.md §6):
`interrupted`, the session unlocked, the answer so far kept from the Redis replay buffer (else
stored without one, and said so), resumable and cancellable truthfully; a live worker's lease is
renewed however quiet its reply is. Real server processes sharing PostgreSQL (or SQLite) and Redis;
a short CHAT_SESSION_LOCK_TTL through the environment, and polls with a bound."""

import time

import httpx
import pytest
import redis
from django.conf import settings as django_settings

from chat.resume import replay
from sessions_admin.models import ChatSession, Message, Reply
from tests.chat.conftest import clear_redis_buffers
from tests.chat.test_resume import TRICKY, deltas_of, event_data, event_id, resume, split_events, start_and_drop
from tests.conftest import auth, wait_until
from tests.test_workers import needs_redis, start_worker  # noqa: F401 - start_worker is a fixture

pytestmark = pytest.mark.django_db(transaction=True)

TTL = 3  # seconds: CHAT_SESSION_LOCK_TTL of the workers under test
# What the design promises: a dead worker's reply is ended within the TTL plus 10 s.
BOUND = TTL + 10


def kill(worker) -> float:
    """SIGKILL, as the OOM killer or a power cut would: no shutdown hook runs. Returns when."""
    worker.process.kill()
    worker.process.wait(10)
    return time.monotonic()


@needs_redis
def test_a_killed_workers_reply_is_ended_by_another_with_its_answer_so_far(start_worker, api_key):  # noqa: F811
    clear_redis_buffers(django_settings.REDIS_URL)
    first = start_worker("a", CHAT_SESSION_LOCK_TTL=str(TTL))
    second = start_worker("b", CHAT_SESSION_LOCK_TTL=str(TTL))
    body = {"message": "[sim:slow=60][sim:echo]" + TRICKY * 2, "session_id": "orphan", "resumable": True}
    seen = start_and_drop(first.url, api_key, body)
    reply = Reply.objects.get()
    # The reply runs on without its client; once its buffer holds more than the client saw, kill.
    buffer = redis.from_url(django_settings.REDIS_URL)
    wait_until(lambda: buffer.xlen(f"{replay.KEY_PREFIX}{reply.pk}") > len(seen) + 2, timeout=10)
    killed_at = kill(first)

    ended = wait_until(lambda: Reply.objects.exclude(status="in_progress").filter(pk=reply.pk).first(), timeout=BOUND)

    took = time.monotonic() - killed_at
    assert took <= BOUND, took
    assert ended.status == "interrupted" and ended.error_code == "interrupted"
    assert "answer so far is kept" in ended.error_detail
    answer = Message.objects.get(reply=reply, kind="answer").content
    assert answer.startswith(deltas_of(seen)) and len(answer) > len(deltas_of(seen))
    assert (TRICKY * 2).startswith(answer)
    assert ChatSession.objects.get(session_id="orphan").locked_until is None
    # A resume replays what was kept after the client's last event, then the error, then done.
    rest = split_events(resume(second.url, api_key, "orphan", event_id(seen[-1])).content)
    assert deltas_of(seen) + deltas_of(rest) == answer
    assert event_data(rest[-2])["type"] == "error" and event_data(rest[-2])["code"] == "interrupted"
    assert rest[-1].endswith(b"event: done\ndata: [DONE]\n\n")
    # A cancel says what happened to it.
    cancel = httpx.post(f"{second.url}/api/chats/{ended.coze_chat_id}/cancel", headers=auth(api_key), timeout=30)
    assert cancel.status_code == 200 and cancel.json()["status"] == "interrupted"
    # And the session takes its next turn.
    after = httpx.post(
        second.url + "/api/chat", json={"message": "still there?", "session_id": "orphan"}, headers=auth(api_key)
    )
    assert after.status_code == 200, after.text
    surviving_log = second.log_path.read_text()
    assert "of a crashed worker (lease lapsed) as interrupted" in surviving_log


def test_a_single_worker_restarted_after_a_kill_ends_its_reply_without_redis(start_worker, api_key):  # noqa: F811
    first = start_worker("a", REDIS_URL="", CHAT_SESSION_LOCK_TTL=str(TTL))
    body = {"message": "[sim:slow=80][sim:echo]" + TRICKY, "session_id": "restart", "resumable": True}
    seen = start_and_drop(first.url, api_key, body)  # its events are in that worker's memory only
    kill(first)
    restarted = start_worker("a-again", REDIS_URL="", CHAT_SESSION_LOCK_TTL=str(TTL))

    ended = wait_until(lambda: Reply.objects.exclude(status="in_progress").first(), timeout=BOUND + 5)

    assert ended.status == "interrupted"
    assert "was not kept" in ended.error_detail
    assert not Message.objects.filter(reply=ended, kind="answer").exists()
    # The client comes back: it learns how the reply ended, with ids above the last it had.
    rest = split_events(resume(restarted.url, api_key, "restart", event_id(seen[-1])).content)
    kinds = ["done" if f.endswith(b"[DONE]\n\n") else event_data(f)["type"] for f in rest]
    assert kinds == ["session", "error", "done"] and event_data(rest[1])["code"] == "interrupted"
    assert event_id(seen[-1]) < event_id(rest[0]) < event_id(rest[1]) < event_id(rest[2])
    after = httpx.post(
        restarted.url + "/api/chat", json={"message": "again", "session_id": "restart"}, headers=auth(api_key)
    )
    assert after.status_code == 200, after.text


def test_a_quiet_reply_longer_than_the_lease_keeps_it_while_another_worker_sweeps(start_worker, api_key):  # noqa: F811
    first = start_worker("a", CHAT_SESSION_LOCK_TTL="2")
    start_worker("b", CHAT_SESSION_LOCK_TTL="2")
    # Half the answer, then 5 s (2.5 leases) without a byte from Coze, then the rest.
    response = httpx.post(
        first.url + "/api/chat",
        json={"message": "[sim:silence=5][sim:echo]quiet but alive", "session_id": "quiet"},
        headers=auth(api_key),
        timeout=30,
    )

    assert response.status_code == 200, response.text
    assert response.json()["response"] == "quiet but alive"
    assert Reply.objects.get().status == "completed"
