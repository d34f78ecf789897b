"""Resumable replies (docs/api.md §9): a reply survives its client going away, and a client that
comes back — by SSE with Last-Event-ID or by a WebSocket `resume` frame — gets exactly the bytes
it missed, then the rest live. Each test runs with the in-memory buffer and with Redis Streams."""

import json
import threading

import httpx
import pytest
import redis

from chat.domain import event_ids
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


def numbers(frames: list[bytes]) -> list[int]:
    """The frames' places in their reply (event 1 is `session`), checking they all name one reply."""
    refs = [event_ids.parse(event_id(f)) for f in frames]
    assert len({ref.reply_pk for ref in refs}) == 1, refs
    return [ref.number for ref in refs]


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
    assert numbers(seen + rest) == list(range(1, len(seen) + len(rest) + 1))
    assert event_ids.parse(event_id(seen[0])).reply_pk == Reply.objects.get().pk
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

    for had in (0, 1, 5, len(frames) - 1, len(frames)):
        after = event_id(frames[had - 1]) if had else 0
        assert split_events(resume(asgi_server.url, api_key, "later", after).content) == frames[had:]


def test_resume_after_the_window_gets_the_stored_reply(asgi_server, api_key, backend):
    body = {"message": "[sim:echo]" + TRICKY, "session_id": "expired", "resumable": True}
    with httpx.Client(base_url=asgi_server.url, timeout=30) as client:
        frames = split_events(client.post("/api/chat/stream", json=body, headers=auth(api_key)).content)
    reply = Reply.objects.get()
    _forget(reply.pk, backend)
    last_delta = [f for f in frames if b"\nevent: delta\n" in f][-1]

    stored = split_events(resume(asgi_server.url, api_key, "expired", event_id(frames[3])).content)
    whole = split_events(resume(asgi_server.url, api_key, "expired").content)

    data = [event_data(f) for f in stored]
    assert [d if d == "[DONE]" else d["type"] for d in data] == ["session", "delta", "completed", "[DONE]"]
    # Each carries the id of what it stands for: the session event a place just above the client's
    # (odd: a replay's), the one delta the last original delta's, completed and done their own.
    assert [event_id(f) for f in stored] == [
        event_id(frames[3]) + 1,
        event_id(last_delta),
        event_id(frames[-2]),
        event_id(frames[-1]),
    ]
    assert data[0] == event_data(frames[0])
    # One delta with the rest of the answer: after what the client had, byte for byte.
    assert deltas_of(frames[:4]) + data[1]["content"] == data[2]["content"] == TRICKY
    assert data[2] == event_data(frames[-2])
    assert [event_id(f) for f in whole] == [event_id(frames[0]), *map(event_id, stored[1:])]
    assert deltas_of(whole) == TRICKY
    assert wait_until(lambda: Reply.objects.get().resume_count == 2)


def test_after_the_window_every_id_a_client_was_given_resumes_exactly_after_it(asgi_server, api_key, backend):
    body = {"message": "[sim:echo]" + TRICKY, "session_id": "exact", "resumable": True}
    with httpx.Client(base_url=asgi_server.url, timeout=30) as client:
        frames = split_events(client.post("/api/chat/stream", json=body, headers=auth(api_key)).content)
    _forget(Reply.objects.get().pk, backend)

    def resumed_after(frame_id: int) -> list[bytes]:
        return split_events(resume(asgi_server.url, api_key, "exact", frame_id).content)

    def types(frames: list[bytes]) -> list[str]:
        return ["done" if f.endswith(b"[DONE]\n\n") else event_data(f)["type"] for f in frames]

    # Every id of the live stream: the rest of the answer after exactly what that id delivered.
    for had, frame in enumerate(frames, 1):
        rest = resumed_after(event_id(frame))
        assert deltas_of(frames[:had]) + deltas_of(rest) == TRICKY, had
        assert all(event_id(a) < event_id(b) for a, b in zip([frame, *rest], rest, strict=False)), had
        if had == len(frames) - 1:  # the client had `completed`: only `done` is missing
            assert types(rest) == ["done"]
        if had == len(frames):
            assert rest == []
    # Every id a replay of the stored answer gave, again and again: no gap, no duplicate.
    replayed = resumed_after(event_id(frames[2]))
    session, delta, completed, done = replayed
    assert types(resumed_after(event_id(session))) == ["delta", "completed", "done"]
    assert deltas_of(resumed_after(event_id(session))) == deltas_of(replayed)
    assert types(resumed_after(event_id(delta))) == ["session", "completed", "done"]
    assert deltas_of(frames[:3]) + deltas_of([delta]) == TRICKY
    assert resumed_after(event_id(completed)) == [done]
    assert resumed_after(event_id(done)) == []


def test_an_id_names_its_reply_across_replies_and_transports_or_is_gone(asgi_server, api_key, backend):
    with httpx.Client(base_url=asgi_server.url, timeout=30) as client:

        def stream(text: str) -> list[bytes]:
            body = {"message": "[sim:echo]" + text, "session_id": "many", "resumable": True}
            return split_events(client.post("/api/chat/stream", json=body, headers=auth(api_key)).content)

        first = stream("first answer")
        # A transport that shows no ids still has its reply, and so its ids, between the others.
        assert client.post("/api/chat", json={"message": "sync", "session_id": "many"}, headers=auth(api_key))
        second = stream("second answer")
    assert event_id(first[-1]) < event_id(second[0])

    # An id of the earlier reply continues that reply, not the later one: kept, then stored.
    again = split_events(resume(asgi_server.url, api_key, "many", event_id(first[1])).content)
    assert again == first[2:]
    earlier = Reply.objects.order_by("pk").first()
    _forget(earlier.pk, backend)
    stored = split_events(resume(asgi_server.url, api_key, "many", event_id(first[1])).content)
    assert deltas_of(first[:2]) + deltas_of(stored) == "first answer"
    assert event_data(stored[-2])["content"] == "first answer"

    # Once that reply is no longer kept at all, its ids are gone: never the tail of a later reply.
    earlier.delete()
    gone = resume(asgi_server.url, api_key, "many", event_id(first[1]))
    assert gone.status_code == 410 and gone.json()["code"] == "gone"
    assert httpx.post(
        f"{asgi_server.url}/api/chat", json={"message": "hi", "session_id": "elsewhere"}, headers=auth(api_key)
    )
    elsewhere = Reply.objects.get(session__session_id="elsewhere").pk
    for foreign in (event_ids.event_id(elsewhere, 2), 5):  # another session's reply, or no reply's
        refused = resume(asgi_server.url, api_key, "many", foreign)
        assert refused.status_code == 410 and refused.json()["code"] == "gone"
    assert split_events(resume(asgi_server.url, api_key, "many", event_id(second[1])).content) == second[2:]


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
    assert split_events(resume(asgi_server.url, api_key, "trimmed", event_id(frames[-4])).content) == frames[-3:]
    early = split_events(resume(asgi_server.url, api_key, "trimmed", event_id(frames[4])).content)
    last_delta = [f for f in frames if b"\nevent: delta\n" in f][-1]
    assert [event_id(f) for f in early] == [event_id(frames[4]) + 1, event_id(last_delta), *map(event_id, frames[-2:])]
    assert deltas_of(frames[:5]) + deltas_of(early) == long_text
