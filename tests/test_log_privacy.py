"""Logs never hold message text, at any level (docs/api.md §15): with DEBUG on for the project's
loggers, `django.db.backends` (SQL and its parameters), `cozepy` and `httpx`/`httpcore` (requests
and responses), turns over HTTP, SSE, WebSocket and the OpenAI path leave the question and the
answer in no log record. The masking is done by the filters of settings.LOGGING
(chat.runtime.log_privacy), on the loggers themselves, so every handler gets masked records."""

import json
import logging

import httpx
import pytest
from websockets.sync.client import connect

from sessions_admin.feedback import feedback_set
from sessions_admin.models import Message
from tests.conftest import auth

pytestmark = pytest.mark.django_db(transaction=True)

QUESTION = "Quokka-zebra 7781 wants its parcel at jane@example.org"
# The simulator answers "You said: <question>"; this is what of it is the bot's own.
ANSWER_MARK = "You said: Quokka-zebra"
SECRET_PARTS = ("Quokka-zebra", "quokka-zebra", "jane@example.org", "7781 wants")

DEBUG_LOGGERS = (
    "chat",
    "sessions_admin",
    "cozeproject",
    "django.db.backends",
    "cozepy",
    "httpx",
    "httpcore",
    # The WebSocket servers' frame logs (uvicorn's protocol logs to uvicorn.error), and the
    # test's own client's.
    "websockets",
    "uvicorn.error",
)


class Capture(logging.Handler):
    """Every record, as every handler could render it: the message and the record's extras."""

    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        extras = {k: v for k, v in vars(record).items() if k in ("sql", "params", "args")}
        self.lines.append(f"{record.name} {record.getMessage()} {extras!r}")


@pytest.fixture
def captured(settings, asgi_server):
    # After the server: loading the ASGI application runs django.setup(), which configures logging anew.
    settings.DEBUG = True  # Django logs SQL only in debug (or with a debug cursor)
    capture = Capture()
    root = logging.getLogger()
    saved = {name: logging.getLogger(name).level for name in DEBUG_LOGGERS}
    for name in DEBUG_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    root.addHandler(capture)
    try:
        yield capture
    finally:
        root.removeHandler(capture)
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def leaks(capture: Capture) -> list[str]:
    return [line for line in capture.lines if any(part in line for part in SECRET_PARTS)]


def test_turns_on_every_transport_leave_no_message_text_in_any_log_record(captured, asgi_server, api_key, settings):
    with httpx.Client(base_url=asgi_server.url, timeout=30) as client:
        answer = client.post("/api/chat", json={"message": QUESTION, "session_id": "http"}, headers=auth(api_key))
        assert answer.status_code == 200 and answer.json()["response"].startswith(ANSWER_MARK)
        stream = client.post(
            "/api/chat/stream",
            json={"message": QUESTION, "session_id": "sse", "resumable": True},
            headers=auth(api_key),
        )
        assert ANSWER_MARK in stream.text
        resumed = client.get("/api/sessions/sse/stream", headers=auth(api_key))
        assert ANSWER_MARK in resumed.text
        completion = client.post(
            "/v1/chat/completions",
            json={"model": settings.COZE_BOT_ID, "messages": [{"role": "user", "content": QUESTION}]},
            headers=auth(api_key),
        )
        listed = client.get("/api/sessions/http/messages", headers=auth(api_key))
        assert QUESTION in listed.text
        # A statement through Django's cursor that carries text: messages entered with a Coze
        # conversation (Coze's own API).
        entered = client.post(
            "/v1/conversation/create",
            json={"messages": [{"role": "user", "content": QUESTION, "content_type": "text"}]},
            headers=auth(api_key),
        )
        assert entered.json()["code"] == 0, entered.text
    with connect(f"{asgi_server.ws_url}/ws/chat/", additional_headers=auth(api_key)) as socket:
        socket.send(json.dumps({"type": "chat", "message": QUESTION, "session_id": "ws"}))
        frames = []
        while not frames or frames[-1]["type"] != "done":
            frames.append(json.loads(socket.recv(timeout=10)))
    assert frames[-2]["content"].startswith(ANSWER_MARK)
    assert Message.objects.filter(kind="question").count() >= 5
    # A rating's comment is written through Django's cursor (no HTTP route for it on this branch).
    answer = Message.objects.filter(kind="answer").first()
    feedback_set(owner_key=answer.conversation.session.owner_key, message_id=answer.pk, rating="down", comment=QUESTION)

    # The loggers did log: SQL, Coze's requests and responses, the turns.
    names = {line.split(" ", 1)[0] for line in captured.lines}
    assert {"django.db.backends", "cozepy", "chat.turn.service"} <= names, names
    assert completion.status_code == 200 and ANSWER_MARK in completion.text
    assert leaks(captured) == []


def test_sql_literals_of_every_quoting_are_masked():
    from chat.runtime.log_privacy import masked_sql

    sql = "INSERT INTO t VALUES (1, 'it''s Quokka', E'back\\\\slash \\' Quokka', '{\"a\": \"Quokka\"}'::jsonb, 7)"
    assert masked_sql(sql) == "INSERT INTO t VALUES (1, '…', '…', '…'::jsonb, 7)"


def test_a_cozepy_record_of_an_unknown_shape_keeps_none_of_its_text():
    from chat.runtime.log_privacy import CozepyBodyFilter

    record = logging.LogRecord("cozepy", logging.DEBUG, __file__, 1, "new %s shape %s", ("Quokka", 3), None)
    CozepyBodyFilter().filter(record)
    assert record.getMessage() == "new [masked] shape 3"  # a number says nothing
    known = logging.LogRecord(
        "cozepy",
        logging.DEBUG,
        __file__,
        1,
        "request %s#%s responding, logid=%s, data=%s",
        ("POST", "/v3/chat", "L1", {"q": "Quokka"}),
        None,
    )
    CozepyBodyFilter().filter(known)
    assert known.getMessage() == "request POST#/v3/chat responding, logid=L1, data=[masked]"
