"""`python manage.py chat`: an interactive, streaming conversation in the terminal.

By default it talks to a running server over its SSE endpoint with an API key, exactly as any
API client would. With `--direct` it runs the project's chat service in this process instead
(against Coze, or the built-in simulator in demo mode), which needs no server and no key.

Ctrl-C stops the reply being written (the reply is cancelled upstream and stored as cancelled)
and returns to the prompt; Ctrl-C at the prompt, Ctrl-D or /quit leaves.
"""

import asyncio
import getpass
import json
import logging
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable
from urllib.parse import quote

import httpx
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from chat.domain.errors import ChatError
from chat.domain.sse import parse_sse

HELP = """Commands:
  /1, /2, …   send the bot's numbered suggestion
  /clear      forget the context: the next message starts a new conversation
  /new        start a new session
  /session    show the session id
  /help       this text
  /quit       leave (also Ctrl-D)
Ctrl-C stops the reply being written."""

EventCallback = Callable[[dict], None]


class ChatClientError(Exception):
    """A failure to show the user: `code` from the API's error codes, or a local one."""

    def __init__(self, code: str, detail: str, *, retry_after: str | None = None):
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.retry_after = retry_after


class HttpBackend:
    """The server's SSE endpoint and session API, with an API key."""

    def __init__(self, *, url: str, api_key: str, timeout: float):
        self.url = url.rstrip("/")
        self.stopped_a_reply = False
        self.client = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": "cozeproject-chat-cli"},
            timeout=httpx.Timeout(connect=5.0, read=timeout, write=30.0, pool=5.0),
        )

    def check(self) -> str:
        """Fail early with a clear message when the server is down or the key is wrong."""
        try:
            health = self.client.get("/health").json()
            response = self.client.get("/api/sessions")
        except httpx.HTTPError as exc:
            raise CommandError(f"Cannot reach the server at {self.url}: {exc}. Is it running?") from exc
        except ValueError:
            raise CommandError(f"{self.url} does not look like this project's server (no /health).") from None
        if response.status_code == 401:
            raise CommandError("The server rejected the API key. Create one with `manage.py create_api_key NAME`.")
        mode = health.get("coze", "unknown")
        return f"{self.url} (Coze: {mode})"

    # After Ctrl-C, the stopped reply may still be being stored when the next message goes out:
    # that message retries a busy session for this long instead of failing.
    AFTER_STOP_RETRY_SECONDS = 5.0

    def run_turn(self, *, message: str, session_id: str, bot_id: str | None, on_event: EventCallback) -> None:
        deadline = time.monotonic() + (self.AFTER_STOP_RETRY_SECONDS if self.stopped_a_reply else 0)
        self.stopped_a_reply = False
        while True:
            try:
                return self._run_turn_once(message=message, session_id=session_id, bot_id=bot_id, on_event=on_event)
            except ChatClientError as error:
                if error.code != "session_busy" or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def _run_turn_once(self, *, message: str, session_id: str, bot_id: str | None, on_event: EventCallback) -> None:
        body = {"message": message, "session_id": session_id}
        if bot_id:
            body["bot_id"] = bot_id
        chat_id = None
        try:
            with self.client.stream("POST", "/api/chat/stream", json=body) as response:
                if response.status_code != 200:
                    response.read()
                    raise _error_from_response(response)
                try:
                    for event in _iter_sse(response):
                        if event.get("type") == "session":
                            chat_id = event.get("chat_id")
                        on_event(event)
                except KeyboardInterrupt:
                    # Ask the server to cancel upstream; leaving the stream also ends the turn.
                    self.stopped_a_reply = True
                    if chat_id:
                        self.cancel(chat_id)
                    on_event({"type": "error", "code": "cancelled", "detail": "Stopped.", "retryable": False})
        except httpx.TimeoutException as exc:
            raise ChatClientError("timeout", f"the server sent nothing for too long ({exc}).") from exc
        except httpx.HTTPError as exc:
            raise ChatClientError("network_error", f"lost the connection to {self.url}: {exc}") from exc

    def cancel(self, chat_id: str) -> None:
        try:
            self.client.post(f"/api/chats/{quote(chat_id, safe='')}/cancel", timeout=5)
        except httpx.HTTPError:
            pass  # the stream is closed anyway, which cancels the turn on the server too

    def clear(self, session_id: str) -> None:
        try:
            response = self.client.post(f"/api/sessions/{quote(session_id, safe='')}/clear")
        except httpx.HTTPError as exc:
            raise ChatClientError("network_error", str(exc)) from exc
        if response.status_code == 404:
            return  # nothing said yet in this session: nothing to forget
        if response.status_code != 200:
            raise _error_from_response(response)

    def close(self) -> None:
        self.client.close()


def _error_from_response(response: httpx.Response) -> ChatClientError:
    try:
        payload = response.json()
    except ValueError:
        payload = {}
    return ChatClientError(
        payload.get("code") or f"http_{response.status_code}",
        payload.get("detail") or f"the server answered {response.status_code}.",
        retry_after=response.headers.get("Retry-After"),
    )


def _iter_sse(response: httpx.Response):
    """The JSON objects of an SSE response, one per event, as they arrive."""
    block: list[str] = []
    for line in response.iter_lines():
        if line:
            block.append(line)
            continue
        for event in parse_sse("\n".join(block)):
            data = event.get("data")
            if data and data != "[DONE]":
                yield json.loads(data)
        block = []


class DirectBackend:
    """The chat service in this process: the same turn as every transport, without HTTP."""

    def __init__(self, *, owner_name: str):
        from chat.domain.inputs import Owner

        self.owner = Owner(key=f"cli:{owner_name}"[:80])
        # One loop for the whole conversation: the Coze client and its connection pool belong to it.
        self.loop = asyncio.new_event_loop()

    def check(self) -> str:
        from chat import coze

        if coze.coze_mode() == "simulator":
            coze.simulator_base_url()  # start it now, so its log line comes before the first prompt
        where = "the built-in Coze simulator (demo mode)" if coze.coze_mode() == "simulator" else settings.COZE_BASE_URL
        return f"{where} directly, as {self.owner.key}"

    def run_turn(self, *, message: str, session_id: str, bot_id: str | None, on_event: EventCallback) -> None:
        from chat.domain.events import PING
        from chat.domain.inputs import ChatRequest
        from chat.turn import service
        from chat.turn.control import TurnControl

        control = TurnControl(owner_key=self.owner.key)
        chat_request = ChatRequest(message=message, session_id=session_id, bot_id=bot_id or None)

        def stop(*_args) -> None:
            self.loop.call_soon_threadsafe(control.stop, "cancelled")

        async def consume() -> None:
            # The CLI has no transport of its own in Reply.Transport; it streams like the others
            # but is recorded under "sync".
            events = service.achat_events(
                owner=self.owner, chat_request=chat_request, transport="sync", control=control
            )
            async for event in events:
                if event is PING:
                    continue
                try:
                    on_event(event.as_dict())
                except KeyboardInterrupt:
                    control.stop("cancelled")

        previous = _install_sigint(stop)
        try:
            self.loop.run_until_complete(consume())
        except ChatError as error:
            raise ChatClientError(error.code, error.detail, retry_after=error.retry_after) from error
        finally:
            _restore_sigint(previous)

    def clear(self, session_id: str) -> None:
        from chat.conversations import sessions

        try:
            sessions.session_clear(owner=self.owner, session_id=session_id)
        except ChatError as error:
            if error.code != "not_found":
                raise ChatClientError(error.code, error.detail) from error

    def close(self) -> None:
        try:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()


def _install_sigint(handler):
    """Route Ctrl-C to `handler` while a reply streams (only possible on the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGINT, handler)


def _restore_sigint(previous) -> None:
    if previous is not None:
        signal.signal(signal.SIGINT, previous)


class Command(BaseCommand):
    help = (
        "Chat with the bot in the terminal, streaming replies token by token: against a running server "
        "(--url, with an API key from --api-key or CHAT_API_KEY), or --direct through this project's "
        "chat service in-process."
    )
    stealth_options = ("stdin",)

    def add_arguments(self, parser):
        parser.add_argument(
            "--url",
            default=os.environ.get("CHAT_URL", "http://127.0.0.1:8000"),
            help="The server to talk to (default: CHAT_URL or http://127.0.0.1:8000).",
        )
        parser.add_argument("--api-key", help="An API key from create_api_key (default: the CHAT_API_KEY variable).")
        parser.add_argument("--session-id", help="Continue this session (default: a new one).")
        parser.add_argument("--bot-id", help="Ask a specific allowed bot.")
        parser.add_argument(
            "--direct",
            action="store_true",
            help="Run the chat service in this process (Coze or the demo simulator) instead of calling a server.",
        )
        parser.add_argument(
            "--user",
            default=None,
            help="With --direct: the name your sessions are kept under, as cli:<name> (default: your login name).",
        )
        parser.add_argument(
            "--timeout",
            type=float,
            default=120.0,
            help="Seconds to wait for the server to send anything before giving up on a reply (default 120).",
        )

    def handle(self, *args, **options):
        self.stdin = options.get("stdin") or sys.stdin
        self.interactive = self.stdin is sys.stdin and sys.stdin.isatty()
        # The service logs every turn, and cozepy every refused request (a cancel that came too
        # late, say): in a conversation on the same terminal that is noise. -v 2 shows it.
        quiet = {"chat": logging.WARNING, "cozepy": logging.ERROR}
        previous = {name: logging.getLogger(name).level for name in quiet}
        if options["verbosity"] < 2:
            for name, level in quiet.items():
                logging.getLogger(name).setLevel(level)
        try:
            self._run(options)
        finally:
            for name, level in previous.items():
                logging.getLogger(name).setLevel(level)

    def _run(self, options) -> None:
        if options["direct"]:
            backend = DirectBackend(owner_name=options["user"] or _login_name())
        else:
            api_key = options["api_key"] or os.environ.get("CHAT_API_KEY", "")
            if not api_key:
                raise CommandError(
                    "An API key is needed to talk to the server: pass --api-key or set CHAT_API_KEY "
                    "(create one with `manage.py create_api_key NAME`), or use --direct."
                )
            backend = HttpBackend(url=options["url"], api_key=api_key, timeout=options["timeout"])
        try:
            where = backend.check()
            self.session_id = options["session_id"] or _new_session_id()
            self.bot_id = options["bot_id"]
            self.follow_ups: list[str] = []
            self.stdout.write(self.style.MIGRATE_HEADING(f"Chatting with {where}"))
            self.stdout.write(f"Session {self.session_id}. Type a message; /help lists commands; /quit leaves.\n")
            self._repl(backend)
        finally:
            backend.close()

    # --- the loop ----------------------------------------------------------------------------

    def _repl(self, backend) -> None:
        while True:
            line = self._read_line()
            if line is None:
                self.stdout.write("")
                return
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                message = self._command(line, backend)
                if message is False:
                    return
                if message is None:
                    continue
            else:
                message = line
            self._turn(backend, message)

    def _read_line(self) -> str | None:
        prompt = "you> "
        try:
            if self.interactive:
                try:
                    import readline  # noqa: F401 - line editing and history for input()
                except ImportError:
                    pass
                return input(self.style.SUCCESS(prompt))
            self.stdout.write(self.style.SUCCESS(prompt), ending="")
            line = self.stdin.readline()
            if not line:
                return None
            self.stdout.write(line.rstrip("\n"))  # echo, so a piped transcript reads like a conversation
            return line
        except EOFError:
            return None
        except KeyboardInterrupt:
            self.stdout.write("")
            return None

    def _command(self, line: str, backend) -> str | bool | None:
        """Run a /command; returns a message to send, None to prompt again, False to leave."""
        name = line[1:].split(maxsplit=1)[0].lower() if len(line) > 1 else ""
        if name in ("quit", "exit", "q"):
            return False
        if name == "help":
            self.stdout.write(HELP)
        elif name == "session":
            self.stdout.write(f"Session {self.session_id}")
        elif name == "new":
            self.session_id = _new_session_id()
            self.follow_ups = []
            self.stdout.write(f"New session {self.session_id}.")
        elif name == "clear":
            try:
                backend.clear(self.session_id)
            except ChatClientError as error:
                self._error(error.code, error.detail)
            else:
                self.follow_ups = []
                self.stdout.write("Context cleared: the next message starts a new conversation.")
        elif name.isdigit():
            index = int(name) - 1
            if 0 <= index < len(self.follow_ups):
                return self.follow_ups[index]
            self.stdout.write("No such suggestion." if self.follow_ups else "There are no suggestions right now.")
        else:
            self.stdout.write(f"Unknown command {line.split()[0]}. /help lists the commands.")
        return None

    def _turn(self, backend, message: str) -> None:
        self.follow_ups = []
        state = {"answering": False, "reasoning": False, "started": time.monotonic()}
        self.stdout.write(self.style.MIGRATE_HEADING("bot> "), ending="")
        self.stdout.flush()

        def on_event(event: dict) -> None:
            kind = event.get("type")
            if kind == "reasoning":
                if not state["reasoning"]:
                    state["reasoning"] = True
                    self.stdout.write(self._aside("(thinking) "), ending="")
                self.stdout.write(self._aside(event["content"]), ending="")
            elif kind == "delta":
                if state["reasoning"] and not state["answering"]:
                    self.stdout.write("\n     ", ending="")
                state["answering"] = True
                self.stdout.write(event["content"], ending="")
            elif kind == "follow_up":
                self.follow_ups.append(event["content"])
            elif kind == "completed":
                usage = event.get("usage") or {}
                seconds = time.monotonic() - state["started"]
                self.stdout.write("")
                self.stdout.write(self._aside(f"     {usage.get('total_tokens', 0)} tokens · {seconds:.1f} s"))
            elif kind == "error":
                self.stdout.write("")
                if event.get("code") == "cancelled":
                    self.stdout.write(self.style.WARNING("     [stopped]"))
                else:
                    self._error(event.get("code", "error"), event.get("detail", ""), indent="     ")
            self.stdout.flush()

        try:
            backend.run_turn(message=message, session_id=self.session_id, bot_id=self.bot_id, on_event=on_event)
        except ChatClientError as error:
            self.stdout.write("")
            detail = error.detail
            if error.retry_after:
                detail = f"{detail} Retry in {error.retry_after} s."
            self._error(error.code, detail, indent="     ")
        except KeyboardInterrupt:
            # Ctrl-C before the server accepted the message.
            self.stdout.write("")
            self.stdout.write(self.style.WARNING("     [stopped]"))
        if self.follow_ups:
            shortcuts = "   ".join(f"/{number} {text}" for number, text in enumerate(self.follow_ups, 1))
            self.stdout.write(self._aside(f"     suggestions: {shortcuts}"))

    def _aside(self, text: str) -> str:
        """Reasoning, usage and suggestions: set apart from the answer in cyan. (Django's NOTICE role
        is red, the colour of the errors below.)"""
        return self.style.HTTP_NOT_MODIFIED(text)

    def _error(self, code: str, detail: str, indent: str = "") -> None:
        self.stdout.write(self.style.ERROR(f"{indent}error [{code}]: {detail}"))


def _new_session_id() -> str:
    return f"cli-{secrets.token_hex(6)}"


def _login_name() -> str:
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = "operator"
    return "".join(ch for ch in name if ch.isalnum() or ch in "-_.") or "operator"
