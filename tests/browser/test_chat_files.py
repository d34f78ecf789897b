"""Attachments on the chat page in a real browser: the attach button, paste and drag-and-drop of
images, upload progress, thumbnails in the transcript, the bot's reply naming what it received
(the simulator's), a clear message for a refused file, and attachments in a reopened session."""

import json
import shutil

import pytest

from tests.browser.conftest import CHROMIUM, screenshot
from tests.chat.test_files import png_bytes

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)
pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
if shutil.which(str(CHROMIUM)) is None:
    pytest.skip(f"{CHROMIUM} is not executable", allow_module_level=True)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def last_answer_completed(page) -> str:
    page.wait_for_function(
        """() => {
            const all = document.querySelectorAll('.msg-assistant');
            return all.length && all[all.length - 1].dataset.status === 'completed';
        }"""
    )
    return page.locator(".msg-assistant").last.locator(".answer").inner_text()


def wait_ready(page, count: int = 1) -> None:
    page.wait_for_function("n => document.querySelectorAll('.tray-item[data-status=ready]').length === n", arg=count)


def sent_to_coze(simulator) -> list[dict]:
    """The object_string items of the newest chat the simulator received."""
    chat = list(simulator.app.state.chats.values())[-1]
    return [
        {k: v for k, v in item.items() if v is not None} for item in json.loads(chat.request_messages[0]["content"])
    ]


def test_attaching_an_image_shows_it_and_the_bot_names_it(page, simulator):
    page.set_input_files(
        "#file-input", files=[{"name": "cat.png", "mimeType": "image/png", "buffer": png_bytes(32, 32)}]
    )
    wait_ready(page)
    assert page.locator(".tray-item .tray-thumb").count() == 1
    screenshot(page, "attachment-tray")

    page.fill("#message", "What is in this picture?")
    page.keyboard.press("Enter")

    answer = last_answer_completed(page)
    assert answer == "You said: What is in this picture? [received: image cat.png]"
    user_message = page.locator(".msg-user").last
    assert user_message.locator("img.attachment-thumb").count() == 1
    assert user_message.locator(".bubble").inner_text() == "What is in this picture?"
    assert page.locator("#attachment-tray").is_hidden()
    items = sent_to_coze(simulator)
    assert items[0] == {"type": "text", "text": "What is in this picture?"}
    assert items[1]["type"] == "image"
    screenshot(page, "attachment-image-sent")

    # Reopened later, the message still lists its attachment (by name: the page keeps no image URL).
    page.reload()
    page.wait_for_function("window.chatPage !== undefined")
    page.wait_for_selector(".msg-user .attachment")
    assert "cat.png" in page.locator(".msg-user .attachment").first.get_attribute("title")
    screenshot(page, "attachment-reopened")


def test_pasting_and_dropping_images_attaches_them(page, simulator):
    image = list(png_bytes(8, 8))
    page.evaluate(
        """bytes => {
            const file = new File([new Uint8Array(bytes)], 'pasted.png', {type: 'image/png'});
            const data = new DataTransfer();
            data.items.add(file);
            document.querySelector('#message').dispatchEvent(
                new ClipboardEvent('paste', {clipboardData: data, bubbles: true, cancelable: true}));
        }""",
        image,
    )
    wait_ready(page, 1)
    page.evaluate(
        """bytes => {
            const file = new File([new Uint8Array(bytes)], 'dropped.png', {type: 'image/png'});
            const data = new DataTransfer();
            data.items.add(file);
            for (const type of ['dragenter', 'dragover', 'drop']) {
                document.querySelector('#conversation').dispatchEvent(
                    new DragEvent(type, {dataTransfer: data, bubbles: true, cancelable: true}));
            }
        }""",
        image,
    )
    wait_ready(page, 2)
    assert page.locator("#drop-overlay").is_hidden()

    page.keyboard.press("Enter")  # no text: the images alone

    answer = last_answer_completed(page)
    assert answer.endswith("[received: image pasted.png, image dropped.png]")  # Markdown folds the double space
    assert page.locator(".msg-user").last.locator("img.attachment-thumb").count() == 2
    assert [item["type"] for item in sent_to_coze(simulator)] == ["image", "image"]


def test_a_refused_file_says_why_and_is_not_attached(page, settings):
    settings.CHAT_MAX_UPLOAD_BYTES = 1000

    page.set_input_files(
        "#file-input",
        files=[
            {"name": "tool.exe", "mimeType": "application/x-msdownload", "buffer": b"MZ" + b"\x00" * 100},
            {"name": "huge.txt", "mimeType": "text/plain", "buffer": b"x" * 5000},
        ],
    )

    page.wait_for_selector(".toast >> text=“tool.exe” can't be attached")
    page.wait_for_selector(".toast >> text=“huge.txt” is too large")
    page.wait_for_function("document.querySelectorAll('.tray-item').length === 0")
    assert page.locator("#attachment-tray").is_hidden()


def test_upload_progress_shows_and_sending_waits_for_the_upload(page):
    held = []
    page.route("**/api/files", lambda route: held.append(route))  # hold the upload until released

    page.set_input_files(
        "#file-input", files=[{"name": "slow.png", "mimeType": "image/png", "buffer": png_bytes(16, 16)}]
    )
    page.wait_for_selector(".tray-item[data-status=uploading] progress.tray-progress")
    page.fill("#message", "too early")
    page.keyboard.press("Enter")

    page.wait_for_selector(".toast >> text=Wait for the upload to finish before sending.")
    assert page.locator(".msg-user").count() == 0
    assert page.input_value("#message") == "too early"
    assert held, "the upload request never reached the route"
    held[0].continue_()
    wait_ready(page)
    page.keyboard.press("Enter")
    assert last_answer_completed(page) == "You said: too early [received: image slow.png]"
