"""Property-based tests of request validation: no input yields a 500."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chat.domain.errors import ChatError
from chat.domain.inputs import ChatRequest
from chat.transports.serializers import ChatRequestSerializer, parse_chat_request, parse_json_bytes
from tests.conftest import auth

FIELDS = sorted(ChatRequestSerializer._declared_fields)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
session_ids = st.text(alphabet=st.characters(codec="utf-8"), max_size=140) | st.from_regex(
    r"[A-Za-z0-9_.:-]{1,128}", fullmatch=True
)
bodies = (
    st.dictionaries(
        st.sampled_from([*FIELDS, "type", "extra"]),
        json_values | session_ids | st.text(max_size=200),
        max_size=6,
    )
    | json_values
)


@given(body=bodies)
@settings(max_examples=600, deadline=None)
def test_any_decoded_body_is_either_a_request_or_a_chat_error(body):
    try:
        result = parse_chat_request(body)
    except ChatError as error:
        assert error.code in {"invalid", "payload_too_large", "bot_not_allowed"}
        assert 400 <= error.status < 500
    else:
        assert isinstance(result, ChatRequest)
        assert (result.message is None) != (result.additional_messages is None)


@given(raw=st.binary(max_size=300), content_type=st.sampled_from(["application/json", "text/plain", "", "a/b; x=y"]))
@settings(max_examples=300, deadline=None)
def test_any_bytes_decode_or_fail_with_a_client_error(raw, content_type):
    try:
        parse_json_bytes(raw, content_type)
    except ChatError as error:
        assert error.status in (400, 413, 415)


@pytest.mark.django_db(transaction=True)
@given(body=bodies, path=st.sampled_from(["/api/chat", "/api/chat/stream"]))
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_no_request_body_makes_the_server_answer_500(http, api_key, body, path):
    response = http.post(
        path, content=json.dumps(body).encode(), headers={**auth(api_key), "Content-Type": "application/json"}
    )

    assert response.status_code < 500 or response.json()["code"].startswith("upstream"), response.text
    if response.status_code >= 400:
        assert set(response.json()) >= {"detail", "code"}
