"""Attachments in the admin: the transcript lists them (name, type, size; links escaped), image
thumbnails only when the operator turns them on, and the uploaded files have their own list."""

import pytest
from django.urls import reverse

from sessions_admin.models import ChatFile, Message
from tests.sessions_admin.factories import make_client, make_conversation, make_session, make_turn

pytestmark = pytest.mark.django_db

IMAGE_LINK = "https://example.com/chart.png?a=1&b=2"


def conversation_with_attachments():
    client = make_client("acme")
    session = make_session(session_id="files", client=client)
    conversation = make_conversation(session)
    make_turn(conversation, question="Look at these", answer="Seen.")
    question = Message.objects.get(conversation=conversation, role=Message.Role.USER)
    question.content_type = "object_string"
    question.attachments = [
        {"file_id": "7001", "file_name": "<b>report</b>.pdf", "content_type": "application/pdf", "bytes": 2048},
        {"url": IMAGE_LINK, "type": "image"},
    ]
    question.save()
    ChatFile.objects.create(
        owner_key=client.owner_key,
        api_client=client,
        file_name="<b>report</b>.pdf",
        bytes=2048,
        content_type="application/pdf",
        coze_file_id="7001",
    )
    return conversation


def transcript_html(staff_client, conversation) -> str:
    response = staff_client.get(reverse("admin:sessions_admin_conversation_change", args=[conversation.pk]))
    assert response.status_code == 200
    return response.content.decode()


def test_transcript_lists_attachments_with_name_type_and_size_escaped(staff_client):
    html = transcript_html(staff_client, conversation_with_attachments())

    assert "&lt;b&gt;report&lt;/b&gt;.pdf · application/pdf · 2.0\xa0KB · Coze file 7001" in html
    assert "<b>report</b>" not in html
    assert 'href="https://example.com/chart.png?a=1&amp;b=2"' in html
    assert "<img" not in html.split('id="transcript"')[1]


def test_image_thumbnails_only_when_the_operator_enables_them(staff_client, settings):
    settings.CHAT_ADMIN_IMAGE_THUMBNAILS = True

    html = transcript_html(staff_client, conversation_with_attachments())

    transcript = html.split('id="transcript"')[1]
    assert '<img src="https://example.com/chart.png?a=1&amp;b=2"' in transcript
    assert 'referrerpolicy="no-referrer"' in transcript


def test_uploaded_files_have_a_read_only_list(staff_client):
    conversation_with_attachments()

    response = staff_client.get(reverse("admin:sessions_admin_chatfile_changelist"))

    html = response.content.decode()
    assert response.status_code == 200
    assert "&lt;b&gt;report&lt;/b&gt;.pdf" in html and "API client acme" in html and "2.0\xa0KB" in html
    file_pk = ChatFile.objects.get().pk
    change = staff_client.get(reverse("admin:sessions_admin_chatfile_change", args=[file_pk])).content.decode()
    assert 'name="_save"' not in change
