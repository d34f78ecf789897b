"""Server-Sent Events framing: pure functions, no Django.

Each event is `id:`, `event:` and exactly one `data:` line. JSON never contains a raw newline
(json.dumps escapes it), so content is carried byte for byte without re-chunking.
"""

import json

PING = b": ping\n\n"


# json.dumps() with keyword arguments builds a new JSONEncoder on every call; this is the same
# encoder, built once (a few microseconds per event saved on the streaming hot path).
encode_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def sse_event(event_id: int, event: str, data: dict) -> bytes:
    return sse_event_json(event_id, event, encode_json(data))


def sse_event_json(event_id: int, event: str, data_json: str) -> bytes:
    """An event whose data is already JSON (a replayed event: the same bytes as the first time)."""
    return f"id: {event_id}\nevent: {event}\ndata: {data_json}\n\n".encode()


def sse_done(event_id: int) -> bytes:
    return f"id: {event_id}\nevent: done\ndata: [DONE]\n\n".encode()


# httpx (and so cozepy) splits lines on these too, JSON may carry them raw: escape them.
_LINE_BREAK_ESCAPES = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}
_ascii_json = json.JSONEncoder(separators=(",", ":")).encode

COZE_DONE = b'event:done\ndata:"[DONE]"\n\n'


def coze_event(event: str, data: dict) -> bytes:
    """An event of Coze's own stream (docs/api.md §13): exactly one `event:` and one `data:` line,
    no `id:` and never a comment, which is all cozepy's parser takes."""
    line = f"event:{event}\ndata:{encode_json(data).translate(_LINE_BREAK_ESCAPES)}\n\n"
    try:
        return line.encode()
    except UnicodeEncodeError:  # a lone surrogate: \u escapes carry it exactly
        return f"event:{event}\ndata:{_ascii_json(data)}\n\n".encode()


def sse_data(data: dict | str) -> bytes:
    """A bare `data:` event, as the earlier FastAPI services sent them (docs/api.md §8)."""
    payload = data if isinstance(data, str) else encode_json(data)
    return f"data: {payload}\n\n".encode()


def parse_sse(text: str) -> list[dict]:
    """Split an SSE body into events: `{"id", "event", "data"}` plus `{"comment"}` for `:` lines.

    Used by tests and the terminal client; tolerant of `\\r\\n` line ends.
    """
    events: list[dict] = []
    current: dict = {}
    for line in text.replace("\r\n", "\n").split("\n"):
        if line == "":
            if current:
                events.append(current)
                current = {}
            continue
        if line.startswith(":"):
            events.append({"comment": line[1:].strip()})
            continue
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        current[field] = value if field not in current else current[field] + "\n" + value
    if current:
        events.append(current)
    return events
