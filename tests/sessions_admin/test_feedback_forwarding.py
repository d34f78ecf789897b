"""Ratings reach Coze's feedback API through the durable outbox (docs/admin.md, "Ratings"): the
worker's sender forwards them to the simulator over HTTP with cozepy, retries while Coze can't be
reached, sends after a restart what an earlier worker left, gives up on what Coze refuses for good,
and never holds up the user's request. `forward_feedback` runs one pass by hand."""

import socket
import time
from io import StringIO

import httpx
import pytest
from django.core.management import call_command

from sessions_admin import feedback as fb
from sessions_admin import feedback_outbox
from sessions_admin.models import FeedbackForward, Message
from tests.conftest import LiveServer, auth, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def quick_outbox(settings, monkeypatch):
    """Senders that look often and retry soon, so the tests wait briefly (bounded, by polling)."""
    settings.CHAT_FEEDBACK_POLL_SECONDS = 0.1
    monkeypatch.setattr(fb, "FORWARD_RETRY_BASE_SECONDS", 0.2)
    monkeypatch.setattr(fb, "FORWARD_RETRY_MAX_SECONDS", 0.5)


def closed_port_url() -> str:
    """A URL nothing listens on: connections to it are refused, as to a Coze that is down."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    return f"http://127.0.0.1:{port}"


def received(simulator) -> list[dict]:
    return httpx.get(f"{simulator.base_url}/_sim/feedback").json()["feedback"]


def received_for(simulator, message: Message) -> list[dict]:
    return [record for record in received(simulator) if record["message_id"] == message.coze_message_id]


def answered_turn(http: httpx.Client, key: str, session_id: str = "s1") -> Message:
    response = http.post("/api/chat", json={"message": "hello", "session_id": session_id}, headers=auth(key))
    assert response.status_code == 200, response.text
    return Message.objects.select_related("conversation").get(
        conversation__session__session_id=session_id, kind=Message.Kind.ANSWER
    )


def rate(http: httpx.Client, key: str, answer: Message, body: dict) -> httpx.Response:
    response = http.post(f"/api/messages/{answer.pk}/feedback", json=body, headers=auth(key))
    assert response.status_code == 200, response.text
    return response


def test_a_rating_and_its_removal_arrive_at_coze_for_that_message(http, api_key, simulator):
    answer = answered_turn(http, api_key)
    rate(http, api_key, answer, {"rating": "down", "comment": "Wrong address."})

    [like] = wait_until(lambda: received_for(simulator, answer), timeout=10)
    assert {key: like[key] for key in ("method", "conversation_id", "feedback_type", "comment")} == {
        "method": "POST",
        "conversation_id": answer.conversation.coze_conversation_id,
        "feedback_type": "unlike",
        "comment": "Wrong address.",
    }
    wait_until(lambda: FeedbackForward.objects.filter(message=answer, done=True).exists())
    row = FeedbackForward.objects.get(message=answer)
    assert (row.attempts, row.last_error) == (1, "")

    assert http.delete(f"/api/messages/{answer.pk}/feedback", headers=auth(api_key)).status_code == 204
    calls = wait_until(lambda: len(received_for(simulator, answer)) == 2 and received_for(simulator, answer))
    assert calls[1]["method"] == "DELETE"


def test_while_coze_cant_be_reached_the_rating_is_stored_at_once_retried_and_sent_later(
    http, api_key, simulator, settings
):
    answer = answered_turn(http, api_key)
    working, settings.COZE_BASE_URL = settings.COZE_BASE_URL, closed_port_url()
    try:
        started = time.monotonic()
        rate(http, api_key, answer, {"rating": "up", "comment": "Spot on."})
        took = time.monotonic() - started
        # The request never waits for Coze: it answered while every attempt fails.
        assert took < 2.0
        wait_until(lambda: FeedbackForward.objects.filter(message=answer, attempts__gte=2).exists(), timeout=10)
        row = FeedbackForward.objects.get(message=answer)
        assert not row.done and row.last_error.startswith("upstream_unavailable")
        assert received_for(simulator, answer) == []
    finally:
        settings.COZE_BASE_URL = working

    [call] = wait_until(lambda: received_for(simulator, answer), timeout=10)
    assert (call["feedback_type"], call["comment"]) == ("like", "Spot on.")
    wait_until(lambda: FeedbackForward.objects.filter(message=answer, done=True).exists())


def test_a_row_left_pending_by_a_stopped_worker_is_sent_by_the_next_one(api_key, simulator, settings):
    first = LiveServer()
    first.start()
    try:
        with httpx.Client(base_url=first.url, timeout=30) as http:
            answer = answered_turn(http, api_key)
            working, settings.COZE_BASE_URL = settings.COZE_BASE_URL, closed_port_url()
            rate(http, api_key, answer, {"rating": "down"})
            wait_until(lambda: FeedbackForward.objects.filter(message=answer, attempts__gte=1).exists(), timeout=10)
    finally:
        first.stop()
    settings.COZE_BASE_URL = working
    assert received_for(simulator, answer) == []
    assert not FeedbackForward.objects.get(message=answer).done

    second = LiveServer()
    second.start()
    try:
        httpx.get(f"{second.url}/health", timeout=10)  # a worker's sender starts with its first request
        [call] = wait_until(lambda: received_for(simulator, answer), timeout=10)
        assert call["feedback_type"] == "unlike"
        wait_until(lambda: FeedbackForward.objects.filter(message=answer, done=True).exists())
    finally:
        second.stop()


def test_a_rating_coze_refuses_for_good_is_given_up_at_once(http, api_key, simulator):
    answer = answered_turn(http, api_key)
    # A message Coze does not have (deleted there, say): Coze answers 4000, which no retry mends.
    Message.objects.filter(pk=answer.pk).update(coze_message_id="7000000000000000009")
    rate(http, api_key, answer, {"rating": "up"})

    wait_until(lambda: FeedbackForward.objects.filter(message=answer, attempts=fb.MAX_FORWARD_ATTEMPTS).exists())
    row = FeedbackForward.objects.get(message=answer)
    assert not row.done and row.last_error.startswith("upstream_error (Coze 4000")
    assert fb.forward_counts() == {"pending": 0, "given_up": 1, "sent": 0}


def test_the_command_sends_what_is_due_and_says_what_is_left(api_key, simulator):
    # The turns through a server; the ratings once it has stopped, so that no worker's sender runs,
    # as when an operator runs the command.
    server = LiveServer()
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            answers = [answered_turn(http, api_key, f"s{n}") for n in range(3)]
    finally:
        server.stop()
    client_key = Message.objects.get(pk=answers[0].pk).conversation.session.owner_key
    for answer in answers:
        fb.feedback_set(owner_key=client_key, message_id=answer.pk, rating="down", comment="meh")
    FeedbackForward.objects.filter(message=answers[2]).update(attempts=fb.MAX_FORWARD_ATTEMPTS)  # given up

    out = StringIO()
    call_command("forward_feedback", stdout=out)
    assert out.getvalue().strip() == (
        "Sent 2 ratings to Coze, 0 failed (retried later), 0 refused for good; now 0 pending, 1 given up."
    )
    assert {record["message_id"] for record in received(simulator)} >= {a.coze_message_id for a in answers[:2]}

    out = StringIO()
    call_command("forward_feedback", "--retry-given-up", stdout=out)
    assert out.getvalue().splitlines() == [
        "Made 1 given-up ratings pending again.",
        "Sent 1 ratings to Coze, 0 failed (retried later), 0 refused for good; now 0 pending, 0 given up.",
    ]
    assert FeedbackForward.objects.filter(done=True).count() == 3


def test_a_sender_runs_once_per_event_loop_and_restarts_if_it_died():
    import asyncio

    async def main():
        feedback_outbox.start()
        first = feedback_outbox._senders[asyncio.get_running_loop()].task
        feedback_outbox.start()
        assert feedback_outbox._senders[asyncio.get_running_loop()].task is first
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        feedback_outbox.start()
        second = feedback_outbox._senders[asyncio.get_running_loop()].task
        assert second is not first and not second.done()
        second.cancel()
        await asyncio.gather(second, return_exceptions=True)

    asyncio.run(main())


def test_senders_in_several_workers_send_each_rating_exactly_once(http, api_key, simulator):
    import asyncio
    import threading

    answers = [answered_turn(http, api_key, f"many{n}") for n in range(12)]
    owner_key = answers[0].conversation.session.owner_key
    for answer in answers:
        fb.feedback_set(owner_key=owner_key, message_id=answer.pk, rating="up", comment=str(answer.pk))

    # Two more workers' senders, each on its own event loop, beside the live server's own.
    def worker():
        async def drain():
            while (await feedback_outbox.aforward_due(limit=3)).claimed:
                pass

        asyncio.run(drain())

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    wait_until(lambda: FeedbackForward.objects.filter(done=True).count() == len(answers), timeout=10)
    ours = {answer.coze_message_id for answer in answers}
    sent = [record["message_id"] for record in received(simulator) if record["message_id"] in ours]
    assert sorted(sent) == sorted(ours)  # each once
