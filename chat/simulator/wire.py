"""The simulator's HTTP side: ASGI types, requests and responses, Coze's JSON envelope and SSE frames."""

from __future__ import annotations

import email.parser
import email.policy
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

AsgiMessage = dict[str, Any]
Receive = Callable[[], Awaitable[AsgiMessage]]
Send = Callable[[AsgiMessage], Awaitable[None]]
Handler = Callable[["Request"], Awaitable["Response | None"]]
Route = tuple[frozenset[str], Handler, bool]  # methods, handler, needs authentication

MAX_BODY_BYTES = 16 * 1024 * 1024
UPLOAD_PATH = "/v1/files/upload"

# httpx's line splitter (and so cozepy) breaks lines on these too; JSON may escape them.
_LINE_BREAK_ESCAPES = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}
_SEPARATORS = (",", ":")


class CozeError(Exception):
    """A Coze business error, answered as ``{"code": code, "msg": msg}``."""

    def __init__(self, code: int, msg: str, status: int = 200, headers: list | None = None):
        super().__init__(f"{code}: {msg}")
        self.code = code
        self.msg = msg
        self.status = status
        self.headers = headers or []


class SimulatedDrop(Exception):
    """Raised mid-stream for ``[sim:drop]`` so the server aborts the connection."""


@dataclass
class Response:
    """A complete (non-streaming) HTTP response."""

    status: int
    body: bytes
    content_type: bytes = b"application/json"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    logid: str
    receive: Receive
    send: Send

    def json(self) -> dict[str, Any]:
        """The body as a JSON object ({} when empty); code 4000 when it is not one."""
        if not self.body.strip():
            return {}
        try:
            data = json.loads(self.body)
        except ValueError:
            raise CozeError(4000, "invalid JSON body") from None
        if not isinstance(data, dict):
            raise CozeError(4000, "the body must be a JSON object")
        return data

    def fields(self) -> dict[str, Any]:
        """The body as a JSON object, or the fields of a form (URL-encoded or multipart; their
        values are strings); code 4000 when it is neither."""
        content_type = self.headers.get("content-type", "").lower()
        if content_type.startswith("application/x-www-form-urlencoded"):
            return dict(parse_qsl(self.body.decode("utf-8", "replace"), keep_blank_values=True))
        if content_type.startswith("multipart/form-data"):
            parser = email.parser.BytesParser(policy=email.policy.HTTP)
            header = b"Content-Type: " + self.headers["content-type"].encode("latin-1") + b"\r\n\r\n"
            message = parser.parsebytes(header + self.body)
            if not message.is_multipart():
                raise CozeError(4000, "invalid multipart body")
            return {
                part.get_param("name", header="content-disposition"): part.get_content()
                for part in message.iter_parts()
                if part.get_param("name", header="content-disposition") and part.get_filename() is None
            }
        return self.json()


def json_bytes(obj: Any) -> bytes:
    """One line of UTF-8 JSON that survives cozepy's line splitting byte for byte."""
    text = json.dumps(obj, ensure_ascii=False, separators=_SEPARATORS)
    text = text.translate(_LINE_BREAK_ESCAPES)
    try:
        return text.encode()
    except UnicodeEncodeError:  # lone surrogates: \u escapes round-trip them exactly
        return json.dumps(obj, separators=_SEPARATORS).encode()


def sse_frame(event: str, data: Any) -> bytes:
    return b"event:" + event.encode() + b"\ndata:" + json_bytes(data) + b"\n\n"


DONE_FRAME = b'event:done\ndata:"[DONE]"\n\n'
# Coze Studio ends a stream with this event, whose data is empty (its SSE writer always writes
# the "data:" field).
STUDIO_DONE_FRAME = b"event:conversation.stream.done\ndata:\n\n"
ERROR_EVENT_FRAME = sse_frame("error", {"code": 4013, "msg": "model error"})


def new_logid() -> str:
    return time.strftime("%Y%m%d%H%M%S") + os.urandom(10).hex().upper()


def json_response(status: int, payload: Any, headers: list | None = None) -> Response:
    return Response(status, json_bytes(payload), headers=headers or [])


def ok(data: Any) -> Response:
    return json_response(200, {"code": 0, "msg": "", "data": data})
