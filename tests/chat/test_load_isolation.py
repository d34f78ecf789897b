"""Kinds of database work can't queue behind each other: the health check answers while the chat
turns' pool is saturated, and a flood of API-key lookups (wrong keys) doesn't hold up valid turns."""

import threading

import pytest

from chat.access.auth import owner_from_api_key
from chat.domain.errors import ChatError
from chat.runtime import db
from tests.conftest import auth

pytestmark = pytest.mark.django_db(transaction=True)


def saturate(pool: str) -> threading.Event:
    """Occupy every thread of a database pool until the returned event is set."""
    release = threading.Event()
    executor = db._get_executor(pool)
    for _ in range(db._pool_size(pool)):
        executor.submit(release.wait, 30)
    return release


def test_health_answers_while_every_chat_database_thread_is_busy(http):
    release = saturate("chat")
    try:
        response = http.get("/health", timeout=5)
    finally:
        release.set()

    assert response.status_code == 200
    assert response.json()["database"] == "ok"


def test_valid_turns_go_on_while_key_lookups_are_stuck(http, api_key):
    assert http.post("/api/chat/stream", json={"message": "warm"}, headers=auth(api_key)).status_code == 200
    release = saturate("auth")  # as a flood of wrong keys would keep it
    try:
        response = http.post("/api/chat/stream", json={"message": "still here"}, headers=auth(api_key), timeout=10)
    finally:
        release.set()

    assert response.status_code == 200
    assert "You said: still here" in response.text


def test_what_cannot_be_a_key_is_refused_without_a_database_lookup(django_assert_num_queries):
    for raw in ("cz_short", "not-even-prefixed-" + "x" * 40, "cz_" + "!" * 43):
        with django_assert_num_queries(0), pytest.raises(ChatError) as refused:
            owner_from_api_key(raw)
        assert refused.value.code == "unauthenticated"
