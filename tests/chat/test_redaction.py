"""CHAT_REDACT (docs/api.md §15): what is stored holds placeholders, what goes to Coze and to the
client live does not; the OpenAI path matches resent histories redacted; a resume after the window
of a redacted reply gets the stored answer whole, marked."""

import json
from io import StringIO

import httpx
import openai
import pytest
import redis
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from chat.resume import replay
from sessions_admin.models import ChatSession, Message, Reply
from tests.conftest import auth, read_sse, wait_until
from tests.sessions_admin.factories import make_user

pytestmark = pytest.mark.django_db(transaction=True)

PERSONAL = "mail jane.doe@example.com or call +44 20 7946 0958, card 4111 1111 1111 1111, order 1234567812345678"
REDACTED = "mail [email] or call [phone], card [card], order 1234567812345678"


@pytest.fixture
def redact_all(settings):
    settings.CHAT_REDACT = frozenset({"emails", "phones", "cards"})
    return settings


def sim_chat(simulator, chat_id: str) -> dict:
    return httpx.get(f"{simulator.base_url}/_sim/chats/{chat_id}").json()


def test_saved_question_answer_titles_and_exports_hold_placeholders_while_coze_and_the_client_get_the_text(
    http, api_key, simulator, redact_all
):
    response = http.post("/api/chat/stream", json={"message": PERSONAL, "session_id": "pii"}, headers=auth(api_key))
    events = read_sse(response)
    completed = next(e["data"] for e in events if e.get("event") == "completed")

    # Live: the client reads what the bot wrote; Coze got the question as typed.
    assert completed["content"] == f"You said: {PERSONAL}"
    assert "redacted" not in completed
    reply = Reply.objects.get()
    sent = sim_chat(simulator, reply.coze_chat_id)["additional_messages"]
    assert sent[-1]["content"] == PERSONAL

    # Stored: placeholders, in the messages, the session's title and the transcript's digest source.
    stored = dict(Message.objects.exclude(kind="follow_up").values_list("kind", "content"))
    assert stored == {"question": REDACTED, "answer": f"You said: {REDACTED}"}
    assert reply.redacted is True
    sessions = http.get("/api/sessions", headers=auth(api_key)).json()
    listed = sessions["results"] if isinstance(sessions, dict) else sessions
    assert [s.get("title") for s in listed] == [REDACTED[:80]]
    messages = http.get("/api/sessions/pii/messages", headers=auth(api_key)).text
    assert REDACTED in messages and "jane.doe" not in messages and "4111" not in messages

    staff = Client()
    staff.force_login(make_user("staffer", superuser=True))
    transcript = staff.get(reverse("admin:sessions_admin_conversation_change", args=[reply.conversation_id]))
    assert transcript.status_code == 200
    page = transcript.content.decode()
    assert "[email]" in page and "jane.doe" not in page and "4111" not in page

    out = StringIO()
    call_command("export_chat_data", stdout=out, stderr=StringIO())
    assert REDACTED in out.getvalue() and "jane.doe" not in out.getvalue() and "7946" not in out.getvalue()


def test_without_chat_redact_everything_is_stored_as_written(http, api_key, settings):
    settings.CHAT_REDACT = frozenset()
    http.post("/api/chat", json={"message": PERSONAL, "session_id": "plain"}, headers=auth(api_key))
    assert Message.objects.get(kind="question").content == PERSONAL
    assert Reply.objects.get().redacted is False


def test_a_reply_with_nothing_to_redact_is_not_marked(http, api_key, redact_all):
    http.post("/api/chat", json={"message": "order 1234567812345678", "session_id": "s"}, headers=auth(api_key))
    assert Message.objects.get(kind="answer").content == "You said: order 1234567812345678"
    assert Reply.objects.get().redacted is False


def frames_of(raw: bytes) -> list[dict]:
    parsed = []
    for part in raw.split(b"\n\n"):
        if not part or part.startswith(b":"):
            continue
        fields = dict(line.split(": ", 1) for line in part.decode().split("\n") if ": " in line)
        data = fields["data"]
        parsed.append(
            {"id": int(fields["id"]), "event": fields["event"], "data": data if data == "[DONE]" else json.loads(data)}
        )
    return parsed


def test_a_resume_of_a_redacted_reply_within_the_window_replays_as_sent_and_after_it_gets_the_stored_answer_whole(
    asgi_server, api_key, redact_all, backend, settings
):
    body = {"message": "[sim:echo]" + PERSONAL, "session_id": "resumed", "resumable": True}
    with httpx.Client(base_url=asgi_server.url, timeout=30) as client:
        sent = frames_of(client.post("/api/chat/stream", json=body, headers=auth(api_key)).content)
    reply = wait_until(lambda: Reply.objects.filter(redacted=True, ended_without_client__isnull=False).first())

    def resume(after: int) -> list[dict]:
        headers = {**auth(api_key), "Last-Event-ID": str(after)}
        return frames_of(
            httpx.get(f"{asgi_server.url}/api/sessions/resumed/stream", headers=headers, timeout=30).content
        )

    # Within the window: the events as they were sent (resumed after the third, by its id).
    third = sent[2]["id"]
    assert resume(third) == sent[3:]

    # After it: the stored answer, whole, and the completed event says it was redacted.
    if backend == "memory":
        replay.memory._evict(reply.pk)
    else:
        redis.from_url(settings.REDIS_URL).delete(f"{replay.KEY_PREFIX}{reply.pk}")
    after = resume(third)
    assert [f["event"] for f in after] == ["session", "delta", "completed", "done"]
    # The ids of what each stands for (docs/api.md §9): `session` the odd id just above the
    # client's, `completed` and `done` their original ids.
    assert after[0]["id"] == third + 1
    assert [f["id"] for f in after[2:]] == [f["id"] for f in sent[-2:]]
    assert after[1]["data"]["content"] == REDACTED
    assert after[2]["data"]["content"] == REDACTED and after[2]["data"]["redacted"] is True


def test_the_openai_path_matches_a_redacted_session_by_its_resent_history(asgi_server, api_key, simulator, redact_all):
    model = redact_all.COZE_BOT_ID
    with openai.OpenAI(base_url=f"{asgi_server.url}/v1", api_key=api_key, max_retries=0) as client:
        history: list[dict] = []
        sessions = set()
        for text in (PERSONAL, "and again"):
            history.append({"role": "user", "content": text})
            raw = client.chat.completions.with_raw_response.create(model=model, messages=history)
            sessions.add(raw.headers["x-session-id"])
            history.append({"role": "assistant", "content": raw.parse().choices[0].message.content})

    # The client resent the unredacted history; it matched the stored, redacted transcript.
    assert len(sessions) == 1 and ChatSession.objects.count() == 1
    assert history[1]["content"] == f"You said: {PERSONAL}"
    assert list(Message.objects.filter(kind="question").values_list("content", flat=True)) == [REDACTED, "and again"]
    chat_id = Reply.objects.order_by("pk").last().coze_chat_id
    # Only the last message went to Coze: the conversation was continued there too.
    assert [m["content"] for m in sim_chat(simulator, chat_id)["additional_messages"]] == ["and again"]


def test_a_long_question_and_answer_are_redacted_too(http, api_key, redact_all):
    # Over REDACT_ON_LOOP_MAX_CHARS: redacted on a thread rather than on the event loop.
    long = PERSONAL + " " + "lorem ipsum " * 500
    response = http.post(
        "/api/chat", json={"message": "[sim:echo]" + long, "session_id": "long"}, headers=auth(api_key)
    )
    assert response.json()["response"] == long
    stored = dict(Message.objects.exclude(kind="follow_up").values_list("kind", "content"))
    assert stored["question"].startswith("[sim:echo]" + REDACTED) and stored["answer"].startswith(REDACTED)
    assert Reply.objects.get().redacted is True
