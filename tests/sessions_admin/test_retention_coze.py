"""Retention at Coze (docs/api.md §15): prune_chat_data and clear_chat_sessions delete, through the
Coze adapter, a session's conversations when the session goes and a turn's messages where the
session lives on. Turns are real: stored by the chat service, their conversations and messages at
the Coze simulator, which records each deletion."""

from datetime import timedelta
from io import StringIO

import httpx
import pytest
from django.core.management import call_command
from django.utils import timezone

from sessions_admin import coze_outbox
from sessions_admin.models import ChatSession, Conversation, CozeDeletion, Message, Reply
from tests.conftest import auth

pytestmark = pytest.mark.django_db(transaction=True)


def run(command: str, *args) -> str:
    out = StringIO()
    call_command(command, *args, stdout=out, stderr=StringIO())
    return out.getvalue().strip().splitlines()[-1]


def sim(simulator, path: str) -> dict:
    return httpx.get(f"{simulator.base_url}{path}").json()


def chat(http, key: str, session_id: str, message: str) -> None:
    response = http.post("/api/chat", json={"message": message, "session_id": session_id}, headers=auth(key))
    assert response.status_code == 200, response.text


def age(*, session: ChatSession | None = None, replies=(), days: float) -> None:
    when = timezone.now() - timedelta(days=days)
    for reply in replies:
        Reply.objects.filter(pk=reply.pk).update(started_at=when)
        Message.objects.filter(reply=reply).update(created_at=when)
    if session is not None:
        ChatSession.objects.filter(pk=session.pk).update(last_activity=when)
        Conversation.objects.filter(session=session).update(last_activity=when)


@pytest.fixture
def turns(http, api_key, simulator, settings):
    """An idle session (one turn, 40 days ago) and a session in use (a turn 40 days ago, one now)."""
    settings.CHAT_RETENTION_DAYS = 30
    chat(http, api_key, "idle", "long ago")
    chat(http, api_key, "living", "old question")
    chat(http, api_key, "living", "new question")
    idle = ChatSession.objects.get(session_id="idle")
    living = ChatSession.objects.get(session_id="living")
    old_turn, new_turn = Reply.objects.filter(session=living).order_by("pk")
    age(session=idle, replies=Reply.objects.filter(session=idle), days=40)
    age(replies=[old_turn], days=40)
    seen = len(sim(simulator, "/_sim/deletions")["deletions"])
    return {
        "idle": idle.current_conversation.coze_conversation_id,
        "living": living.current_conversation.coze_conversation_id,
        "old_turn": old_turn,
        "new_turn": new_turn,
        "seen": seen,
    }


def test_prune_deletes_a_gone_sessions_conversation_and_an_old_turns_messages_at_coze(simulator, turns):
    living = sim(simulator, f"/_sim/conversations/{turns['living']}")
    old_chat = turns["old_turn"].coze_chat_id
    old_answer = Message.objects.get(reply=turns["old_turn"], kind="answer").coze_message_id
    listed = httpx.post(
        f"{simulator.base_url}/v1/conversation/message/list",
        params={"conversation_id": turns["living"]},
        json={"chat_id": old_chat},
        headers={"Authorization": f"Bearer {simulator.config.token}"},
    ).json()["data"]
    old_messages = {m["id"] for m in listed}
    assert old_answer in old_messages and len(old_messages) == 2  # the question and the answer

    line = run("prune_chat_data", "--noinput")

    assert line.endswith("at Coze: 1 conversation and 1 turn deleted.")
    deletions = sim(simulator, "/_sim/deletions")["deletions"][turns["seen"] :]
    assert [(d["conversation_id"], d["message_id"]) for d in deletions if d["message_id"] is None] == [
        (turns["idle"], None)
    ]
    assert {d["message_id"] for d in deletions if d["message_id"]} == old_messages
    assert all(d["conversation_id"] == turns["living"] for d in deletions if d["message_id"])
    # The session in use keeps its conversation at Coze, with the recent turn's messages.
    left = sim(simulator, f"/_sim/conversations/{turns['living']}")["message_ids"]
    assert set(left) == set(living["message_ids"]) - old_messages and left
    assert httpx.get(f"{simulator.base_url}/_sim/conversations/{turns['idle']}").status_code == 404


def test_what_coze_no_longer_has_counts_as_deleted(simulator, turns):
    httpx.delete(
        f"{simulator.base_url}/v1/conversations/{turns['idle']}",
        headers={"Authorization": f"Bearer {simulator.config.token}"},
    )
    assert run("prune_chat_data", "--noinput").endswith("at Coze: 1 conversation and 1 turn deleted.")


def test_failures_at_coze_are_kept_in_the_outbox_and_the_next_prune_retries_them(simulator, turns, settings, caplog):
    base_url = settings.COZE_BASE_URL
    settings.COZE_BASE_URL = "http://127.0.0.1:9"  # nothing listens there
    line = run("prune_chat_data", "--noinput")
    assert line.endswith("at Coze: 1 conversation and 1 turn (0 deleted, 2 failed and kept to retry, see the log).")
    # The local deletion stands; what Coze still holds waits in the outbox, ids and error only.
    assert not ChatSession.objects.filter(session_id="idle").exists()
    assert not Reply.objects.filter(pk=turns["old_turn"].pk).exists()
    waiting = {row.kind: row for row in CozeDeletion.objects.all()}
    assert set(waiting) == {"conversation", "turn"}
    assert waiting["conversation"].coze_conversation_id == turns["idle"]
    assert waiting["turn"].coze_chat_id == turns["old_turn"].coze_chat_id
    assert all(row.attempts == 1 and row.last_error.startswith("upstream_unavailable") for row in waiting.values())
    failures = [r.getMessage() for r in caplog.records if r.name == "chat.coze.conversations"]
    assert any(turns["idle"] in text and "upstream_unavailable" in text for text in failures), failures

    # Coze is back; the next run (the next day) sends them.
    settings.COZE_BASE_URL = base_url
    CozeDeletion.objects.update(next_attempt_at=timezone.now())
    line = run("prune_chat_data", "--noinput")
    assert line.endswith("earlier Coze deletions retried: 2 deleted.")
    assert not CozeDeletion.objects.exists()
    deletions = sim(simulator, "/_sim/deletions")["deletions"][turns["seen"] :]
    assert (turns["idle"], None) in [(d["conversation_id"], d["message_id"]) for d in deletions]
    assert len([d for d in deletions if d["message_id"]]) == 2


def test_deletions_committed_but_never_sent_are_sent_by_the_next_run(simulator, turns, monkeypatch):
    # As if the process died between the commit and the calls to Coze.
    monkeypatch.setattr(coze_outbox, "deliver", lambda pks, *, send: coze_outbox.CozeOutcome())
    run("prune_chat_data", "--noinput")
    assert CozeDeletion.objects.count() == 2
    monkeypatch.undo()
    assert run("prune_chat_data", "--noinput").endswith("earlier Coze deletions retried: 2 deleted.")
    assert not CozeDeletion.objects.exists()
    deletions = sim(simulator, "/_sim/deletions")["deletions"][turns["seen"] :]
    assert len(deletions) == 3  # the idle conversation; the old turn's question and answer


def test_clear_chat_sessions_deletes_the_sessions_conversations_at_coze(simulator, turns):
    line = run("clear_chat_sessions", "--session-id", "living", "--noinput")
    assert line.endswith("at Coze: 1 conversation deleted.")
    deletions = sim(simulator, "/_sim/deletions")["deletions"][turns["seen"] :]
    assert [(d["conversation_id"], d["message_id"]) for d in deletions] == [(turns["living"], None)]


def test_in_demo_mode_nothing_is_sent_and_the_summary_says_why(turns, settings):
    settings.COZE_API_TOKEN = ""
    settings.COZE_OAUTH_APP_ID = ""
    assert run("prune_chat_data", "--noinput").endswith(
        "at Coze: 1 conversation and 1 turn (not sent: demo mode, no Coze to delete them at)."
    )
