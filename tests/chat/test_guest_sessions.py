"""A guest's conversations (an anonymous browser's sessions) become the user's when that browser
signs in, instead of vanishing from its list."""

import re

import httpx
import pytest
from django.contrib.auth.models import User

from sessions_admin.models import ChatFile, ChatSession, Reply

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "a long enough password"


class Browser:
    """A browser on the chat page: cookies, the page's CSRF token, signing in and out."""

    def __init__(self, url: str):
        self.client = httpx.Client(base_url=url, timeout=30)
        self.token = ""
        self.load_page()

    def load_page(self) -> None:
        page = self.client.get("/")
        self.token = re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)

    def chat(self, session_id: str, message: str) -> httpx.Response:
        body = {"session_id": session_id, "message": message}
        return self.client.post("/api/chat", json=body, headers={"X-CSRFToken": self.token})

    def sign_in(self, username: str) -> None:
        form = self.client.get("/accounts/login/").text
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form).group(1)
        signed_in = self.client.post(
            "/accounts/login/", data={"username": username, "password": PASSWORD, "csrfmiddlewaretoken": token}
        )
        assert signed_in.status_code == 302, signed_in.text
        self.load_page()

    def sign_out(self) -> None:
        assert self.client.post("/accounts/logout/", headers={"X-CSRFToken": self.token}).status_code in (200, 302)
        self.load_page()

    def session_ids(self) -> list[str]:
        return sorted(item["session_id"] for item in self.client.get("/api/sessions").json()["results"])

    def questions(self, session_id: str) -> list[str]:
        messages = self.client.get(f"/api/sessions/{session_id}/messages").json()["results"]
        return [message["content"] for message in messages if message["role"] == "user"]


@pytest.fixture
def browser(asgi_server, settings):
    settings.CHAT_ALLOW_ANONYMOUS = True
    browsers = []

    def open_browser() -> Browser:
        browsers.append(Browser(asgi_server.url))
        return browsers[-1]

    yield open_browser
    for each in browsers:
        each.client.close()


def test_a_guests_conversations_are_the_users_after_signing_in(browser):
    user = User.objects.create_user("ada", password=PASSWORD)
    guest = browser()
    assert guest.chat("trip", "planning a trip as a guest").status_code == 200
    guest_owner = ChatSession.objects.get(session_id="trip").owner_key

    guest.sign_in("ada")

    assert guest.session_ids() == ["trip"]
    assert guest.questions("trip") == ["planning a trip as a guest"]
    assert guest.chat("trip", "and now signed in").status_code == 200  # the conversation goes on
    assert guest.questions("trip") == ["planning a trip as a guest", "and now signed in"]
    session = ChatSession.objects.get(session_id="trip")
    assert (session.owner_key, session.user_id) == (f"user:{user.pk}", user.pk)
    assert not Reply.objects.filter(owner_key=guest_owner).exists()
    # Signed out, the browser is a new guest: the user's conversations are not shown to it.
    guest.sign_out()
    assert guest.session_ids() == []


def test_a_guest_session_id_the_user_already_has_is_kept_under_another_id(browser):
    User.objects.create_user("ada", password=PASSWORD)
    elsewhere = browser()
    elsewhere.sign_in("ada")
    assert elsewhere.chat("notes", "written while signed in").status_code == 200
    guest = browser()
    assert guest.chat("notes", "written as a guest").status_code == 200

    guest.sign_in("ada")

    assert guest.session_ids() == ["notes", "notes-guest"]
    assert guest.questions("notes") == ["written while signed in"]
    assert guest.questions("notes-guest") == ["written as a guest"]


def test_a_guests_uploaded_files_go_with_its_conversations(browser, simulator):
    User.objects.create_user("ada", password=PASSWORD)
    guest = browser()
    uploaded = guest.client.post(
        "/api/files", files={"file": ("notes.txt", b"some notes\n", "text/plain")}, headers={"X-CSRFToken": guest.token}
    )
    assert uploaded.status_code == 201, uploaded.text
    file_id = uploaded.json()["file_id"]

    guest.sign_in("ada")
    attached = guest.client.post(
        "/api/chat",
        json={"session_id": "with-file", "message": "see attached", "attachments": [{"file_id": file_id}]},
        headers={"X-CSRFToken": guest.token},
    )

    assert attached.status_code == 200, attached.text
    assert ChatFile.objects.get(coze_file_id=file_id).owner_key.startswith("user:")
