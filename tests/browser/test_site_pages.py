"""The pages around the chat in a real browser: the sign-in page, the admin's token usage list at
common desktop widths, and conversation titles shown as plain text."""

import shutil

import pytest

from sessions_admin.models import Reply
from tests.browser.conftest import CHROMIUM, screenshot
from tests.sessions_admin.factories import make_client, make_conversation, make_session, make_turn, make_user

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)
pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
if shutil.which(str(CHROMIUM)) is None:
    pytest.skip(f"{CHROMIUM} is not executable", allow_module_level=True)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def sign_in(page, base_url: str, path: str, username: str, password: str) -> None:
    page.goto(f"{base_url}{path}")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in" if path.startswith("/accounts/") else "Log in").click()


# Rows are written before `browser_context` starts Playwright, whose event loop on this thread
# makes Django refuse ORM calls.


@pytest.fixture
def alice(transactional_db):
    return make_user("alice", password="right-password")


def test_login_page_looks_like_the_chat_page_and_shows_errors(asgi_server, alice, browser_context):
    page = browser_context.new_page()
    page.goto(f"{asgi_server.url}/accounts/login/?next=/api/docs/")
    card = page.locator("main.signin-card")
    # The chat page's stylesheet is applied: the card is a centred panel, the button the accent colour.
    assert card.evaluate("el => getComputedStyle(el).borderRadius") == "20px"
    button = page.get_by_role("button", name="Sign in")
    assert button.evaluate("el => getComputedStyle(el).backgroundColor") == "rgb(79, 70, 229)"
    box = card.bounding_box()
    assert abs((box["x"] + box["width"] / 2) - 640) < 2
    screenshot(page, "login-page")

    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill("wrong")
    button.click()
    alert = page.get_by_role("alert")
    assert "Please enter a correct username and password." in alert.inner_text()
    screenshot(page, "login-page-error")

    page.get_by_label("Password").fill("right-password")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{asgi_server.url}/api/docs/")


@pytest.fixture
def usage_rows(transactional_db) -> None:
    """Replies with the widest values the list shows: long ids and names, big numbers, every status."""
    make_user("root", superuser=True, password="root-password")
    client = make_client("analytics-integration-production")
    browser_session = make_session(browser="f" * 32, session_id="c" * 32, bot_id="7500000000000000001")
    client_session = make_session(client=client, session_id="9" * 64, bot_id="7500000000000000002")
    user_session = make_session(user=make_user("a-rather-long-username-for-testing"), session_id="e" * 32)
    for session in (browser_session, client_session, user_session):
        conversation = make_conversation(session)
        for status, transport in zip(Reply.Status, Reply.Transport, strict=False):
            make_turn(
                conversation,
                status=status,
                transport=transport,
                input_tokens=128_000,
                output_tokens=32_768,
                ttft_ms=95_432,
                duration_ms=1_234_567,
                error_code="coze_error" if status == Reply.Status.FAILED else "",
            )


@pytest.mark.parametrize("width", [1280, 1920])
def test_token_usage_list_fits_without_horizontal_scrolling(asgi_server, usage_rows, browser_context, width):
    page = browser_context.new_page()
    page.set_viewport_size({"width": width, "height": 900})
    sign_in(page, asgi_server.url, "/admin/login/?next=/admin/sessions_admin/reply/", "root", "root-password")
    page.wait_for_selector("#result_list")
    assert page.locator("#site-name").inner_text() == "cozeproject admin"
    sizes = page.evaluate(
        """() => {
            const results = document.querySelector('#result_list').closest('.results');
            return {
                table: results.scrollWidth,
                container: results.clientWidth,
                page: document.documentElement.scrollWidth,
                viewport: document.documentElement.clientWidth,
            };
        }"""
    )
    screenshot(page, f"token-usage-{width}")
    assert sizes["table"] <= sizes["container"], sizes
    assert sizes["page"] <= sizes["viewport"], sizes
    # Every value is still there, in full, for a hover or a screen reader.
    assert page.locator("#result_list tbody tr").count() == 3 * min(len(Reply.Status), len(Reply.Transport))
    headers = [text.strip() for text in page.locator("#result_list thead th").all_text_contents()]
    assert headers == ["Started", "Session", "Bot", "Owner", "Status", "Transport", "Tokens", "First token", "Duration"]
    assert page.get_by_title("9" * 64).count() == min(len(Reply.Status), len(Reply.Transport))  # its replies
    filters = page.locator("#changelist-filter").inner_text()
    for label in ("SSE", "WebSocket", "Compatibility paths", "Sync API"):
        assert label in filters


MARKDOWN_QUESTION = "**Bold** move:\n`code`, [a link](https://example.com)\n\n- one\n- two"
PLAIN_TITLE = "Bold move: code, a link one two"


def test_conversation_titles_show_a_markdown_question_as_plain_text(page):
    page.fill("#message", MARKDOWN_QUESTION)
    page.keyboard.press("Enter")
    page.wait_for_selector('.msg-assistant[data-status="completed"]')
    session_id = page.evaluate("window.chatPage.sessionId")

    assert page.locator("#conversation-title").inner_text() == PLAIN_TITLE
    assert page.title() == f"{PLAIN_TITLE} · Chat"
    entry = page.locator(f'.session[data-session-id="{session_id}"] .session-title')
    entry.wait_for()
    assert entry.inner_text() == PLAIN_TITLE

    # Without this browser's own titles, the server's (its first question, as sent) read the same.
    page.evaluate("localStorage.removeItem('chat.titles')")
    page.reload()
    page.wait_for_selector('.msg-assistant[data-status="completed"]')
    page.wait_for_function(
        "title => document.querySelector('#conversation-title').textContent === title", arg=PLAIN_TITLE
    )
    assert page.locator(f'.session[data-session-id="{session_id}"] .session-title').inner_text() == PLAIN_TITLE
    screenshot(page, "markdown-title")
