"""The scripted bot: its deterministic answers, the ``[sim:…]`` directives and the faults they cause."""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from .wire import CozeError, Response

REASONING_TEXT = "Let me think about that."
FOLLOW_UPS = ("Tell me more", "What else can you do?")
VERBOSE_CONTENT = '{"msg_type":"generate_answer_finish","data":"","from_module":null,"from_unit":null}'

# The local plugin a bare ``[sim:tool]`` calls.
DEFAULT_TOOL = "get_weather"

_DIRECTIVE_RE = re.compile(r"\[sim:([a-z_0-9]+)(?:=([^\]]*))?\]")
_ECHO = "[sim:echo]"
_TOOL_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


@dataclass
class Directives:
    """The ``[sim:…]`` directives of one user text."""

    flags: set[str]
    echo: str | None = None
    slow_ms: float | None = None
    first_delay_ms: float | None = None
    silence_s: float | None = None
    tools: list[str] | None = None  # the local plugins the chat calls before it answers

    @classmethod
    def parse(cls, text: str) -> Directives:
        if "[sim:" not in text:
            return cls(flags=set())
        flags: set[str] = set()
        values: dict[str, float] = {}
        tools: list[str] | None = None
        for name, value in _DIRECTIVE_RE.findall(text):
            flags.add(name)
            if name == "tool" and tools is None:
                tools = [tool.strip() for tool in value.split(",")] if value else [DEFAULT_TOOL]
                if not all(_TOOL_NAME_RE.fullmatch(tool) for tool in tools):
                    raise CozeError(4000, f"invalid simulator directive [sim:tool={value}]")
            if name in ("slow", "first_delay", "silence") and value:
                try:
                    number = float(value)
                except ValueError:
                    number = -1.0
                if not math.isfinite(number) or number < 0:
                    raise CozeError(4000, f"invalid simulator directive [sim:{name}={value}]")
                values.setdefault(name, number)
        echo = text.split(_ECHO, 1)[1] if _ECHO in text else None
        return cls(
            flags=flags,
            echo=echo,
            slow_ms=values.get("slow"),
            first_delay_ms=values.get("first_delay"),
            silence_s=values.get("silence"),
            tools=tools,
        )


def without_directives(text: str) -> str:
    """``text`` with every ``[sim:…]`` directive removed, stripped: what a tool call receives."""
    return _DIRECTIVE_RE.sub("", text).strip()


def tool_results(calls: list[dict[str, Any]], outputs: dict[str, str]) -> str:
    """`` [tool get_weather: sunny]`` for each call, in the order the bot made them."""
    return "".join(f" [tool {call['function']['name']}: {outputs[call['id']]}]" for call in calls)


def split_deltas(text: str) -> list[str]:
    """Cut ``text`` into pieces of 1, 2, 3, 4, 1, 2, … code points ("" gives no pieces)."""
    pieces = []
    start = 0
    for size in itertools.cycle((1, 2, 3, 4)):
        if start >= len(text):
            return pieces
        pieces.append(text[start : start + size])
        start += size
    return pieces  # pragma: no cover - the cycle never ends on its own


def message_text(message: Any) -> str:
    """The text of one Coze message (``object_string``: its ``text`` items joined)."""
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if not isinstance(content, str):
        return ""
    if message.get("content_type") != "object_string":
        return content
    try:
        items = json.loads(content)
    except ValueError:
        return content
    if not isinstance(items, list):
        return content
    return "".join(item["text"] for item in items if isinstance(item, dict) and isinstance(item.get("text"), str))


def user_text(messages: list[Any]) -> str:
    """The text of the last user message ("" when there is none)."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return message_text(message)
    return ""


def message_attachments(message: Any) -> list[dict[str, Any]]:
    """The ``image``/``file``/``audio`` items of an ``object_string`` message ([] otherwise)."""
    if not isinstance(message, dict) or message.get("content_type") != "object_string":
        return []
    try:
        items = json.loads(message.get("content") or "")
    except (TypeError, ValueError):
        return []
    if not isinstance(items, list):
        return []
    return [item for item in items if isinstance(item, dict) and item.get("type") in ("image", "file", "audio")]


def last_user_message(messages: list[Any]) -> Any:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return message
    return None


def answer_text(text: str, directives: Directives, earlier_turns: list[str]) -> str:
    """The deterministic answer to ``text`` given the section's earlier user turns."""
    if directives.echo is not None:
        return directives.echo
    answer = f"You said: {text}"
    if earlier_turns:
        answer += f" (turn {len(earlier_turns) + 1}; before that you said: {earlier_turns[-1]})"
    return answer


# Faults answered before any chat exists, in order of precedence: a Coze error as
# (code, msg, HTTP status, extra headers), or a whole non-JSON response.
PRE_CHAT_FAULTS: dict[str, tuple[int, str, int, list] | Response] = {
    "auth_failed": (4100, "authentication is invalid", 401, []),
    "no_permission": (4101, "the token has no permission for this resource", 403, []),
    "rate_limited": (
        4020,
        "the request rate exceeded the limit",
        429,
        [(b"retry-after", b"2")],
    ),
    "http429": Response(429, b"Too Many Requests", b"text/plain", [(b"retry-after", b"3")]),
    "daily_limit": (4008, "the bot's daily usage limit is exceeded", 200, []),
    "system_busy": (4009, "the system is busy, please try again later", 200, []),
    "busy": (4016, "a chat is already running in this conversation", 200, []),
    "bad_param": (4000, "invalid parameter", 200, []),
    "server_error": Response(500, b"<html>oops</html>", b"text/html"),
    "garbage": Response(200, b"nonsense line\n\n", b"text/event-stream"),
}
# Faults that strike after half of the deltas, in order of precedence.
MID_STREAM_FAULTS = ("chat_failed", "error_event", "drop", "silence")
