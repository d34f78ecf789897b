"""The SSE framing helpers, on their own."""

from chat.domain.sse import PING, parse_sse, sse_data, sse_done, sse_event


def test_event_has_id_event_and_a_single_data_line():
    frame = sse_event(3, "delta", {"type": "delta", "content": "a\nb\r\nc"})

    assert frame == b'id: 3\nevent: delta\ndata: {"type":"delta","content":"a\\nb\\r\\nc"}\n\n'
    assert frame.count(b"\ndata: ") == 1


def test_non_ascii_is_sent_as_utf8_not_escaped():
    frame = sse_event(1, "delta", {"type": "delta", "content": "你好👩‍👩‍👧"})

    assert "你好👩‍👩‍👧".encode() in frame


def test_done_ping_and_bare_data_frames():
    assert sse_done(9) == b"id: 9\nevent: done\ndata: [DONE]\n\n"
    assert PING == b": ping\n\n"
    assert sse_data({"type": "chunk"}) == b'data: {"type":"chunk"}\n\n'
    assert sse_data("[DONE]") == b"data: [DONE]\n\n"


def test_parse_round_trips_frames_and_comments():
    text = (sse_event(1, "session", {"a": 1}) + PING + sse_done(2)).decode()

    assert parse_sse(text) == [
        {"id": "1", "event": "session", "data": '{"a":1}'},
        {"comment": "ping"},
        {"id": "2", "event": "done", "data": "[DONE]"},
    ]
