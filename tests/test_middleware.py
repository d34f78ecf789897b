"""Django's middleware on the event loop (cozeproject/middleware.py): it uses Django's documented
middleware surface only, and Django's settings work through it as they do through Django's own
stack — CSRF_USE_SESSIONS included, and the admin's flash messages."""

import ast
import re
from pathlib import Path

import httpx
import pytest
from django.contrib.auth.models import User

from tests.conftest import LiveServer

pytestmark = pytest.mark.django_db(transaction=True)

MIDDLEWARE = Path(__file__).resolve().parent.parent / "cozeproject" / "middleware.py"
PROTOCOL_METHODS = {"__init__", "__call__"}


def page_token(html: str) -> str:
    return re.search(r'name="csrf-token" content="([^"]+)"', html).group(1)


def form_token(html: str) -> str:
    return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)


@pytest.fixture
def served(settings):
    settings.CSRF_USE_SESSIONS = True
    settings.CHAT_ALLOW_ANONYMOUS = True
    from cozeproject.asgi import build_application

    server = LiveServer(build_application())
    server.start()
    yield server
    server.stop()


def test_with_the_csrf_secret_in_the_session_the_chat_page_chats(served):
    with httpx.Client(base_url=served.url, timeout=30) as browser:
        token = page_token(browser.get("/").text)
        assert "csrftoken" not in browser.cookies  # the secret is in the session, not a cookie

        refused = browser.post("/api/chat", json={"message": "hi"})
        sync = browser.post("/api/chat", json={"message": "hi"}, headers={"X-CSRFToken": token})
        stream = browser.post("/api/chat/stream", json={"message": "hi"}, headers={"X-CSRFToken": token})
        cleared = browser.post(f"/api/sessions/{sync.json()['session_id']}/clear", headers={"X-CSRFToken": token})

    assert refused.status_code == 403 and refused.json()["code"] == "forbidden"
    assert sync.status_code == 200, sync.text
    assert stream.status_code == 200 and "event: completed" in stream.text, stream.text
    assert cleared.status_code == 200, cleared.text


def test_with_the_csrf_secret_in_the_session_staff_sign_in_and_see_the_admins_messages(served):
    User.objects.create_superuser("staff", "staff@example.com", "a long staff password")
    with httpx.Client(base_url=served.url, timeout=30, follow_redirects=True) as browser:
        login = browser.get("/admin/login/")
        signed_in = browser.post(
            "/admin/login/?next=/admin/",
            data={
                "username": "staff",
                "password": "a long staff password",
                "csrfmiddlewaretoken": form_token(login.text),
            },
        )
        add = browser.get("/admin/auth/group/add/")
        added = browser.post(
            "/admin/auth/group/add/", data={"name": "reviewers", "csrfmiddlewaretoken": form_token(add.text)}
        )

    assert signed_in.status_code == 200 and "Log out" in signed_in.text, signed_in.text[:500]
    assert added.status_code == 200
    assert "was added successfully" in added.text  # a flash message, carried by its cookie


def test_the_middleware_uses_only_djangos_documented_middleware_surface():
    """No private attribute of Django's objects (`request._messages`), no override of Django's internal
    methods (MiddlewareMixin's `__acall__`): what begins with an underscore is this module's own."""
    tree = ast.parse(MIDDLEWARE.read_text())
    own = {node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    own |= {
        target.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    private_reads = sorted(
        {
            node.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and node.attr not in own
        }
    )
    dunder_overrides = sorted(
        {
            node.name
            for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.name.startswith("__")
            and node.name not in PROTOCOL_METHODS
        }
    )

    assert private_reads == [], f"private attributes of others: {private_reads}"
    assert dunder_overrides == [], f"overrides of internal methods: {dunder_overrides}"
