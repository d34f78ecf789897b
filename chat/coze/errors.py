"""Coze's failures as our `ChatError`s: business codes, HTTP statuses, transport errors, the
stream's `error` event. Details never carry the token."""

import json
import logging

import httpx
from cozepy import CozeAPIError, CozeInvalidEventError
from django.conf import settings
from pydantic import ValidationError

from chat.coze.client import last_header
from chat.domain.errors import ChatError

logger = logging.getLogger(__name__)

RATE_LIMIT_CODES = {4008, 4009, 4020}
AUTH_FAILED_CODES = {4100, 4101}
BUSY_CODE = 4016
# Coze codes that mean the request itself can never succeed as sent.
PERMANENT_CODES = {4000, 4001, 4002, 4006, 4010, 4011, 4015, 4102, 4104}
DEFAULT_RETRY_AFTER = {4008: 3600, 4009: 2, 4020: 2, 429: 2}


def redact(text: str) -> str:
    token = settings.COZE_API_TOKEN
    if token:
        text = text.replace(token, "[redacted]")
    return text


def _retry_after(code: int) -> int:
    header = last_header("retry-after")
    if header.isdigit():
        return max(1, int(header))
    return DEFAULT_RETRY_AFTER.get(code, 2)


def error_from_coze_code(code: int, msg: str, *, logid: str = "", chat_failed: bool = False) -> ChatError:
    """Map a Coze business code (or an HTTP status cozepy put in its place) to our ChatError.

    `chat_failed`: Coze failed the chat (`conversation.chat.failed`) rather than refusing the
    request; the error keeps Coze's code and message either way (Coze's API relays them).
    """
    public_msg = redact(msg)[:200]
    kept = {"upstream_code": code, "upstream_msg": public_msg, "chat_failed": chat_failed, "logid": logid}
    if code in AUTH_FAILED_CODES or code in (401, 403):
        return ChatError("upstream_auth_failed", **kept)
    if code in RATE_LIMIT_CODES or code == 429:
        return ChatError(
            "upstream_rate_limited",
            f"Coze asked to slow down (code {code}); retry later.",
            retry_after=_retry_after(code),
            **kept,
        )
    if code == BUSY_CODE:
        return ChatError("session_busy", "Coze is still answering another message in this conversation.", **kept)
    if 100 <= code < 600:
        # An HTTP status: cozepy got a body that was not Coze's JSON (a proxy page, a crash).
        return ChatError(
            "upstream_error",
            f"Coze answered HTTP {code} with an unexpected body.",
            retryable=code >= 500,
            upstream_code=code,
            chat_failed=chat_failed,
            logid=logid,
        )
    detail = f"Coze error {code}: {public_msg}" if public_msg else f"Coze error {code}."
    return ChatError("upstream_error", detail, retryable=code not in PERMANENT_CODES, **kept)


def map_exception(exc: Exception, *, logid: str = "", mid_stream: bool) -> ChatError:
    """Map whatever cozepy or httpx raised to a ChatError."""
    if isinstance(exc, ChatError):
        return exc
    if isinstance(exc, CozeAPIError):
        return error_from_coze_code(exc.code or 0, exc.msg or "", logid=exc.logid or logid)
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
        return ChatError("upstream_unavailable", "Coze could not be reached.", logid=logid)
    if isinstance(exc, httpx.ReadTimeout):
        return ChatError(
            "upstream_timeout",
            f"Coze sent nothing for {settings.COZE_STREAM_IDLE_TIMEOUT:g} seconds.",
            logid=logid,
        )
    if isinstance(exc, httpx.TimeoutException):
        return ChatError("upstream_timeout", logid=logid)
    if isinstance(exc, httpx.TransportError):
        return ChatError(
            "upstream_error" if mid_stream else "upstream_unavailable",
            "The connection to Coze broke off.",
            retryable=True,
            logid=logid,
        )
    if isinstance(exc, (CozeInvalidEventError, ValidationError, json.JSONDecodeError)):
        return ChatError("upstream_error", "Coze sent a malformed event.", retryable=True, logid=logid)
    text = str(exc)
    if text.startswith("error event:"):
        # cozepy raises a bare Exception for the stream's `error` event; its payload is {code, msg}.
        try:
            payload = json.loads(text.removeprefix("error event:").strip())
            return error_from_coze_code(int(payload.get("code", 0)), str(payload.get("msg", "")), logid=logid)
        except (ValueError, TypeError, AttributeError):
            return ChatError("upstream_error", "Coze reported an error in the stream.", logid=logid)
    logger.error("Unexpected error talking to Coze: %s", redact(repr(exc)))
    return ChatError("upstream_error", logid=logid)
