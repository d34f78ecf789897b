"""The pages around the chat: the sign-in page in the chat page's look, and the site icon."""

import pytest
from django.template.loader import render_to_string
from django.templatetags.static import static
from django.test import Client
from django.urls import reverse

from tests.sessions_admin.factories import make_user

pytestmark = pytest.mark.django_db

LOGIN = "/accounts/login/"
FAVICON_LINK = f'<link rel="icon" href="{static("favicon.svg")}" type="image/svg+xml">'


def test_login_page_renders_the_styled_form_with_labels():
    response = Client().get(LOGIN, {"next": "/api/docs/"})
    assert response.status_code == 200
    assert "registration/login.html" in [template.name for template in response.templates]
    html = response.content.decode()
    assert f'<link rel="stylesheet" href="{static("chat/chat.css")}">' in html
    assert FAVICON_LINK in html
    assert '<body class="signin">' in html
    assert '<form class="signin-form" method="post" action="/accounts/login/"' in html
    # Every input has a label tied to it.
    assert '<label for="id_username">Username</label>' in html
    assert '<label for="id_password">Password</label>' in html
    assert 'id="id_username"' in html and 'id="id_password"' in html
    assert 'autocomplete="current-password"' in html
    assert '<input type="hidden" name="next" value="/api/docs/">' in html
    assert 'role="alert"' not in html


def test_a_wrong_password_shows_the_error_and_keeps_next():
    make_user("alice", password="right-password")
    client = Client()
    response = client.post(LOGIN, {"username": "alice", "password": "wrong", "next": "/api/docs/"})
    assert response.status_code == 200
    html = response.content.decode()
    assert '<div class="form-error" id="login-error" role="alert">' in html
    assert "Please enter a correct username and password." in html
    assert '<input type="hidden" name="next" value="/api/docs/">' in html
    assert '<body class="signin">' in html
    assert "_auth_user_id" not in client.session


def test_an_empty_field_is_marked_invalid_and_described_by_its_error():
    html = Client().post(LOGIN, {"username": "alice", "password": ""}).content.decode()
    assert 'aria-invalid="true"' in html
    assert 'aria-describedby="id_password_error"' in html
    assert '<p class="field-error" id="id_password_error">This field is required.</p>' in html


def test_signing_in_honours_next():
    make_user("alice", password="right-password")
    response = Client().post(LOGIN, {"username": "alice", "password": "right-password", "next": "/api/docs/"})
    assert response.status_code == 302
    assert response["Location"] == "/api/docs/"


def test_signing_in_ignores_a_next_on_another_site():
    make_user("alice", password="right-password")
    response = Client().post(LOGIN, {"username": "alice", "password": "right-password", "next": "https://evil.test/"})
    assert response.status_code == 302
    assert response["Location"] == "/"


def test_the_logged_out_page_has_the_same_look():
    html = render_to_string("registration/logged_out.html")
    assert '<body class="signin">' in html and FAVICON_LINK in html
    assert f'<link rel="stylesheet" href="{static("chat/chat.css")}">' in html


def test_favicon_ico_leads_to_the_icon_the_pages_link(settings):
    response = Client().get("/favicon.ico")
    assert response.status_code == 302
    assert response["Location"] == static("favicon.svg")
    icon = Client().get(response["Location"])
    assert icon.status_code == 200
    assert b"<svg" in b"".join(icon.streaming_content)


def test_chat_page_login_page_and_admin_link_the_icon(settings):
    settings.CHAT_ALLOW_ANONYMOUS = True
    staff = Client()
    staff.force_login(make_user("root", superuser=True))
    for client, path in ((Client(), "/"), (Client(), LOGIN), (Client(), reverse("admin:login")), (staff, "/admin/")):
        response = client.get(path)
        assert response.status_code == 200, path
        assert FAVICON_LINK in response.content.decode(), path
