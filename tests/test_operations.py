"""Health, API keys and demo mode."""

import io

import httpx
import pytest
from django.core.management import call_command

from chat import coze
from sessions_admin.models import ApiClient, hash_api_key
from tests.conftest import auth

pytestmark = pytest.mark.django_db(transaction=True)


def test_health_reports_each_part(http):
    response = http.get("/health")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "channel_layer": "ok", "coze": "configured"}


def test_create_api_key_prints_the_key_last_and_stores_only_its_hash(http):
    out = io.StringIO()
    call_command("create_api_key", "mobile-app", stdout=out)

    key = out.getvalue().strip().splitlines()[-1]
    client = ApiClient.objects.get(name="mobile-app")
    assert client.key_hash == hash_api_key(key)
    assert key not in str(ApiClient.objects.values_list().get())
    assert http.get("/api/sessions", headers=auth(key)).status_code == 200


def test_demo_mode_starts_the_built_in_simulator_and_chats(http, api_key, settings):
    settings.COZE_API_TOKEN = ""

    response = http.post("/api/chat", json={"message": "demo?"}, headers=auth(api_key))

    assert response.status_code == 200, response.text
    assert response.json()["response"] == "You said: demo?"
    assert coze.coze_mode() == "simulator"
    assert http.get("/health").json()["coze"] == "simulator"
    assert httpx.get(coze.simulator_base_url() + "/_sim/stats").json()["total_streams"] >= 1


def test_openapi_schema_and_docs_are_served(http):
    schema = http.get("/api/schema/", headers={"Accept": "application/json"})
    assert schema.status_code == 200
    assert "/api/chat" in schema.text
    docs = http.get("/api/docs/")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_chat_page_is_served(http):
    page = http.get("/")
    assert page.status_code == 200
    assert "csrftoken" in page.cookies
