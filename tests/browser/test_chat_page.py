"""The chat page in a real browser: streaming over both transports, Stop, follow-ups, errors in
place with Retry, the session list, safe rendering, Retry-After, and the sign-in message."""

import itertools
import re
import shutil
import socket
import threading
import time

import httpx
import pytest
from django.db import connections

from sessions_admin.models import ChatSession, Reply
from tests.browser.conftest import CHROMIUM, screenshot
from tests.conftest import wait_until

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)
pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
if shutil.which(str(CHROMIUM)) is None:
    pytest.skip(f"{CHROMIUM} is not executable", allow_module_level=True)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

WS_URL = re.compile(r"/ws/chat/$")


def last_answer(page):
    return page.locator(".msg-assistant").last


def use_transport(page, name: str) -> None:
    label = {"sse": "SSE", "ws": "WebSocket"}[name]
    page.get_by_role("radio", name=label).check()
    if name == "ws":
        page.wait_for_function("window.chatPage.wsState === 'open'")
    assert page.evaluate("window.chatPage.transport") == name


def send(page, text: str) -> None:
    page.fill("#message", text)
    page.keyboard.press("Enter")


def answer_text(page) -> str:
    return last_answer(page).locator(".answer").inner_text()


def status(page) -> str:
    return last_answer(page).get_attribute("data-status")


def wait_status(page, expected: str, timeout: float = 15_000) -> None:
    page.wait_for_function(
        """expected => {
            const all = document.querySelectorAll('.msg-assistant');
            return all.length && all[all.length - 1].dataset.status === expected;
        }""",
        arg=expected,
        timeout=timeout,
    )


def watch_stream(page, timeout: float = 20.0) -> list[str]:
    """Poll the last answer until it completes; the distinct texts seen on the way."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        state, text = page.evaluate(
            """() => {
                const last = [...document.querySelectorAll('.msg-assistant')].pop();
                return [last.dataset.status, last.querySelector('.answer').innerText];
            }"""
        )
        if state == "completed":
            return seen
        assert state in ("waiting", "streaming"), state
        assert time.monotonic() < deadline, f"no completion; saw {seen!r}"
        if text and (not seen or text != seen[-1]):
            seen.append(text)
        page.wait_for_timeout(40)


def page_wait_until(page, predicate, timeout: float = 10.0):
    """Like wait_until, but lets Playwright deliver page events (requests, sockets) meanwhile."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, "condition not met in time"
        page.wait_for_timeout(50)
    return value


def db(query):
    """Run an ORM query on a short-lived thread and return its result.

    Playwright's sync API keeps an event loop running on the test's thread, and Django refuses
    ORM calls next to a running loop; the thread closes its connection so none is left open.
    """
    outcome: dict = {}

    def run():
        try:
            outcome["value"] = query()
        except BaseException as exc:
            outcome["error"] = exc
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def sim_chat(simulator, chat_id: str) -> dict:
    return httpx.get(f"{simulator.base_url}/_sim/chats/{chat_id}").json()


@pytest.mark.parametrize(("transport", "stored_as"), [("sse", "sse"), ("ws", "websocket")])
def test_a_streamed_reply_appears_token_by_token(page, transport, stored_as):
    use_transport(page, transport)
    message = "[sim:slow=80] Hello, streaming world"
    send(page, message)

    seen = watch_stream(page)

    expected = f"You said: {message}"
    assert len(seen) >= 4, f"the answer did not grow in steps: {seen!r}"
    for shorter, longer in itertools.pairwise(seen):
        assert longer.startswith(shorter.rstrip()) and len(longer) > len(shorter)
    assert seen[0] != expected
    assert answer_text(page) == expected
    assert page.locator(".msg-user .bubble").inner_text() == message
    assert last_answer(page).locator(".chip").count() >= 1
    screenshot(page, f"streamed-{transport}")
    reply = db(lambda: Reply.objects.get())
    assert (reply.status, reply.transport) == ("completed", stored_as)


@pytest.mark.parametrize("transport", ["sse", "ws"])
def test_stop_cancels_the_reply_upstream(page, simulator, transport):
    use_transport(page, transport)
    cancel_calls: list[int] = []
    page.on(
        "response",
        lambda response: "/cancel" in response.url and cancel_calls.append(response.status),
    )
    send(page, "[sim:slow=80] A long answer that the user stops halfway through, as people do")
    page.wait_for_function(
        "() => (document.querySelector('.msg-assistant:last-child .answer')?.innerText || '').length > 12"
    )
    screenshot(page, f"stop-{transport}-before")
    page.click("#stop")

    wait_status(page, "stopped")
    assert last_answer(page).locator(".stopped-badge").inner_text() == "Stopped"
    partial = answer_text(page)
    assert partial and "You said: [sim:slow=80] A long answer".startswith(partial[:30])
    assert page.is_visible("#send") and not page.is_visible("#stop")
    screenshot(page, f"stop-{transport}-after")

    reply = wait_until(lambda: db(lambda: Reply.objects.exclude(status="in_progress").first()))
    assert reply.status == "cancelled"
    assert wait_until(lambda: sim_chat(simulator, reply.coze_chat_id)["status"] == "canceled")
    if transport == "sse":
        assert cancel_calls == [200], "Stop over SSE goes through POST /api/chats/{id}/cancel"


def test_clicking_a_follow_up_sends_it(page):
    send(page, "First question")
    wait_status(page, "completed")
    chip = last_answer(page).locator(".chip").first
    suggestion = chip.inner_text().removesuffix(" →").strip()
    assert suggestion
    chip.click()

    wait_status(page, "completed")
    bubbles = page.locator(".msg-user .bubble")
    assert bubbles.count() == 2
    assert bubbles.nth(1).inner_text() == suggestion
    assert answer_text(page).startswith(f"You said: {suggestion}")
    screenshot(page, "follow-up")
    assert db(lambda: Reply.objects.filter(status="completed").count()) == 2
    # Only the newest answer offers suggestions.
    assert page.locator(".msg-assistant").first.locator(".chip").count() == 0


@pytest.mark.parametrize("transport", ["sse", "ws"])
def test_an_upstream_error_is_shown_in_place_with_a_retry_that_works(page, transport):
    use_transport(page, transport)
    send(page, "[sim:error_event] this will break halfway")

    wait_status(page, "error")
    notice = last_answer(page).locator(".notice-error")
    assert "upstream_error" in notice.inner_text()
    assert answer_text(page), "the partial answer stays visible above the error"
    screenshot(page, f"error-in-place-{transport}")
    assert db(lambda: Reply.objects.filter(status="failed").count()) == 1

    notice.get_by_role("button", name="Retry").click()
    wait_until(lambda: db(lambda: Reply.objects.count()) == 2)
    wait_status(page, "error")
    wait_until(lambda: db(lambda: Reply.objects.filter(status="failed").count()) == 2)
    # The retry reused the same place: one question, one answer on screen.
    assert page.locator(".msg-user").count() == 1
    assert page.locator(".msg-assistant").count() == 1


def test_the_session_list_shows_sessions_and_clear_and_delete_work(page):
    send(page, "Session one, first turn")
    wait_status(page, "completed")
    first_id = page.evaluate("window.chatPage.sessionId")
    page.click("#new-chat")
    assert page.is_visible("#empty-state")
    send(page, "Session two")
    wait_status(page, "completed")
    second_id = page.evaluate("window.chatPage.sessionId")
    assert first_id != second_id

    items = page.locator(".session")
    page.wait_for_function("document.querySelectorAll('.session').length === 2")
    assert items.nth(0).get_attribute("data-session-id") == second_id  # newest activity first
    assert "Session one, first turn" in page.locator(f'.session[data-session-id="{first_id}"]').inner_text()
    screenshot(page, "session-list")

    # Open the first session: its messages come back from the API.
    page.click(f'.session[data-session-id="{first_id}"] .session-open')
    page.wait_for_function("id => window.chatPage.sessionId === id", arg=first_id)
    page.wait_for_selector('.msg-assistant[data-status="completed"]')
    assert page.locator(".msg-user .bubble").inner_text() == "Session one, first turn"

    page.click(f'.session[data-session-id="{first_id}"] .session-clear')
    page.click("#confirm-ok")
    page.wait_for_selector(".divider")
    session = wait_until(lambda: db(lambda: ChatSession.objects.filter(session_id=first_id, message_count=0).first()))
    assert session.current_conversation_id is None
    page.wait_for_function(
        """id => document.querySelector(`.session[data-session-id="${id}"] .session-meta`)
                    ?.textContent.includes('0 messages')""",
        arg=first_id,
    )

    page.click(f'.session[data-session-id="{second_id}"] .session-delete')
    screenshot(page, "session-delete-confirm")
    page.click("#confirm-ok")
    page.wait_for_function("document.querySelectorAll('.session').length === 1")
    assert not db(lambda: ChatSession.objects.filter(session_id=second_id).exists())
    assert db(lambda: ChatSession.objects.filter(session_id=first_id).exists())


def test_a_conversation_survives_a_reload(page):
    send(page, "Remember me across a reload")
    wait_status(page, "completed")
    session_id = page.evaluate("window.chatPage.sessionId")
    page.reload()
    page.wait_for_selector('.msg-assistant[data-status="completed"]')
    assert page.evaluate("window.chatPage.sessionId") == session_id
    assert page.locator(".msg-user .bubble").inner_text() == "Remember me across a reload"
    assert answer_text(page) == "You said: Remember me across a reload"
    assert last_answer(page).locator(".chip").count() >= 1


def test_hostile_content_is_shown_as_text(page):
    hostile = "<img src=x onerror=alert(1)> <script>alert(2)</script> [link](javascript:alert(3))"
    send(page, hostile)
    wait_status(page, "completed")

    assert page.locator(".msg-user .bubble").inner_text() == hostile
    answer = answer_text(page)
    assert "<img src=x onerror=alert(1)>" in answer
    assert "<script>alert(2)</script>" in answer
    assert page.locator("#thread img, #thread script").count() == 0
    assert page.locator("#thread a[href^='javascript']").count() == 0
    assert page.locator("#thread [onerror]").count() == 0
    screenshot(page, "hostile-content")
    # The `page` fixture fails the test if any alert() ran.


def test_markdown_in_a_reply_is_rendered(page):
    send(page, "[sim:echo]**Bold** and `code`\n\n- one\n- two")
    wait_status(page, "completed")
    answer = last_answer(page).locator(".answer")
    assert answer.locator("strong").inner_text() == "Bold"
    assert answer.locator("code").inner_text() == "code"
    assert answer.locator("li").count() == 2


def test_reasoning_is_shown_folded(page):
    send(page, "[sim:reasoning] Think first")
    wait_status(page, "completed")
    reasoning = last_answer(page).locator("details.reasoning")
    assert reasoning.is_visible()
    assert reasoning.get_attribute("open") is None
    assert not last_answer(page).locator(".reasoning-text").is_visible()
    reasoning.locator("summary").click()
    assert last_answer(page).locator(".reasoning-text").inner_text().strip()
    screenshot(page, "reasoning-open")


def test_rate_limited_sends_wait_for_retry_after(page):
    posted: list[float] = []
    page.on("request", lambda request: "/api/chat/stream" in request.url and posted.append(time.monotonic()))
    send(page, "[sim:rate_limited] slow down")

    last_answer(page).locator(".notice-retry").wait_for()
    notice = last_answer(page).locator(".notice-retry").inner_text()
    assert "Rate limited" in notice and "Retrying in 2 s" in notice  # the server's Retry-After: 2
    screenshot(page, "rate-limited-retrying")
    page_wait_until(page, lambda: len(posted) >= 2)
    assert posted[1] - posted[0] >= 1.8, "the second try waited for Retry-After"

    page.click("#stop")
    wait_status(page, "stopped")


def test_the_websocket_reconnects_with_backoff_after_the_server_drops_it(page):
    sockets: list = []

    def route(socket):
        socket.connect_to_server()
        sockets.append(socket)

    page.route_web_socket(WS_URL, route)
    use_transport(page, "ws")
    assert len(sockets) == 1

    sockets[0].close(code=1012, reason="server restart")
    page.wait_for_function("window.chatPage.wsState === 'waiting'")
    assert "retrying in" in page.inner_text("#connection-status")
    screenshot(page, "websocket-reconnecting")
    page.wait_for_function("window.chatPage.wsState === 'open'")
    assert len(sockets) == 2

    send(page, "Back online")
    wait_status(page, "completed")
    assert db(lambda: Reply.objects.get()).transport == "websocket"


def test_a_silent_websocket_is_dropped_after_the_heartbeat_timeout_and_replaced(page, coze_settings):
    coze_settings.CHAT_SSE_HEARTBEAT = 1.0  # the page gives up after 2 heartbeats + 5 s of silence
    page.reload()
    sockets: list = []

    def route(socket):
        sockets.append(socket)
        if len(sockets) > 1:
            socket.connect_to_server()
        # The first socket opens, then never answers anything, not even a pong: a dead network.

    page.route_web_socket(WS_URL, route)
    use_transport(page, "ws")
    opened = time.monotonic()
    page_wait_until(page, lambda: len(sockets) == 2, timeout=15)
    assert time.monotonic() - opened >= 6
    page.wait_for_function("window.chatPage.wsState === 'open'")

    send(page, "Still there?")
    wait_status(page, "completed")


def test_without_login_or_anonymous_access_the_page_asks_to_sign_in(page, coze_settings):
    coze_settings.CHAT_ALLOW_ANONYMOUS = False
    page.reload()
    page.wait_for_selector(".signin-card")
    link = page.get_by_role("link", name="Sign in")
    assert link.get_attribute("href").startswith("/accounts/login/")
    screenshot(page, "sign-in-required")
    link.click()
    page.wait_for_url("**/accounts/login/**")


class SilentSseServer:
    """Answers any request with the start of an SSE reply, then says nothing: a dead connection."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/api/chat/stream"
        self.connections: list = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections.append(conn)
            conn.recv(65536)
            session = '{"type":"session","session_id":"s","conversation_id":"c","chat_id":"silent-chat"}'
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
                + f"id: 1\nevent: session\ndata: {session}\n\nid: 2\nevent: delta\ndata: ".encode()
                + b'{"type":"delta","content":"Half an ans"}\n\n'
            )

    def close(self):
        self.sock.close()
        for conn in self.connections:
            conn.close()


def test_an_sse_reply_that_goes_silent_past_the_heartbeat_is_dropped_with_a_retry(page, coze_settings):
    coze_settings.CHAT_SSE_HEARTBEAT = 1.0  # the page gives up after 2 heartbeats + 5 s of silence
    page.reload()
    silent = SilentSseServer()
    page.route("**/api/chat/stream", lambda route: route.continue_(url=silent.url), times=1)
    try:
        send(page, "This reply will hang")
        page.wait_for_function("() => document.querySelector('.msg-assistant .answer')?.innerText === 'Half an ans'")
        started = time.monotonic()
        wait_status(page, "error", timeout=15_000)
        assert time.monotonic() - started >= 5
        notice = last_answer(page).locator(".notice-error").inner_text()
        assert "Nothing arrived from the server for 7 seconds" in notice
        screenshot(page, "sse-inactivity-timeout")

        # Retry goes to the real server this time.
        last_answer(page).get_by_role("button", name="Retry").click()
        wait_status(page, "completed")
        assert answer_text(page) == "You said: This reply will hang"
    finally:
        silent.close()


RESUMED_TEXT = (
    "First line of a long answer, 你好世界 👋🏽.\n\n"
    "Second paragraph keeps going — and going, word after word, until the end."
)


@pytest.mark.parametrize("transport", ["sse", "ws"])
def test_reloading_mid_reply_picks_the_reply_up_and_shows_the_whole_answer(page, transport):
    use_transport(page, transport)
    send(page, "[sim:slow=60][sim:echo]" + RESUMED_TEXT)
    page.wait_for_function(
        "() => (document.querySelector('.msg-assistant:last-child .answer')?.innerText || '').length > 10"
    )
    session_id = page.evaluate("window.chatPage.sessionId")

    page.reload()
    page.wait_for_function("window.chatPage !== undefined")
    if transport == "ws":
        page.wait_for_function("window.chatPage.wsState === 'open'")
    # The session list says the reply is still being written.
    page.wait_for_selector(f'.session.is-running[data-session-id="{session_id}"] .session-running')
    screenshot(page, f"resumed-{transport}-running")
    wait_status(page, "completed", timeout=30_000)

    assert page.evaluate("window.chatPage.sessionId") == session_id
    paragraphs = last_answer(page).locator(".answer p").all_inner_texts()
    assert "\n\n".join(paragraphs) == RESUMED_TEXT  # whole, nothing twice
    assert page.locator(".msg-assistant").count() == 1
    reply = db(lambda: Reply.objects.get())
    assert reply.status == "completed" and reply.resumable and reply.ended_without_client
    page.wait_for_selector(f'.session[data-session-id="{session_id}"]:not(.is-running)', timeout=10_000)
    screenshot(page, f"resumed-{transport}-done")


class CuttingProxy:
    """Passes one SSE request to the real server and cuts the connection after a few deltas: a
    network that drops mid-reply (the server sees its client go)."""

    def __init__(self, target_port: int, deltas: int = 4):
        self.target_port = target_port
        self.deltas = deltas
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/api/chat/stream"
        self.relayed = b""
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn, socket.create_connection(("127.0.0.1", self.target_port)) as upstream:
            request = conn.recv(65536)
            head, _, body = request.partition(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
            while len(body) < length:
                body += conn.recv(65536)
            # The browser's Host names this proxy; the server's CSRF check wants its own.
            head = re.sub(rb"(?im)^host: *[^\r\n]*", f"Host: 127.0.0.1:{self.target_port}".encode(), head)
            upstream.sendall(head + b"\r\n\r\n" + body)
            while self.relayed.count(b"event: delta") < self.deltas:
                chunk = upstream.recv(65536)
                if not chunk:
                    break
                self.relayed += chunk
                conn.sendall(chunk)

    def close(self):
        self.sock.close()


@pytest.mark.parametrize("transport", ["sse", "ws"])
def test_a_connection_lost_mid_reply_picks_the_reply_up_with_nothing_missing_or_twice(page, asgi_server, transport):
    use_transport(page, transport)
    resumes: list[str] = []
    page.on(
        "request", lambda request: "/stream" in request.url and request.method == "GET" and resumes.append(request.url)
    )
    proxy = None
    sockets: list = []
    if transport == "sse":
        proxy = CuttingProxy(asgi_server.port)
        page.route("**/api/chat/stream", lambda route: route.continue_(url=proxy.url), times=1)
    else:

        def route(ws_route):
            server = ws_route.connect_to_server()
            sockets.append(ws_route)
            frames: list[str] = []

            def from_server(message):
                ws_route.send(message)
                frames.append(message)
                if len(sockets) == 1 and sum('"type":"delta"' in frame for frame in frames) == 4:
                    ws_route.close(code=4000, reason="network lost")

            server.on_message(from_server)

        page.route_web_socket(WS_URL, route)
        page.reload()
        page.wait_for_function("window.chatPage !== undefined")
        use_transport(page, "ws")
    try:
        send(page, "[sim:slow=50][sim:echo]" + RESUMED_TEXT)
        wait_status(page, "completed", timeout=30_000)
    finally:
        if proxy:
            proxy.close()

    paragraphs = last_answer(page).locator(".answer p").all_inner_texts()
    assert "\n\n".join(paragraphs) == RESUMED_TEXT
    reply = db(lambda: Reply.objects.get())
    assert reply.status == "completed" and reply.resume_count >= 1
    if transport == "sse":
        assert proxy.relayed.count(b"event: delta") >= 4 and resumes, "the page resumed with GET …/stream"
    else:
        assert len(sockets) >= 2, "the page reconnected and resumed on a new socket"
