"""Rating answers on the chat page (docs/api.md §15), in Chromium: thumbs up and down and an
optional comment on every answer, the current rating shown (also after a reload), stored, taken
back by clicking the pressed thumb, and forwarded to Coze (the simulator)."""

import httpx
import pytest

from sessions_admin.models import Feedback
from tests.browser.conftest import CHROMIUM, screenshot
from tests.browser.test_chat_page import answer_text, db, last_answer, page_wait_until, send, use_transport, wait_status

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)
pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def stored_ratings() -> list[tuple[str, str]]:
    return db(lambda: list(Feedback.objects.order_by("pk").values_list("rating", "comment")))


def thumb(answer, rating: str):
    return answer.get_by_role("button", name="Good answer" if rating == "up" else "Bad answer")


@pytest.mark.parametrize("transport", ["sse", "ws"])
def test_an_answer_is_rated_with_a_comment_stored_shown_after_a_reload_and_taken_back(page, simulator, transport):
    use_transport(page, transport)
    send(page, "What are your opening hours?")
    wait_status(page, "completed")
    answer = last_answer(page)

    thumb(answer, "down").click()
    page_wait_until(page, lambda: stored_ratings() == [("down", "")])
    assert thumb(answer, "down").get_attribute("aria-pressed") == "true"
    assert thumb(answer, "up").get_attribute("aria-pressed") == "false"
    answer.get_by_role("textbox", name="Comment on this answer").fill("It left out Sundays.")
    answer.get_by_role("button", name="Save comment").click()
    page_wait_until(page, lambda: stored_ratings() == [("down", "It left out Sundays.")])
    page.wait_for_function("document.querySelector('.msg-assistant .feedback-note').textContent.includes('Sundays')")
    assert answer.locator(".feedback-comment").is_hidden()  # saved: the comment shows beside the thumbs
    screenshot(page, f"rated-{transport}")

    # Forwarded to Coze's feedback API for that message, in the background.
    def forwarded():
        calls = httpx.get(f"{simulator.base_url}/_sim/feedback").json()["feedback"]
        return [(c["method"], c["feedback_type"], c["comment"]) for c in calls if c["method"] == "POST"]

    page_wait_until(page, lambda: ("POST", "unlike", "It left out Sundays.") in forwarded())

    page.reload()
    page.wait_for_selector('.msg-assistant[data-status="completed"]')
    answer = last_answer(page)
    assert answer_text(page) == "You said: What are your opening hours?"
    assert answer.get_attribute("data-rating") == "down"
    assert thumb(answer, "down").get_attribute("aria-pressed") == "true"
    assert "It left out Sundays." in answer.locator(".feedback-note").inner_text()

    thumb(answer, "up").click()  # the other thumb replaces the rating, keeping the comment
    page_wait_until(page, lambda: stored_ratings() == [("up", "It left out Sundays.")])
    # The page shows it once the answer to its request arrives (the row may be stored a moment before).
    page.wait_for_function("document.querySelector('.msg-assistant').dataset.rating === 'up'")
    assert thumb(answer, "down").get_attribute("aria-pressed") == "false"
    thumb(answer, "up").click()  # the pressed thumb takes the rating back
    page_wait_until(page, lambda: stored_ratings() == [])
    page.wait_for_function("document.querySelector('.msg-assistant').dataset.rating === ''")
    assert thumb(answer, "up").get_attribute("aria-pressed") == "false"
    assert answer.locator(".feedback-comment").is_hidden()
