"""Coze's feedback path (docs/api.md §15) from Node with the official JS SDK (@coze/api 1.3.9,
which has no feedback method: tests/js/feedback.mjs calls the route through the SDK's own
request path). Needs `node` and `npm ci --prefix tests/js`, as tests/chat/test_coze_api_js.py."""

import json

import pytest

from sessions_admin.models import Feedback, FeedbackForward, Message
from tests.chat.coze_clients import bot
from tests.chat.test_coze_api_js import run_node

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_js_sdk_rates_an_answer_and_takes_the_rating_back(asgi_server, api_key):
    result = run_node("feedback.mjs", asgi_server.url, api_key, bot())
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["liked"] == {"code": 0, "msg": "", "data": {}}
    assert summary["shown"] == {"rating": "down", "comment": "From Node."}
    assert summary["refused"] == {"name": "BadRequestError", "code": 4000}
    assert summary["removed"] == {"code": 0, "msg": "", "data": {}}
    answer = Message.objects.get(coze_message_id=summary["answer_id"])
    assert answer.conversation.session.session_id == summary["conversation_id"]
    assert not Feedback.objects.exists()  # taken back
    assert FeedbackForward.objects.get(message=answer).action == "delete"  # and so at Coze
