"""`manage.py chat`: the terminal client, driven with a scripted stdin, against the live server
(over SSE with an API key) and --direct (the chat service in this process)."""

import io

import pytest
from django.core.management import CommandError, call_command

from sessions_admin.models import ChatSession, Reply
from tests.conftest import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


class Terminal(io.StringIO):
    """A stdout that keeps every write; optionally raises KeyboardInterrupt once, as Ctrl-C
    would, at the `interrupt_at`-th write after the bot starts answering."""

    def __init__(self, interrupt_at: int | None = None):
        super().__init__()
        self.writes: list[str] = []
        self.interrupt_at = interrupt_at
        self.since_bot: int | None = None

    def write(self, text: str) -> int:
        self.writes.append(text)
        if text == "bot> ":
            self.since_bot = 0
        elif self.since_bot is not None:
            self.since_bot += 1
            if self.interrupt_at is not None and self.since_bot == self.interrupt_at:
                self.interrupt_at = None
                super().write(text)
                raise KeyboardInterrupt
        return super().write(text)

    def answer_writes(self, number: int = 0) -> list[str]:
        """The writes that made up the `number`-th answer (between `bot> ` and the next newline)."""
        starts = [i for i, text in enumerate(self.writes) if text == "bot> "]
        pieces = []
        for text in self.writes[starts[number] + 1 :]:
            if "\n" in text:
                break
            pieces.append(text)
        return pieces


def chat(*args, lines: list[str], stdout: Terminal | None = None) -> Terminal:
    stdout = stdout or Terminal()
    call_command("chat", *args, stdin=io.StringIO("".join(f"{line}\n" for line in lines)), stdout=stdout)
    return stdout


def server_args(asgi_server, api_key, session_id="cli-test") -> list[str]:
    return ["--url", asgi_server.url, "--api-key", api_key, "--session-id", session_id]


def test_a_reply_streams_into_the_terminal_token_by_token(asgi_server, api_key):
    out = chat(*server_args(asgi_server, api_key), lines=["[sim:slow=20] Hello from the terminal", "/quit"])

    pieces = out.answer_writes()
    assert "".join(pieces) == "You said: [sim:slow=20] Hello from the terminal"
    assert len(pieces) >= 5, "the answer was written as it arrived, not at the end"
    text = out.getvalue()
    assert "Chatting with " + asgi_server.url in text
    assert "tokens" in text
    assert "suggestions: /1 Tell me more" in text
    reply = Reply.objects.get()
    assert (reply.status, reply.transport, reply.session.session_id) == ("completed", "sse", "cli-test")


def test_a_numbered_suggestion_is_sent_by_its_shortcut(asgi_server, api_key):
    out = chat(*server_args(asgi_server, api_key), lines=["First", "/1", "/9", "/quit"])

    assert "".join(out.answer_writes(1)).startswith("You said: Tell me more")
    assert "No such suggestion." in out.getvalue()
    assert Reply.objects.filter(status="completed").count() == 2


def test_clear_forgets_the_context_and_new_starts_another_session(asgi_server, api_key):
    out = chat(*server_args(asgi_server, api_key), lines=["One", "/clear", "Two", "/new", "Three", "/quit"])

    text = out.getvalue()
    assert "Context cleared" in text
    # After /clear the bot starts over: no "turn 2" in the second answer.
    assert "".join(out.answer_writes(1)) == "You said: Two"
    assert "New session cli-" in text
    sessions = ChatSession.objects.order_by("pk")
    assert sessions[0].session_id == "cli-test"
    assert sessions.count() == 2
    assert sessions[0].conversations.count() == 2


def test_errors_are_shown_and_the_conversation_goes_on(asgi_server, api_key):
    out = chat(
        *server_args(asgi_server, api_key),
        lines=[
            "[sim:error_event] break halfway",
            "[sim:auth_failed] refused",
            "[sim:rate_limited] slow",
            "fine",
            "/quit",
        ],
    )

    text = out.getvalue()
    assert "error [upstream_error]:" in text
    assert "error [upstream_auth_failed]:" in text
    assert "error [upstream_rate_limited]:" in text and "Retry in 2 s." in text
    assert "".join(out.answer_writes(3)).startswith("You said: fine")


def test_ctrl_c_stops_the_reply_and_keeps_the_conversation_open(asgi_server, api_key, simulator):
    out = chat(
        *server_args(asgi_server, api_key),
        lines=["[sim:slow=60] a long reply to interrupt with Ctrl-C", "after", "/quit"],
        stdout=Terminal(interrupt_at=6),
    )

    text = out.getvalue()
    assert "[stopped]" in text
    assert "".join(out.answer_writes(1)).startswith("You said: after")
    first = wait_until(lambda: Reply.objects.order_by("pk").exclude(status="in_progress").first())
    assert first.status == "cancelled"
    assert Reply.objects.order_by("pk").last().status == "completed"


def test_an_api_key_is_required(asgi_server, monkeypatch):
    monkeypatch.delenv("CHAT_API_KEY", raising=False)
    with pytest.raises(CommandError, match="CHAT_API_KEY"):
        chat("--url", asgi_server.url, lines=[])


def test_the_api_key_can_come_from_the_environment(asgi_server, api_key, monkeypatch):
    monkeypatch.setenv("CHAT_API_KEY", api_key)
    out = chat("--url", asgi_server.url, lines=["hi"])
    assert "".join(out.answer_writes()) == "You said: hi"


def test_a_wrong_key_or_a_missing_server_fail_clearly(asgi_server, unused_port):
    with pytest.raises(CommandError, match="rejected the API key"):
        chat("--url", asgi_server.url, "--api-key", "nope", lines=[])
    with pytest.raises(CommandError, match="Cannot reach the server"):
        chat("--url", f"http://127.0.0.1:{unused_port}", "--api-key", "nope", lines=[])


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_direct_mode_streams_through_the_chat_service_as_a_cli_owner(transactional_db):
    out = chat(
        "--direct",
        "--user",
        "alice",
        "--session-id",
        "ops",
        lines=["[sim:slow=20] Directly", "[sim:reasoning] Think", "/1", "/quit"],
    )

    text = out.getvalue()
    assert "directly, as cli:alice" in text
    pieces = out.answer_writes(0)
    assert "".join(pieces) == "You said: [sim:slow=20] Directly"
    assert len(pieces) >= 5
    assert "bot> (thinking) Let me think about that.\n     You said: [sim:reasoning] Think" in text
    assert "".join(out.answer_writes(2)).startswith("You said: Tell me more")
    session = ChatSession.objects.get()
    assert (session.owner_key, session.session_id) == ("cli:alice", "ops")
    assert list(Reply.objects.values_list("status", flat=True)) == ["completed"] * 3


def test_direct_mode_ctrl_c_cancels_and_clear_works(transactional_db):
    out = chat(
        "--direct",
        "--user",
        "bob",
        lines=["[sim:slow=60] a long reply to stop", "/clear", "again", "/quit"],
        stdout=Terminal(interrupt_at=6),
    )

    text = out.getvalue()
    assert "[stopped]" in text
    assert "Context cleared" in text
    assert "".join(out.answer_writes(1)) == "You said: again"
    statuses = list(Reply.objects.order_by("pk").values_list("status", flat=True))
    assert statuses == ["cancelled", "completed"]


def test_direct_mode_shows_errors_before_the_reply_starts(transactional_db):
    out = chat("--direct", lines=["[sim:auth_failed] no", "/quit"])
    assert "error [upstream_auth_failed]:" in out.getvalue()


def test_in_colour_only_errors_are_red(asgi_server, api_key):
    out = chat(
        *server_args(asgi_server, api_key),
        "--force-color",
        lines=["[sim:reasoning] Think first", "[sim:server_error] Then fail", "/quit"],
    )

    lines = out.getvalue().splitlines()
    red = [line for line in lines if "\x1b[31" in line]  # Django's red: NOTICE, ERROR
    assert any("(thinking)" in line for line in lines) and any(" tokens · " in line for line in lines)
    assert any("suggestions:" in line for line in lines)
    assert red and all("error [" in line for line in red), red
