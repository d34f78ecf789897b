"""Resumable replies (docs/api.md §9): a reply survives its client going away, and a client that
comes back — by SSE with Last-Event-ID or by a WebSocket `resume` frame — gets exactly the bytes
it missed, then the rest live. Each test runs with the in-memory buffer and with Redis Streams."""

import json
import threading

import httpx
import pytest
import redis

from chat.resume import replay
from sessions_admin.models import Message, Reply
from tests.chat.conftest import clear_redis_buffers
from tests.conftest import auth, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

# CJK, emoji sequences (ZWJ, flags, skin tones), CRLF, LF, quotes and backslashes: the simulator
# splits deltas inside all of them.
TRICKY = 'CJK 你好，世界。— emoji 👩‍👩‍👧‍👦🏳️‍🌈👍🏽 — "quotes" \\ back\\slash\r\nCRLF\nLF\n\n  spaces  ' * 3  # noqa: RUF001


def split_events(raw: bytes) -> list[bytes]:
    """The SSE body as its events' bytes (each with its blank line), heartbeat comments dropped."""
    return [part + b"\n\n" for part in raw.split(b"\n\n") if part and not part.startswith(b":")]


def event_id(frame: bytes) -> int:
    return int(frame.split(b"\n", 1)[0].removeprefix(b"id: "))


def event_data(frame: bytes):
    data = frame.split(b"\ndata: ", 1)[1].rstrip(b"\n").decode()
    return data if data == "[DONE]" else json.loads(data)


def deltas_of(frames: list[bytes]) -> str:
    return "".join(d["content"] for d in map(event_data, frames) if isinstance(d, dict) and d["type"] == "delta")


def start_and_drop(base_url: str, key: str, body: dict, deltas: int = 3) -> list[bytes]:
    """Start a stream, read until `deltas` deltas arrived, then drop the connection."""
    frames: list[bytes] = []
    buffer = b""
    with httpx.Client(base_url=base_url, timeout=30) as client:
        with client.stream("POST", "/api/chat/stream", json=body, headers=auth(key)) as response:
            assert response.status_code == 200, response.read()
            for chunk in response.iter_raw():
                buffer += chunk
                *complete, buffer = buffer.split(b"\n\n")
                frames.extend(part + b"\n\n" for part in complete if part and not part.startswith(b":"))
                if sum(1 for f in frames if b"\nevent: delta\n" in f) >= deltas:
                    break
    return frames


def resume(base_url: str, key: str, session_id: str, last_event_id: int | None = None, *, query=False):
    headers = auth(key)
    params = {}
    if last_event_id is not None:
        if query:
            params["last_event_id"] = str(last_event_id)
        else:
            headers["Last-Event-ID"] = str(last_event_id)
    response = httpx.get(f"{base_url}/api/sessions/{session_id}/stream", headers=headers, params=params, timeout=30)
    return response


def test_a_dropped_stream_resumes_byte_exact_after_last_event_id(asgi_server, api_key, backend):
    body = {"message": "[sim:slow=40][sim:echo]" + TRICKY, "session_id": "phone", "resumable": True}
    seen = start_and_drop(asgi_server.url, api_key, body)
    last = event_id(seen[-1])

    resumed = resume(asgi_server.url, api_key, "phone", last)

    assert resumed.status_code == 200
    assert resumed.headers["content-type"].startswith("text/event-stream")
    rest = split_events(resumed.content)
    assert [event_id(f) for f in seen + rest] == list(range(1, len(seen) + len(rest) + 1))
    assert rest[-1] == f"id: {event_id(rest[-1])}\nevent: done\ndata: [DONE]\n\n".encode()
    completed = event_data(rest[-2])
    assert completed["type"] == "completed"
    assert deltas_of(seen) + deltas_of(rest) == completed["content"] == TRICKY
    # Replayed from the start afterwards, the reply is byte for byte what the first client got,
    # then what the resume got: one stream, whoever reads it and whenever.
    everything = split_events(resume(asgi_server.url, api_key, "phone").content)
    assert b"".join(everything) == b"".join(seen) + b"".join(rest)
    # ?last_event_id= works like the header.
    assert split_events(resume(asgi_server.url, api_key, "phone", last, query=True).content) == rest
    reply = Reply.objects.get()
    assert reply.status == "completed"
    assert Message.objects.get(kind="answer").content == TRICKY
    assert wait_until(lambda: Reply.objects.get().resume_count == 3)
    assert Reply.objects.get().resumable is True and Reply.objects.get().ended_without_client is True


def test_a_reply_whose_client_never_returns_is_completed_and_stored(asgi_server, api_key, backend, simulator):
    body = {"message": "[sim:slow=30][sim:echo]" + TRICKY, "session_id": "gone", "resumable": True}
    seen = start_and_drop(asgi_server.url, api_key, body, deltas=2)
    chat_id = event_data(seen[0])["chat_id"]

    reply = wait_until(lambda: Reply.objects.filter(status="completed").first(), timeout=20)

    assert reply.coze_chat_id == chat_id
    assert Message.objects.get(kind="answer").content == TRICKY
    chat = httpx.get(f"{simulator.base_url}/_sim/chats/{chat_id}").json()
    assert chat["status"] == "completed" and chat["client_disconnected_at"] is None
    assert wait_until(lambda: Reply.objects.get().ended_without_client is True)


def test_a_reply_that_is_not_resumable_is_still_cancelled_when_its_client_goes(asgi_server, api_key, backend):
    body = {"message": "[sim:slow=50][sim:echo]" + TRICKY, "session_id": "plain"}
    start_and_drop(asgi_server.url, api_key, body, deltas=2)

    reply = wait_until(lambda: Reply.objects.exclude(status="in_progress").first(), timeout=10)

    assert reply.status == "cancelled" and reply.resumable is False
    # A resume of a reply that was not kept gets the stored reply.
    frames = split_events(resume(asgi_server.url, api_key, "plain").content)
    assert [event_data(f)["type"] if f.find(b"[DONE]") < 0 else "done" for f in frames] == [
        "session",
        "delta",
        "error",
        "done",
    ]
    assert event_data(frames[2])["code"] == "cancelled"
    assert deltas_of(frames) == Message.objects.get(kind="answer").content


def test_two_followers_at_once_get_the_same_bytes(asgi_server, api_key, backend):
    body = {"message": "[sim:slow=40][sim:echo]" + TRICKY, "session_id": "tabs", "resumable": True}
    seen = start_and_drop(asgi_server.url, api_key, body, deltas=2)
    results: dict[str, bytes] = {}

    def follow(name: str, after: int) -> None:
        results[name] = resume(asgi_server.url, api_key, "tabs", after).content

    threads = [
        threading.Thread(target=follow, args=("a", event_id(seen[-1]))),
        threading.Thread(target=follow, args=("b", 0)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    a, b = split_events(results["a"]), split_events(results["b"])
    assert b[: len(seen)] == seen
    assert b[len(seen) :] == a
    assert deltas_of(b) == TRICKY and b[-1].endswith(b"data: [DONE]\n\n")


def test_resume_within_the_window_after_the_end_replays_the_kept_events(asgi_server, api_key, backend):
    body = {"message": "[sim:echo]" + TRICKY, "session_id": "later", "resumable": True}
    with httpx.Client(base_url=asgi_server.url, timeout=30) as client:
        whole = client.post("/api/chat/stream", json=body, headers=auth(api_key)).content
    frames = split_events(whole)

    for after in (0, 1, 5, len(frames) - 1, len(frames)):
        assert split_events(resume(asgi_server.url, api_key, "later", after).content) == frames[after:]


def test_resume_after_the_window_gets_the_stored_reply(asgi_server, api_key, backend):
    body = {"message": "[sim:echo]" + TRICKY, "session_id": "expired", "resumable": True}
    with httpx.Client(base_url=asgi_server.url, timeout=30) as client:
        frames = split_events(client.post("/api/chat/stream", json=body, headers=auth(api_key)).content)
    reply = Reply.objects.get()
    _forget(reply.pk, backend)

    stored = split_events(resume(asgi_server.url, api_key, "expired", 4).content)
    whole = split_events(resume(asgi_server.url, api_key, "expired").content)

    data = [event_data(f) for f in stored]
    assert [d if d == "[DONE]" else d["type"] for d in data] == ["session", "delta", "completed", "[DONE]"]
    assert [event_id(f) for f in stored] == [5, 6, 7, 8]  # numbered on from the client's last id
    assert data[0] == event_data(frames[0])
    # One delta with the rest of the answer: after what the client had, byte for byte.
    assert deltas_of(frames[:4]) + data[1]["content"] == data[2]["content"] == TRICKY
    assert data[2] == event_data(frames[-2])
    assert [event_id(f) for f in whole] == [1, 2, 3, 4] and deltas_of(whole) == TRICKY
    assert wait_until(lambda: Reply.objects.get().resume_count == 2)


def _forget(reply_pk: int, backend: str) -> None:
    """What the window's passing does to a reply's buffer."""
    if backend == "memory":
        replay.memory._evict(reply_pk)
    else:
        from django.conf import settings

        redis.from_url(settings.REDIS_URL).delete(f"{replay.KEY_PREFIX}{reply_pk}")


def test_someone_elses_unknown_or_replyless_session_is_404(asgi_server, api_key, other_api_key, backend):
    body = {"message": "[sim:echo]mine", "session_id": "private", "resumable": True}
    with httpx.Client(base_url=asgi_server.url, timeout=30) as client:
        assert client.post("/api/chat/stream", json=body, headers=auth(api_key)).status_code == 200

    for key, session_id in ((other_api_key, "private"), (api_key, "nope")):
        response = resume(asgi_server.url, key, session_id, 0)
        assert response.status_code == 404
        assert response.json()["code"] == "not_found"
    assert resume(asgi_server.url, api_key, "private", 0).status_code == 200


def test_a_bad_last_event_id_is_invalid(asgi_server, api_key):
    response = httpx.get(
        f"{asgi_server.url}/api/sessions/x/stream", headers={**auth(api_key), "Last-Event-ID": "seven"}, timeout=10
    )
    assert response.status_code == 400 and response.json()["code"] == "invalid"


def test_resumable_must_be_a_boolean(http, api_key):
    response = http.post("/api/chat/stream", json={"message": "hi", "resumable": "yes"}, headers=auth(api_key))
    assert response.status_code == 400 and "resumable" in response.json()["errors"]


def test_session_cancel_stops_a_resumable_reply_whose_client_left(asgi_server, api_key, backend, simulator):
    body = {"message": "[sim:slow=100][sim:echo]" + TRICKY, "session_id": "stop-it", "resumable": True}
    seen = start_and_drop(asgi_server.url, api_key, body, deltas=2)
    chat_id = event_data(seen[0])["chat_id"]

    cancelled = httpx.post(f"{asgi_server.url}/api/sessions/stop-it/cancel", headers=auth(api_key), timeout=30)

    assert cancelled.status_code == 200
    assert cancelled.json() == {"session_id": "stop-it", "chat_id": chat_id, "status": "cancelled"}
    assert Reply.objects.get().status == "cancelled"
    chat = wait_until(
        lambda: (c := httpx.get(f"{simulator.base_url}/_sim/chats/{chat_id}").json())["client_disconnected_at"] and c
    )
    assert chat["status"] == "canceled"  # the upstream stream was closed (and Coze's cancel called)
    rest = split_events(resume(asgi_server.url, api_key, "stop-it", event_id(seen[-1])).content)
    assert event_data(rest[-2])["code"] == "cancelled" and rest[-1].endswith(b"data: [DONE]\n\n")
    assert deltas_of(seen) + deltas_of(rest) == Message.objects.get(kind="answer").content
    # Once it has ended, a cancel answers how it ended; unknown sessions are 404.
    again = httpx.post(f"{asgi_server.url}/api/sessions/stop-it/cancel", headers=auth(api_key), timeout=30)
    assert again.json()["status"] == "cancelled"
    missing = httpx.post(f"{asgi_server.url}/api/sessions/nope/cancel", headers=auth(api_key), timeout=30)
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"


def test_a_resume_sends_heartbeats_while_the_reply_is_silent(asgi_server, api_key, backend, settings):
    settings.CHAT_SSE_HEARTBEAT = 0.2
    body = {"message": "[sim:slow=20][sim:silence=2][sim:echo]" + TRICKY, "session_id": "quiet", "resumable": True}
    seen = start_and_drop(asgi_server.url, api_key, body, deltas=2)

    resumed = resume(asgi_server.url, api_key, "quiet", event_id(seen[-1]))

    assert resumed.content.count(b": ping\n\n") >= 3
    rest = split_events(resumed.content)
    assert deltas_of(seen) + deltas_of(rest) == TRICKY


def test_a_resume_counts_against_the_owners_rate_limit(asgi_server, api_key, settings):
    settings.REDIS_URL = ""  # this process's counters, fresh for this test's client
    with httpx.Client(base_url=asgi_server.url, timeout=30) as client:
        body = {"message": "[sim:echo]hi", "session_id": "limited", "resumable": True}
        assert client.post("/api/chat/stream", json=body, headers=auth(api_key)).status_code == 200
    settings.CHAT_RATE_LIMIT_PER_MINUTE = 2

    first, second = resume(asgi_server.url, api_key, "limited"), resume(asgi_server.url, api_key, "limited")

    assert first.status_code == 200 and second.status_code == 200
    third = resume(asgi_server.url, api_key, "limited")
    assert third.status_code == 429 and third.json()["code"] == "rate_limited" and "Retry-After" in third.headers


def test_redis_keeps_a_reply_for_the_window_and_at_most_about_max_events(asgi_server, api_key, settings, redis_url):
    clear_redis_buffers(redis_url)
    settings.CHAT_RESUME_WINDOW = 120
    settings.CHAT_RESUME_MAX_EVENTS = 10
    long_text = TRICKY * 4  # about 400 deltas
    body = {"message": "[sim:echo]" + long_text, "session_id": "trimmed", "resumable": True}
    with httpx.Client(base_url=asgi_server.url, timeout=30) as client:
        frames = split_events(client.post("/api/chat/stream", json=body, headers=auth(api_key)).content)
    key = f"{replay.KEY_PREFIX}{Reply.objects.get().pk}"
    client = redis.from_url(settings.REDIS_URL)
    wait_until(lambda: client.xrevrange(key, count=1) and client.xrevrange(key, count=1)[0][1][b"t"] == b"done")

    assert len(frames) > 300
    assert 0 < client.ttl(key) <= 120
    # MAXLEN ~: Redis trims whole nodes of its stream (100 entries each by default).
    assert client.xlen(key) <= 10 + 100
    # The last events replay as they were; from before the kept ones, the rest of the stored answer.
    assert split_events(resume(asgi_server.url, api_key, "trimmed", len(frames) - 3).content) == frames[-3:]
    early = split_events(resume(asgi_server.url, api_key, "trimmed", 5).content)
    assert [event_id(f) for f in early] == [6, 7, 8, 9]
    assert deltas_of(frames[:5]) + deltas_of(early) == long_text
