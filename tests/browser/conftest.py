"""Chromium driven by Playwright against the project served by the `asgi_server` fixture.

The browser is Debian's `chromium` package at /usr/bin/chromium; Playwright never downloads
one. Each test gets a fresh profile. Screenshots go to test-artifacts/screenshots/.
"""

import re
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def anonymous_chat(coze_settings):
    """Browsers without a login may chat (the page's default in demo mode)."""
    coze_settings.CHAT_ALLOW_ANONYMOUS = True
    return coze_settings


@pytest.fixture
def browser_context(tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 800},
        )
        context.set_default_timeout(15_000)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser_context, request, asgi_server, anonymous_chat):
    """The chat page, opened; fails the test on uncaught JavaScript errors or any dialog."""
    page = browser_context.pages[0] if browser_context.pages else browser_context.new_page()
    problems: list[str] = []  # uncaught JavaScript errors and dialogs (alert() would be one)
    page.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))
    page.on("dialog", lambda dialog: (problems.append(f"dialog: {dialog.message}"), dialog.dismiss()))
    page.problems = problems
    page.base_url = asgi_server.url
    page.goto(asgi_server.url + "/")
    page.wait_for_function("window.chatPage !== undefined")
    yield page
    screenshot(page, f"{request.node.name}-end")
    assert not problems, problems


def screenshot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png"
    page.screenshot(path=str(path))
    return path
