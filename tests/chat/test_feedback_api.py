"""Feedback on an answer (docs/api.md §15) through every way in: `POST|DELETE
/api/messages/{id}/feedback`, the WebSocket `feedback` frame and Coze's own feedback path (cozepy
over HTTP), owner-scoped, shown on the session's messages."""

import json

import httpx
import pytest
from cozepy import CozeAPIError
from cozepy.conversations.message.feedback import FeedbackType
from websockets.sync.client import connect

from chat.access import auth as access_auth
from sessions_admin import feedback as fb
from sessions_admin.models import Feedback, FeedbackForward, Message
from tests.chat.coze_clients import gateway_coze
from tests.conftest import auth, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fresh_token_cache():
    access_auth._token_clients.clear()
    yield
    access_auth._token_clients.clear()


def turn(http: httpx.Client, key: str, session_id: str, text: str = "hello") -> None:
    response = http.post("/api/chat", json={"message": text, "session_id": session_id}, headers=auth(key))
    assert response.status_code == 200, response.text


def messages(http: httpx.Client, key: str, session_id: str) -> list[dict]:
    response = http.get(f"/api/sessions/{session_id}/messages", headers=auth(key))
    assert response.status_code == 200, response.text
    return response.json()["results"]


def answer_id(http: httpx.Client, key: str, session_id: str) -> int:
    return next(m["id"] for m in reversed(messages(http, key, session_id)) if m["type"] == "answer")


def rate(http: httpx.Client, key: str, message_id, body) -> httpx.Response:
    return http.post(f"/api/messages/{message_id}/feedback", json=body, headers=auth(key))


def test_an_answer_is_rated_shown_on_its_message_replaced_and_taken_back(http, api_key):
    turn(http, api_key, "s1")
    answer = answer_id(http, api_key, "s1")

    first = rate(http, api_key, answer, {"rating": "up", "comment": "Clear and short."})
    assert first.status_code == 200, first.text
    assert first.json() == {"message_id": answer, "feedback": {"rating": "up", "comment": "Clear and short."}}
    shown = {m["id"]: m["feedback"] for m in messages(http, api_key, "s1")}
    assert shown.pop(answer) == {"rating": "up", "comment": "Clear and short."}
    assert shown and set(shown.values()) == {None}  # the question and the follow-ups

    second = rate(http, api_key, answer, {"rating": "down"})
    assert second.json()["feedback"] == {"rating": "down", "comment": ""}
    assert Feedback.objects.get().rating == "down"

    removed = http.delete(f"/api/messages/{answer}/feedback", headers=auth(api_key))
    assert removed.status_code == 204
    assert {m["feedback"] for m in messages(http, api_key, "s1")} == {None}
    # Removing again is not an error: the answer simply has no rating.
    assert http.delete(f"/api/messages/{answer}/feedback", headers=auth(api_key)).status_code == 204


def test_another_owners_message_or_an_unknown_id_is_404(http, api_key, other_api_key):
    turn(http, api_key, "s1")
    answer = answer_id(http, api_key, "s1")
    for key, message_id in [(other_api_key, answer), (api_key, answer + 1000), (api_key, "abc"), (api_key, "-1")]:
        for response in (
            rate(http, key, message_id, {"rating": "up"}),
            http.delete(f"/api/messages/{message_id}/feedback", headers=auth(key)),
        ):
            assert response.status_code == 404, (message_id, response.text)
            assert response.json()["code"] == "not_found"
    assert not Feedback.objects.exists()


def test_an_end_user_token_reaches_only_its_own_users_answers(http, api_key):
    def mint(user_id: str) -> str:
        return http.post("/api/tokens", json={"user_id": user_id}, headers=auth(api_key)).json()["token"]

    alice, bob = mint("alice"), mint("bob")
    turn(http, alice, "a1")
    answer = answer_id(http, alice, "a1")
    assert rate(http, bob, answer, {"rating": "down"}).status_code == 404
    assert rate(http, alice, answer, {"rating": "down"}).status_code == 200
    # The client's own key reaches every end user's sessions.
    assert rate(http, api_key, answer, {"rating": "up"}).json()["feedback"]["rating"] == "up"


def test_a_question_rather_than_an_answer_is_400_invalid(http, api_key):
    turn(http, api_key, "s1")
    question = next(m["id"] for m in messages(http, api_key, "s1") if m["type"] == "question")
    response = rate(http, api_key, question, {"rating": "up"})
    assert (response.status_code, response.json()["code"]) == (400, "invalid")
    assert "answer" in response.json()["detail"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"rating": "meh"}, "rating"),
        ({"rating": None}, "rating"),
        ({}, "rating"),
        ({"rating": 1}, "rating"),
        ({"rating": "up", "comment": 5}, "comment"),
        ({"rating": "up", "comment": "x" * (fb.MAX_COMMENT_CHARS + 1)}, "comment"),
        ({"rating": "up", "stars": 5}, "stars"),
        (["up"], None),
    ],
)
def test_a_bad_rating_or_comment_is_a_400_json_error_naming_the_field(http, api_key, body, field):
    turn(http, api_key, "s1")
    response = rate(http, api_key, answer_id(http, api_key, "s1"), body)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["code"] == "invalid"
    if field:
        assert list(response.json()["errors"]) == [field]
    assert not Feedback.objects.exists()


def test_a_body_that_is_not_json_is_a_400_or_415_json_error(http, api_key):
    turn(http, api_key, "s1")
    path = f"/api/messages/{answer_id(http, api_key, 's1')}/feedback"
    broken = http.post(path, content=b"{", headers={**auth(api_key), "Content-Type": "application/json"})
    form = http.post(path, data={"rating": "up"}, headers=auth(api_key))
    assert (broken.status_code, broken.json()["code"]) == (400, "invalid")
    assert (form.status_code, form.json()["code"]) == (415, "unsupported_media_type")


def test_feedback_needs_a_key_and_counts_against_the_clients_rate(http, api_key, settings):
    turn(http, api_key, "s1")
    answer = answer_id(http, api_key, "s1")
    anonymous = http.post(f"/api/messages/{answer}/feedback", json={"rating": "up"})
    assert (anonymous.status_code, anonymous.json()["code"]) == (401, "unauthenticated")

    from tests.chat.limits_helpers import reset_counters

    reset_counters()
    settings.CHAT_RATE_LIMIT_PER_MINUTE = 2
    codes = [rate(http, api_key, answer, {"rating": "up"}).status_code for _ in range(3)]
    assert codes == [200, 200, 429]


# --- the WebSocket frame ---------------------------------------------------------------------------


def ws_frames(socket, *frames: dict) -> list[dict]:
    """Send each frame and read its one answer."""
    answers = []
    for frame in frames:
        socket.send(json.dumps(frame))
        answers.append(json.loads(socket.recv(timeout=10)))
    return answers


def test_the_websocket_feedback_frame_rates_replaces_and_takes_back(asgi_server, http, api_key, other_api_key):
    turn(http, api_key, "s1")
    answer = answer_id(http, api_key, "s1")
    question = answer - 1
    with connect(f"{asgi_server.ws_url}/ws/chat/", additional_headers=auth(api_key)) as socket:
        rated, replaced, bad, on_question, unknown, removed, alive = ws_frames(
            socket,
            {"type": "feedback", "message_id": answer, "rating": "down", "comment": "Wrong date."},
            {"type": "feedback", "message_id": str(answer), "rating": "up"},
            {"type": "feedback", "message_id": answer, "rating": "meh"},
            {"type": "feedback", "message_id": question, "rating": "up"},
            {"type": "feedback", "message_id": answer + 1000, "rating": "up"},
            {"type": "feedback", "message_id": answer, "rating": None},
            {"type": "ping"},
        )
    assert rated == {"type": "feedback", "message_id": answer, "feedback": {"rating": "down", "comment": "Wrong date."}}
    assert replaced == {"type": "feedback", "message_id": str(answer), "feedback": {"rating": "up", "comment": ""}}
    assert (bad["type"], bad["code"], bad["message_id"], list(bad["errors"])) == (
        "error",
        "invalid",
        answer,
        ["rating"],
    )
    assert (on_question["code"], on_question["message_id"]) == ("invalid", question)
    assert (unknown["code"], unknown["message_id"]) == ("not_found", answer + 1000)
    assert removed == {"type": "feedback", "message_id": answer, "feedback": None}
    assert alive == {"type": "pong"}  # refusals leave the socket open
    assert not Feedback.objects.exists()

    with connect(f"{asgi_server.ws_url}/ws/chat/", additional_headers=auth(other_api_key)) as socket:
        [stranger] = ws_frames(socket, {"type": "feedback", "message_id": answer, "rating": "up"})
    assert stranger["code"] == "not_found"
    assert not Feedback.objects.exists()


def test_websocket_feedback_frames_count_against_the_clients_rate(asgi_server, http, api_key, settings):
    from tests.chat.limits_helpers import reset_counters

    turn(http, api_key, "s1")
    answer = answer_id(http, api_key, "s1")
    reset_counters()
    settings.CHAT_RATE_LIMIT_PER_MINUTE = 2
    with connect(f"{asgi_server.ws_url}/ws/chat/", additional_headers=auth(api_key)) as socket:
        frames = ws_frames(socket, *[{"type": "feedback", "message_id": answer, "rating": "up"}] * 3)
    assert [frame["type"] for frame in frames] == ["feedback", "feedback", "error"]
    assert frames[2]["code"] == "rate_limited" and frames[2]["retry_after"] > 0


# --- Coze's own feedback path (cozepy over HTTP) ----------------------------------------------------


def test_cozepy_rates_an_answer_through_cozes_own_feedback_path(asgi_server, http, api_key):
    coze = gateway_coze(asgi_server, api_key)
    conversation = coze.conversations.create()
    chat = coze.chat.create_and_poll(
        conversation_id=conversation.id,
        bot_id=_bot(),
        user_id="u1",
        additional_messages=[_question("Where is my parcel?")],
    )
    answer = next(m for m in chat.messages if m.type.value == "answer")
    feedback_api = coze.conversations.messages.feedback

    feedback_api.create(
        conversation_id=conversation.id,
        message_id=answer.id,
        feedback_type=FeedbackType.UNLIKE,
        reason_types=["inaccurate"],
        comment="It never arrived.",
    )
    stored = Message.objects.get(coze_message_id=answer.id)
    assert (stored.feedback.rating, stored.feedback.comment) == ("down", "It never arrived.")
    shown = {m["id"]: m["feedback"] for m in messages(http, api_key, conversation.id)}
    assert shown[stored.pk] == {"rating": "down", "comment": "It never arrived."}

    feedback_api.create(conversation_id=conversation.id, message_id=answer.id, feedback_type=FeedbackType.LIKE)
    assert Feedback.objects.get().rating == "up"
    feedback_api.delete(conversation_id=conversation.id, message_id=answer.id)
    assert not Feedback.objects.exists()

    question = Message.objects.get(conversation__session__session_id=conversation.id, role="user")
    with pytest.raises(CozeAPIError) as on_question:
        feedback_api.create(
            conversation_id=conversation.id, message_id=str(question.pk), feedback_type=FeedbackType.LIKE
        )
    with pytest.raises(CozeAPIError) as unknown_message:
        feedback_api.create(conversation_id=conversation.id, message_id="7000000000000000001", feedback_type="like")
    with pytest.raises(CozeAPIError) as unknown_conversation:
        feedback_api.delete(conversation_id="7000000000000000002", message_id=answer.id)
    assert on_question.value.code == 4000
    assert unknown_message.value.code == 4000
    assert unknown_conversation.value.code == 4002


def test_cozes_feedback_path_answers_errors_in_cozes_shape(asgi_server, http, api_key, other_api_key):
    coze = gateway_coze(asgi_server, api_key)
    conversation = coze.conversations.create()
    coze.chat.create_and_poll(
        conversation_id=conversation.id, bot_id=_bot(), user_id="u1", additional_messages=[_question("hi")]
    )
    answer = Message.objects.get(conversation__session__session_id=conversation.id, kind="answer")
    path = f"/v1/conversations/{conversation.id}/messages/{answer.coze_message_id}/feedback"
    cases = {
        "bad type": (http.post(path, json={"feedback_type": "love"}, headers=auth(api_key)), 400, 4000),
        "bad reasons": (
            http.post(path, json={"feedback_type": "like", "reason_types": "slow"}, headers=auth(api_key)),
            400,
            4000,
        ),
        "bad comment": (
            http.post(path, json={"feedback_type": "like", "comment": 7}, headers=auth(api_key)),
            400,
            4000,
        ),
        "another owner": (http.post(path, json={"feedback_type": "like"}, headers=auth(other_api_key)), 404, 4002),
        "no key": (http.post(path, json={"feedback_type": "like"}), 401, 4100),
        "wrong method": (http.get(path, headers=auth(api_key)), 405, 4000),
    }
    for name, (response, status, code) in cases.items():
        assert (response.status_code, response.json()["code"]) == (status, code), (name, response.text)
        assert response.headers["x-tt-logid"]
    assert not Feedback.objects.exists()
    ok = http.post(path, json={"feedback_type": "like", "comment": "thanks"}, headers=auth(api_key))
    assert ok.json() == {"code": 0, "msg": "", "data": {}}
    wait_until(lambda: FeedbackForward.objects.filter(done=True).exists(), timeout=10)


def _bot() -> str:
    from tests.chat.coze_clients import bot

    return bot()


def _question(text: str):
    from tests.chat.coze_clients import question

    return question(text)[0]


def test_the_schema_describes_the_feedback_paths_and_the_rating_on_messages():
    from tests.chat.test_openapi import load_schema

    schema = load_schema()
    ours = schema["paths"]["/api/messages/{message_id}/feedback"]
    assert set(ours) >= {"post", "delete"} and "204" in ours["delete"]["responses"]
    body = schema["components"]["schemas"]["Feedback"]
    assert body["properties"]["comment"]["maxLength"] == fb.MAX_COMMENT_CHARS
    assert body["required"] == ["rating"]
    assert schema["components"]["schemas"]["Message"]["properties"]["feedback"]["nullable"] is True
    coze = schema["paths"]["/v1/conversations/{conversation_id}/messages/{message_id}/feedback"]
    assert set(coze) == {"post", "delete"}
