"""Load-generating clients, kept cheap so that the client side is not the bottleneck.

`HttpClient` speaks just enough HTTP/1.1 over a raw `asyncio.Protocol` (keep-alive, chunked and
Content-Length bodies) and splits Server-Sent Events without a framework: a few microseconds per
event. The same machinery reads the gateway's SSE, the earlier design's SSE and (for reference)
the simulator's raw Coze SSE. `direct_stream` is the reference everything is compared against:
cozepy's `AsyncCoze` talking to the simulator, as a client calling Coze directly would.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
from cozepy import AsyncCoze, AsyncTokenAuth, ChatEventType, Message
from cozepy.request import AsyncHTTPClient

from chat.coze import ShardedTransport

now = time.perf_counter
# Gateway streams sent and not yet ended, i.e. held by the server (read by the sampler).
OPEN = [0]


@dataclass(slots=True)
class Result:
    """One chat as a client saw it. Times are `perf_counter()` seconds."""

    started: float
    first_token: float | None = None
    finished: float | None = None
    ok: bool = False
    error: str = ""
    parts: list[str] = field(default_factory=list)
    completed_content: str | None = None

    @property
    def ttft_ms(self) -> float | None:
        return None if self.first_token is None else (self.first_token - self.started) * 1000

    @property
    def duration_ms(self) -> float | None:
        return None if self.finished is None else (self.finished - self.started) * 1000

    def check(self, expected: str, *, need_completed: bool) -> None:
        """Mark the result wrong unless the deltas (and the completed event) carry `expected`."""
        if not self.ok:
            return
        text = "".join(self.parts)
        if text != expected:
            self.ok, self.error = False, f"wrong text: {text[:60]!r}"
        elif need_completed and self.completed_content != expected:
            self.ok, self.error = False, "completed event missing or wrong"


# --- raw HTTP/1.1 --------------------------------------------------------------------------------


class _Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection running one request at a time."""

    def __init__(self, client: HttpClient):
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.sink: Callable[[bytes, float], None] | None = None
        self.done: asyncio.Future | None = None
        self._reset()

    def _reset(self) -> None:
        self.buf = bytearray()
        self.in_head = True
        self.status = 0
        self.chunked = False
        self.remaining: int | None = None
        self.chunk_left = -1  # -1: expecting a size line; -2: expecting the CRLF after data
        self.keep_alive = True

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.lost = True
        if self.done is not None and not self.done.done():
            if self.in_head or self.chunked or self.remaining:
                self.done.set_exception(ConnectionError(f"connection lost: {exc}"))
            else:
                self.done.set_result(self.status)

    def start(self, request: bytes, sink: Callable[[bytes, float], None]) -> asyncio.Future:
        self._reset()
        self.sink = sink
        self.done = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self.done

    def data_received(self, data: bytes) -> None:
        at = now()
        buf = self.buf
        buf += data
        if self.in_head:
            while buf.startswith(b"\r\n"):  # the CRLF that ends a previous chunked body
                del buf[:2]
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            del buf[: end + 4]
            self.in_head = False
            self.status = int(head[9:12])
            self.chunked = b"transfer-encoding: chunked" in head
            self.keep_alive = b"connection: close" not in head
            marker = head.find(b"content-length:")
            if marker >= 0:
                self.remaining = int(head[marker + 15 :].split(b"\r\n", 1)[0])
        if self.chunked:
            self._chunks(at)
        elif self.remaining is not None:
            piece = bytes(buf[: self.remaining])
            del buf[: self.remaining]
            self.remaining -= len(piece)
            if piece:
                self.sink(piece, at)
            if self.remaining == 0:
                self._finish()
        elif buf:
            self.sink(bytes(buf), at)
            buf.clear()

    def _chunks(self, at: float) -> None:
        buf = self.buf
        while buf:
            if self.chunk_left == -1:
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                size = int(bytes(buf[:end]).split(b";", 1)[0], 16)
                del buf[: end + 2]
                if size == 0:
                    self._finish()  # trailers are never sent to us; ignore the final CRLF
                    return
                self.chunk_left = size
            elif self.chunk_left == -2:
                if len(buf) < 2:
                    return
                del buf[:2]
                self.chunk_left = -1
            else:
                piece = bytes(buf[: self.chunk_left])
                del buf[: len(piece)]
                self.chunk_left -= len(piece)
                if self.chunk_left == 0:
                    self.chunk_left = -2
                self.sink(piece, at)

    def _finish(self) -> None:
        # Ready for the next response on this connection; anything after this body is ignored.
        self.buf = bytearray()
        self.in_head = True
        self.chunked = False
        self.remaining = None
        done = self.done
        if done is not None and not done.done():
            done.set_result(self.status)
        if self.keep_alive and not self.lost:
            self.client._idle.append(self)
        else:
            self.transport.close()


class HttpClient:
    """A tiny keep-alive HTTP/1.1 client for one host, built for thousands of concurrent streams."""

    def __init__(self, host: str, port: int, *, keep_alive: bool = True):
        self.host, self.port = host, port
        self.keep_alive = keep_alive
        self._idle: list[_Conn] = []

    async def _conn(self) -> _Conn:
        while self._idle:
            conn = self._idle.pop()
            if not conn.lost:
                return conn
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: _Conn(self), self.host, self.port)
        return conn

    def request_bytes(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        lines.append(f"Content-Length: {len(body)}")
        if not self.keep_alive:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    async def request(self, request: bytes, sink: Callable[[bytes, float], None]) -> int:
        conn = await self._conn()
        return await conn.start(request, sink)

    def close(self) -> None:
        for conn in self._idle:
            conn.transport.close()
        self._idle.clear()


class SseReader:
    """Splits an SSE body into (event, data) and feeds a Result.

    `flavour` "gateway": our events (`delta`, `completed`, `error`, `done`); "coze": Coze's raw
    events, for the raw-client reference against the simulator; "openai": the OpenAI-compatible
    path's chunks.
    """

    __slots__ = ("buf", "flavour", "result")

    def __init__(self, result: Result, flavour: str):
        self.result = result
        self.flavour = flavour
        self.buf = b""

    def __call__(self, piece: bytes, at: float) -> None:
        buf = self.buf + piece
        while True:
            end = buf.find(b"\n\n")
            if end < 0:
                break
            block, buf = buf[:end], buf[end + 2 :]
            event = data = b""
            for line in block.split(b"\n"):
                if line.startswith(b"event:"):
                    event = line[6:].strip()
                elif line.startswith(b"data:"):
                    data = line[5:]
            if event:
                self._event(event, data, at)
            elif data and self.flavour == "openai":
                self._openai_chunk(data.strip(), at)
        self.buf = buf

    def _openai_chunk(self, data: bytes, at: float) -> None:
        """OpenAI's `chat.completion.chunk` lines (no `event:` field), then `data: [DONE]`."""
        result = self.result
        if data == b"[DONE]":
            result.finished = at
            result.ok = result.ok or not result.error
            return
        chunk = json.loads(data)
        if "error" in chunk:
            result.ok, result.error = False, str(chunk["error"])[:200]
            return
        for choice in chunk.get("choices") or ():
            content = (choice.get("delta") or {}).get("content")
            if content:
                if result.first_token is None:
                    result.first_token = at
                result.parts.append(content)

    def _event(self, event: bytes, data: bytes, at: float) -> None:
        result = self.result
        if self.flavour == "gateway":
            if event == b"delta":
                if result.first_token is None:
                    result.first_token = at
                result.parts.append(json.loads(data)["content"])
            elif event == b"completed":
                result.completed_content = json.loads(data)["content"]
                result.ok = True
            elif event == b"error":
                result.ok, result.error = False, data.decode()[:200]
            elif event == b"done":
                result.finished = at
        else:
            if event == b"conversation.message.delta":
                message = json.loads(data)
                if message.get("content"):
                    if result.first_token is None:
                        result.first_token = at
                    result.parts.append(message["content"])
            elif event == b"conversation.chat.completed":
                result.ok = True
            elif event == b"done":
                result.finished = at


async def sse_stream(client: HttpClient, request: bytes, *, flavour: str = "gateway") -> Result:
    """POST and read an SSE reply into a Result (never raises)."""
    result = Result(started=now())
    OPEN[0] += 1
    try:
        status = await client.request(request, SseReader(result, flavour))
        if status != 200:
            result.ok, result.error = False, f"HTTP {status}"
        elif result.finished is None:
            result.ok, result.error = False, "stream ended without done"
    except Exception as exc:
        result.ok, result.error = False, f"{type(exc).__name__}: {exc}"
    if result.finished is None:
        result.finished = now()
    OPEN[0] -= 1
    return result


async def json_request(client: HttpClient, request: bytes) -> tuple[int, bytes, float, float]:
    """Send a request and read the whole body: (status, body, started, finished)."""
    chunks: list[bytes] = []
    started = now()
    status = await client.request(request, lambda piece, at: chunks.append(piece))
    return status, b"".join(chunks), started, now()


# --- WebSocket ------------------------------------------------------------------------------------


async def ws_chat(ws, message: str, session_id: str) -> Result:
    """One chat over an open WebSocket (websockets' asyncio client)."""
    result = Result(started=now())
    await ws.send(json.dumps({"type": "chat", "message": message, "session_id": session_id}))
    try:
        while True:
            frame = json.loads(await ws.recv())
            kind = frame.get("type")
            if kind == "delta":
                if result.first_token is None:
                    result.first_token = now()
                result.parts.append(frame["content"])
            elif kind == "completed":
                result.completed_content = frame["content"]
                result.ok = True
            elif kind == "error":
                result.ok, result.error = False, str(frame)[:200]
            elif kind == "done":
                break
    except Exception as exc:
        result.ok, result.error = False, f"{type(exc).__name__}: {exc}"
    result.finished = now()
    return result


# --- direct cozepy --------------------------------------------------------------------------------


def direct_client(base_url: str, token: str) -> tuple[AsyncCoze, AsyncHTTPClient]:
    """cozepy's async client with limits large enough for the concurrency runs (and its pool, to close)."""
    # The gateway's sharded pool: one httpcore pool of 1,000 connections spends quadratic time in
    # its bookkeeping (see chat.coze.ShardedTransport), which would make the reference slow.
    limits = httpx.Limits(max_connections=20_000, max_keepalive_connections=2_000)
    http_client = AsyncHTTPClient(
        timeout=httpx.Timeout(600.0, connect=30.0, pool=60.0), transport=ShardedTransport(limits=limits)
    )
    return AsyncCoze(auth=AsyncTokenAuth(token), base_url=base_url, http_client=http_client), http_client


async def direct_stream(coze: AsyncCoze, *, bot_id: str, message: str, user_id: str = "bench") -> Result:
    """A streaming chat straight to Coze (the simulator) with cozepy: the zero-overhead reference."""
    result = Result(started=now())
    try:
        async for event in coze.chat.stream(
            bot_id=bot_id, user_id=user_id, additional_messages=[Message.build_user_question_text(message)]
        ):
            kind = event.event
            if kind == ChatEventType.CONVERSATION_MESSAGE_DELTA:
                if event.message.content:
                    if result.first_token is None:
                        result.first_token = now()
                    result.parts.append(event.message.content)
            elif kind == ChatEventType.CONVERSATION_CHAT_COMPLETED:
                result.ok = True
            elif kind == ChatEventType.CONVERSATION_CHAT_FAILED:
                result.ok, result.error = False, "chat failed"
    except Exception as exc:
        result.ok, result.error = False, f"{type(exc).__name__}: {exc}"
    result.finished = now()
    return result
