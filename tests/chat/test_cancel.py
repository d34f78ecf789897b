"""A reply that ends early — client gone or cancelled through the API — is stopped upstream and stored."""

import threading
import time

import httpx
import pytest

from sessions_admin.models import Message, Reply
from tests.conftest import auth, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def sim_chat(simulator, chat_id: str) -> dict:
    return httpx.get(f"{simulator.base_url}/_sim/chats/{chat_id}").json()


def open_stream(asgi_server, key: str, message: str):
    """Start an SSE reply and read until the first delta; returns (client, response, session event)."""
    client = httpx.Client(base_url=asgi_server.url, timeout=30)
    request = client.build_request("POST", "/api/chat/stream", json={"message": message}, headers=auth(key))
    response = client.send(request, stream=True)
    assert response.status_code == 200
    lines = response.iter_lines()
    session = None
    for line in lines:
        if line.startswith("data: ") and '"type":"session"' in line:
            session = httpx.Response(200, content=line[6:]).json()
        if line.startswith("data: ") and '"type":"delta"' in line:
            break
    return client, response, lines, session


def test_closing_the_sse_connection_closes_upstream_within_a_second_and_stores_cancelled(
    asgi_server, api_key, simulator
):
    client, response, _, session = open_stream(asgi_server, api_key, "[sim:slow=100] a long story to abandon")

    closed_wall = time.time()
    response.close()
    client.close()
    closed_at = time.monotonic()

    # Polled with a generous bound; the promise (within a second) is checked on the simulator's clock.
    disconnected_at = wait_until(lambda: sim_chat(simulator, session["chat_id"])["client_disconnected_at"])
    assert disconnected_at - closed_wall < 1.0
    reply = wait_until(
        lambda: Reply.objects.filter(coze_chat_id=session["chat_id"]).exclude(status="in_progress").first()
    )
    assert reply.status == "cancelled"
    assert time.monotonic() - closed_at < 5
    partial = Message.objects.get(reply=reply, kind="answer").content
    assert partial and "You said: [sim:slow=100] a long story to abandon".startswith(partial)


def test_cancel_api_stops_a_streaming_reply_which_ends_with_an_error_event(asgi_server, http, api_key, simulator):
    client, _, lines, session = open_stream(asgi_server, api_key, "[sim:slow=100] cancel me via the API")
    rest: list[str] = []
    reader = threading.Thread(target=lambda: rest.extend(lines), daemon=True)
    reader.start()

    cancelled = http.post(f"/api/chats/{session['chat_id']}/cancel", headers=auth(api_key))

    assert cancelled.status_code == 200
    assert cancelled.json() == {"chat_id": session["chat_id"], "status": "cancelled"}
    reader.join(10)
    client.close()
    data_lines = [line for line in rest if line.startswith("data: ")]
    assert data_lines[-1] == "data: [DONE]"
    assert '"code":"cancelled"' in data_lines[-2]
    chat = wait_until(
        lambda: (
            sim_chat(simulator, session["chat_id"])["client_disconnected_at"]
            and sim_chat(simulator, session["chat_id"])
        ),
    )
    assert chat["status"] == "canceled"
    reply = Reply.objects.get(coze_chat_id=session["chat_id"])
    assert reply.status == "cancelled"
