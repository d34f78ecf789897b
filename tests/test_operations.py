"""Health, API keys and demo mode."""

import io
import json

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


def test_openapi_schema_validates_and_describes_sse_websocket_and_auth(tmp_path):
    schema_file = tmp_path / "schema.json"
    call_command("spectacular", "--validate", "--fail-on-warn", "--format", "openapi-json", "--file", str(schema_file))

    schema = json.loads(schema_file.read_text())
    assert {"/api/chat", "/api/chat/stream", "/api/sessions", "/api/chats/{chat_id}/cancel"} <= set(schema["paths"])
    stream = schema["paths"]["/api/chat/stream"]["post"]
    assert "text/event-stream" in stream["responses"]["200"]["content"]
    assert {"SessionEvent", "DeltaEvent", "CompletedEvent", "ErrorEvent"} <= set(schema["components"]["schemas"])
    assert schema["components"]["securitySchemes"]["apiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": (
            "An API key from `python manage.py create_api_key NAME`, or an end-user token (`czt_…`) "
            "that a key minted with `POST /api/tokens`: the key's client narrowed to one user_id."
        ),
    }
    assert "/api/tokens" in schema["paths"]
    assert "ws/chat/" in schema["info"]["description"]


def test_swagger_ui_is_served_from_local_static_files(http):
    docs = http.get("/api/docs/")

    assert docs.status_code == 200
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/" in docs.text
    assert "cdn" not in docs.text.lower()
    bundle = http.get("/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and len(bundle.content) > 100_000
    assert http.get("/api/schema/").status_code == 200


def test_chat_page_is_served(http):
    page = http.get("/")
    assert page.status_code == 200
    assert "csrftoken" in page.cookies
