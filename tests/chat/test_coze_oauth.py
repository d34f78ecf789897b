"""Coze OAuth JWT app authorisation: tokens fetched from the token endpoint, reused, refreshed early."""

import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from chat import coze
from chat.coze import client as coze_client
from tests.conftest import auth

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def jwt_app(settings):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    settings.COZE_API_TOKEN = ""
    settings.COZE_OAUTH_APP_ID = "1170000000000000001"
    settings.COZE_OAUTH_KEY_ID = "test-public-key-id"
    settings.COZE_OAUTH_PRIVATE_KEY = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    settings.COZE_OAUTH_TOKEN_TTL = 900
    return settings


def test_chat_works_with_an_oauth_jwt_app_and_reuses_its_token(http, api_key, simulator, jwt_app):
    before = set(simulator.app.state.issued_tokens)

    first = http.post("/api/chat", json={"message": "via jwt", "session_id": "j"}, headers=auth(api_key))
    second = http.post("/api/chat", json={"message": "again", "session_id": "j"}, headers=auth(api_key))

    assert first.status_code == second.status_code == 200, first.text
    assert second.json()["conversation_id"] == first.json()["conversation_id"]
    issued = set(simulator.app.state.issued_tokens) - before
    assert len(issued) == 1  # one token, reused for every request until it nears expiry
    assert coze.coze_mode() == "configured"
    assert http.get("/health").json()["coze"] == "configured"


@pytest.mark.asyncio
async def test_the_token_is_refreshed_before_it_expires(simulator, jwt_app):
    auth_flow = coze_client._build_auth(*coze_client._endpoint())
    first = await auth_flow.atoken
    assert await auth_flow.atoken == first

    # Pretend the token expires within the refresh margin.
    auth_flow.access_token.expires_in = int(time.time()) + 30

    assert await auth_flow.atoken != first
