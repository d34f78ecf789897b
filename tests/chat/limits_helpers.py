"""One chat turn over each transport, reduced to what limits tests compare: the HTTP status (or
the status of the WebSocket error's code), the error code, Retry-After and the reply's tokens."""

import json
from dataclasses import dataclass

import httpx
import redis
from django.conf import settings
from websockets.sync.client import connect

from chat.access import client_limits, counters
from chat.domain.errors import ERROR_CODES
from chat.domain.inputs import Owner
from chat.domain.sse import parse_sse

TRANSPORTS = ("sync", "sse", "websocket", "compat", "coze_chat")

__all__ = ["TRANSPORTS", "Answer", "Owner", "client_owner", "reset_counters", "send_turn"]


def client_owner(client) -> Owner:
    """The Owner an API key of `client` authenticates as."""
    return Owner(key=client.owner_key, api_client_id=client.pk)


@dataclass
class Answer:
    status: int
    code: str | None = None
    retry_after: int | None = None
    tokens: int = 0


def reset_counters() -> None:
    counters.local_counters.windows.clear()
    counters.local_counters.streams.clear()
    client_limits._client_rows.clear()
    if settings.REDIS_URL:
        client = redis.from_url(settings.REDIS_URL)
        # Only the limiter's keys: the channel layer of running workers shares the prefix.
        keys = [*client.scan_iter("cozeproject:rl:*"), *client.scan_iter("cozeproject:streams:*")]
        if keys:
            client.delete(*keys)


def _http_error(response: httpx.Response) -> Answer:
    retry_after = response.headers.get("retry-after")
    return Answer(response.status_code, response.json()["code"], int(retry_after) if retry_after else None)


def _sse_data(response: httpx.Response) -> list[dict]:
    events = [event["data"] for event in parse_sse(response.text) if "data" in event]
    return [json.loads(data) for data in events if data != "[DONE]"]


def send_turn(
    base_url: str, key: str, transport: str, *, message: str = "hi", session_id: str | None = None, bot_id=None
) -> Answer:
    """One turn of `message` over `transport` against the server at `base_url`."""
    headers = {"Authorization": f"Bearer {key}"}
    body = {"message": message}
    if session_id:
        body["session_id"] = session_id
    if bot_id:
        body["bot_id"] = bot_id
    with httpx.Client(base_url=base_url, timeout=30) as http:
        if transport == "sync":
            response = http.post("/api/chat", json=body, headers=headers)
            if response.status_code != 200:
                return _http_error(response)
            return Answer(200, tokens=response.json()["usage"]["total_tokens"])
        if transport == "compat":  # the earlier /chat: no bot_id field, the default bot
            response = http.post("/chat", json=body, headers=headers)
            if response.status_code != 200:
                return _http_error(response)
            return Answer(200, tokens=response.json()["usage"]["total_tokens"])
        if transport in ("sse", "coze_chat"):
            if transport == "coze_chat":
                path = "/api/coze-chat"
                body = {
                    "user_id": "u1",
                    "additional_messages": [{"role": "user", "content": message, "content_type": "text"}],
                    **{name: body[name] for name in ("bot_id", "session_id") if name in body},
                }
            else:
                path = "/api/chat/stream"
            response = http.post(path, json=body, headers=headers)
            if not response.headers.get("content-type", "").startswith("text/event-stream"):
                return _http_error(response)
            for data in _sse_data(response):
                if data.get("type") == "completed":
                    return Answer(200, tokens=data.get("token_count") or data["usage"]["total_tokens"])
                if data.get("type") == "error":
                    return Answer(ERROR_CODES[data["code"]][0], data["code"], data.get("retry_after"))
            raise AssertionError(f"the stream ended without completing: {response.text}")
    if transport == "websocket":
        ws_url = base_url.replace("http://", "ws://") + "/ws/chat/"
        with connect(ws_url, additional_headers={**headers, "Origin": base_url}, open_timeout=10) as socket:
            socket.send(json.dumps({"type": "chat", **body}))
            answer = None
            while True:
                frame = json.loads(socket.recv(timeout=30))
                if frame["type"] == "completed":
                    answer = Answer(200, tokens=frame["usage"]["total_tokens"])
                elif frame["type"] == "error":
                    answer = Answer(ERROR_CODES[frame["code"]][0], frame["code"], frame.get("retry_after"))
                elif frame["type"] == "done":
                    assert answer is not None
                    return answer
    raise ValueError(transport)
